"""alltoall: rows of x go to ranks by splits; output concatenates what each rank sent me."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref

SMALL = [(n, size) for n in ref.WORLD_SIZES for size in ref.small_sizes(n)]


def _alltoall(seed, rows_per_rank, trailing, dtype_name, mode, name=None):
    rank, n = rf.rank(), rf.size()
    x = ref.bit_patterns(seed, rank, (rows_per_rank[rank], *trailing), dtype_name)
    before = x.copy()
    if mode == "none":
        out, received = rf.alltoall(x, name=name)
    else:
        splits = ref.alltoall_splits(seed, rank, n, rows_per_rank[rank])
        if mode == "ndarray":
            splits = np.array(splits, dtype=np.int64)
        out, received = rf.alltoall(x, splits=splits, name=name)
    return out, received, bool(np.array_equal(ref.bits(x), ref.bits(before)))


def run_and_check(pools, rows_per_rank, trailing, dtype_name, mode, name=None):
    n = len(rows_per_rank)
    seed = ref.seed_of("alltoall", rows_per_rank, trailing, dtype_name, mode)
    results = pools.call(n, _alltoall, seed, rows_per_rank, trailing, dtype_name, mode, name)
    inputs = [
        ref.bit_patterns(seed, r, (rows, *trailing), dtype_name)
        for r, rows in enumerate(rows_per_rank)
    ]
    if mode == "none":
        splits = [[rows // n] * n for rows in rows_per_rank]
    else:
        splits = [ref.alltoall_splits(seed, r, n, rows) for r, rows in enumerate(rows_per_rank)]
    context = f"dtype {dtype_name}, rows {rows_per_rank}, trailing {trailing}, splits {splits}"
    for rank, (out, received, untouched) in enumerate(results):
        expected, expected_received = ref.alltoall_expected(inputs, splits, rank)
        ref.assert_bits_equal(out, expected, f"rank {rank}: output, {context}")
        ref.assert_exact(received, expected_received, f"rank {rank}: received_splits, {context}")
        assert untouched, f"rank {rank}: alltoall modified its input, {context}"


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize(("n", "size"), SMALL, ids=[f"n{n}-rows{s}" for n, s in SMALL])
def test_alltoall_equal(pools, n, size, dtype_name):
    """splits=None: every rank sends `size` rows to every rank."""
    run_and_check(pools, [size * n] * n, (), dtype_name, "none")


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize(("n", "size"), SMALL, ids=[f"n{n}-rows{s}" for n, s in SMALL])
def test_alltoall_uneven(pools, n, size, dtype_name):
    """Uneven splits with a zero on every rank (n > 1), rows differing between ranks."""
    rows = [size + 2 * r for r in range(n)]
    run_and_check(pools, rows, (), dtype_name, "list")


@pytest.mark.parametrize("trailing", [(3,), (2, 2)])
@pytest.mark.parametrize("dtype_name", ["int8", "bfloat16", "float64"])
@pytest.mark.parametrize("rows", [[0, 0], [0, 4], [5, 0, 3], [1, 2, 3, 4], [0, 0, 0, 9]])
def test_alltoall_rows(pools, rows, dtype_name, trailing):
    """Multi-dimensional rows; splits passed as an int64 ndarray."""
    run_and_check(pools, rows, trailing, dtype_name, "ndarray")


@pytest.mark.parametrize("mode", ["none", "list"])
@pytest.mark.parametrize("dtype_name", ref.COPY_LARGE_DTYPES)
@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_alltoall_large(pools, n, dtype_name, mode):
    rows = [ref.LARGE - ref.LARGE % n] * n if mode == "none" else [ref.LARGE + r for r in range(n)]
    run_and_check(pools, rows, (), dtype_name, mode, name="large")
