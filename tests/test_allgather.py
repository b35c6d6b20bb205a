"""allgather: concatenation along axis 0 in rank order, bit-exact, first dims may differ."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref

SMALL = [(n, size) for n in ref.WORLD_SIZES for size in ref.small_sizes(n)]


def _allgather(seed, rows_per_rank, trailing, dtype_name, name=None):
    rank = rf.rank()
    x = ref.bit_patterns(seed, rank, (rows_per_rank[rank], *trailing), dtype_name)
    before = x.copy()
    out = rf.allgather(x, name=name)
    return out, bool(np.array_equal(ref.bits(x), ref.bits(before)))


def run_and_check(pools, rows_per_rank, trailing, dtype_name, name=None):
    n = len(rows_per_rank)
    seed = ref.seed_of("allgather", rows_per_rank, trailing, dtype_name)
    results = pools.call(n, _allgather, seed, rows_per_rank, trailing, dtype_name, name)
    inputs = [
        ref.bit_patterns(seed, r, (rows, *trailing), dtype_name)
        for r, rows in enumerate(rows_per_rank)
    ]
    expected = np.concatenate(inputs, axis=0)
    context = f"dtype {dtype_name}, rows {rows_per_rank}, trailing {trailing}"
    for rank, (out, untouched) in enumerate(results):
        ref.assert_bits_equal(out, expected, f"rank {rank}: {context}")
        assert untouched, f"rank {rank}: allgather modified its input, {context}"


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize(("n", "size"), SMALL, ids=[f"n{n}-size{s}" for n, s in SMALL])
def test_allgather(pools, n, size, dtype_name):
    run_and_check(pools, [size] * n, (), dtype_name)


ROWS = [
    [0, 3],
    [2, 0],
    [0, 0, 5],
    [1, 0, 4],
    [0, 1, 0, 2],
    [7, 0, 0, 0],
    [3, 5, 1, 2],
    [0, 0, 0, 0],
]


@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)])
@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize("rows", ROWS, ids=["-".join(map(str, r)) for r in ROWS])
def test_allgather_uneven(pools, rows, dtype_name, trailing):
    run_and_check(pools, rows, trailing, dtype_name)


@pytest.mark.parametrize("dtype_name", ref.COPY_LARGE_DTYPES)
@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_allgather_large(pools, n, dtype_name):
    run_and_check(pools, [ref.LARGE] * n, (), dtype_name, name="large")


@pytest.mark.parametrize("dtype_name", ["uint8", "float32"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_allgather_large_uneven(pools, n, dtype_name):
    # Uneven first dims around LARGE / n; one rank contributes nothing.
    rows = [ref.LARGE // n + 7 * r for r in range(n)]
    rows[n // 2] = 0
    run_and_check(pools, rows, (), dtype_name, name="large")


def test_allgather_large_rows(pools):
    run_and_check(pools, [ref.LARGE // 3, 5, 0], (3,), "float64")
