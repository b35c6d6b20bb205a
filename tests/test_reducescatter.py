"""reducescatter: this rank's np.array_split block (axis 0) of the reduced array."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref

SMALL = [(n, rows) for n in ref.WORLD_SIZES for rows in ref.small_sizes(n)]

COMBOS = ref.reduction_combos()


def _reducescatter(seed, shape, dtype_name, op, kind, name=None):
    x = ref.reduction_input(kind, seed, rf.rank(), shape, dtype_name, op)
    before = x.copy()
    out = rf.reducescatter(x, op=getattr(rf, op), name=name)
    return out, bool(np.array_equal(ref.bits(x), ref.bits(before)))


def run_and_check(pools, n, shape, dtype_name, op, kind, name=None):
    seed = ref.seed_of("reducescatter", n, shape, dtype_name, op, kind)
    results = pools.call(n, _reducescatter, seed, shape, dtype_name, op, kind, name)
    inputs = [ref.reduction_input(kind, seed, r, shape, dtype_name, op) for r in range(n)]
    dt = inputs[0].dtype
    context = f"dtype {dtype_name}, op {op}, n {n}, shape {shape}, kind {kind}"
    exact = kind == "exact" or op in ("Min", "Max") or not ref.is_float(dt)
    full = ref.allreduce_exact(inputs, op) if exact else ref.allreduce_float64(inputs, op)
    for rank, (out, untouched) in enumerate(results):
        assert untouched, f"rank {rank}: reducescatter modified its input, {context}"
        block = ref.reducescatter_block(full, n, rank)
        if exact:
            ref.assert_exact(out, block, f"rank {rank}, {context}")
        else:
            rtol = ref.float_rtol(dt, n)
            ref.assert_close(out, block, dt, rtol, f"rank {rank}, {context}")


@pytest.mark.parametrize(("dtype_name", "op", "kind"), COMBOS)
@pytest.mark.parametrize(("n", "rows"), SMALL, ids=[f"n{n}-rows{r}" for n, r in SMALL])
def test_reducescatter(pools, n, rows, dtype_name, op, kind):
    run_and_check(pools, n, (rows,), dtype_name, op, kind)


@pytest.mark.parametrize("rows", [0, 1, 5, 6, 10])
@pytest.mark.parametrize(
    ("dtype_name", "op"), [("int32", "Sum"), ("float32", "Max"), ("bfloat16", "Average")]
)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_reducescatter_rows(pools, n, dtype_name, op, rows):
    """Multi-dimensional: whole rows are scattered, uneven row counts go to the first ranks."""
    run_and_check(pools, n, (rows, 3, 2), dtype_name, op, "exact")


LARGE_COMBOS = [c for c in COMBOS if c[2] == "exact" or c[1] in ("Sum", "Average")]


@pytest.mark.parametrize(("dtype_name", "op", "kind"), LARGE_COMBOS)
@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_reducescatter_large(pools, n, dtype_name, op, kind):
    run_and_check(pools, n, (ref.LARGE,), dtype_name, op, kind, name="large")


def _scaled(grouped: bool):
    rank = rf.rank()
    xs = [np.arange(7 * 2, dtype=np.float64).reshape(7, 2) + rank + i for i in range(3)]
    kwargs = {"op": rf.Average, "prescale_factor": 4.0, "postscale_factor": 0.5}
    if grouped:
        return rf.grouped_reducescatter(xs, name="scaled.group", **kwargs)
    return [rf.reducescatter(x, name=f"scaled.{i}", **kwargs) for i, x in enumerate(xs)]


@pytest.mark.parametrize("grouped", [False, True], ids=["single", "fused"])
def test_reducescatter_scale_factors(pools, grouped):
    n = 3
    for rank, outs in enumerate(pools.call(n, _scaled, grouped)):
        for i, out in enumerate(outs):
            inputs = [np.arange(14, dtype=np.float64).reshape(7, 2) + r + i for r in range(n)]
            full = sum(4.0 * x for x in inputs) / n * 0.5  # exact: small integers
            ref.assert_exact(out, ref.reducescatter_block(full, n, rank), f"rank {rank} #{i}")
