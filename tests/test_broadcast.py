"""broadcast / broadcast_: bit-exact copies of the root's array, from every root."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref

CASES = [
    (n, root, size) for n in ref.WORLD_SIZES for root in range(n) for size in ref.small_sizes(n)
]


def _broadcast(seed, shape, dtype_name, root, name=None):
    x = ref.bit_patterns(seed, rf.rank(), shape, dtype_name)
    before = x.copy()
    out = rf.broadcast(x, root, name=name)
    untouched = bool(np.array_equal(ref.bits(x), ref.bits(before)))
    shared = bool(np.shares_memory(out, x))
    y = x.copy()
    returned = rf.broadcast_(y, root_rank=root, name=None if name is None else name + "_")
    return out, untouched, shared, y, returned is y


def run_and_check(pools, n, root, shape, dtype_name, name=None):
    seed = ref.seed_of("broadcast", n, root, shape, dtype_name)
    results = pools.call(n, _broadcast, seed, shape, dtype_name, root, name)
    expected = ref.bit_patterns(seed, root, shape, dtype_name)
    context = f"dtype {dtype_name}, n {n}, root {root}, shape {shape}"
    for rank, (out, untouched, shared, y, same) in enumerate(results):
        ref.assert_bits_equal(out, expected, f"rank {rank}: broadcast, {context}")
        assert untouched, f"rank {rank}: broadcast modified its input, {context}"
        assert not shared, f"rank {rank}: broadcast output shares memory with input, {context}"
        ref.assert_bits_equal(y, expected, f"rank {rank}: broadcast_, {context}")
        assert same, f"rank {rank}: broadcast_ did not return its argument, {context}"


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize(
    ("n", "root", "size"), CASES, ids=[f"n{n}-root{r}-size{s}" for n, r, s in CASES]
)
def test_broadcast(pools, n, root, size, dtype_name):
    run_and_check(pools, n, root, (size,), dtype_name)


LARGE_CASES = [(n, root) for n in ref.WORLD_SIZES for root in range(n)]


@pytest.mark.parametrize("dtype_name", ref.COPY_LARGE_DTYPES)
@pytest.mark.parametrize(("n", "root"), LARGE_CASES, ids=[f"n{n}-root{r}" for n, r in LARGE_CASES])
def test_broadcast_large(pools, n, root, dtype_name):
    run_and_check(pools, n, root, (ref.LARGE,), dtype_name, name="large")


@pytest.mark.parametrize("shape", [(3, 4, 5), (0, 7), (5, 0), ()])
@pytest.mark.parametrize("dtype_name", ["int8", "float16", "int64"])
@pytest.mark.parametrize(("n", "root"), [(2, 1), (4, 2)])
def test_broadcast_shapes(pools, n, root, dtype_name, shape):
    run_and_check(pools, n, root, shape, dtype_name)
