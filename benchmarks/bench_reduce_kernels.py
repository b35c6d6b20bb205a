"""The core's CPU reduction kernels against numpy on the same arrays (``acc = acc op src``).

``ringflow._core.reduce(a, b, out, dtype, op)`` with out = a (in place), against
``np.add(a, b, out=a)`` and friends; skipped with that reason where the extension lacks it.
Every dtype with Sum; float32 with the other ops. 4 Mi elements: bigger than the caches, as
allreduce chunks are. ``RINGFLOW_KERNEL_ISA=generic`` measures the portable build.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import ringflow as rf
from ringflow import _arrays, _core

COUNT = 4 << 20
_DTYPES = ["uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64"]
_NUMPY_OPS: dict[str, Callable[..., Any]] = {
    "sum": np.add,
    "prod": np.multiply,
    "min": np.minimum,
    "max": np.maximum,
}
_CORE_OPS = {"sum": rf.Sum, "prod": rf.Product, "min": rf.Min, "max": rf.Max}
CASES = [(dtype, "sum") for dtype in _DTYPES] + [("float32", op) for op in ("prod", "min", "max")]


def _arrays_of(dtype_name: str) -> tuple[np.ndarray, np.ndarray]:
    if dtype_name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(dtype_name)
    ones = np.ones(COUNT, dtype)
    return ones.copy(), ones  # acc, src: small values, min/max/prod keep them at 1


@pytest.mark.parametrize(("dtype", "op"), CASES)
def test_ringflow_reduce(benchmark: Any, dtype: str, op: str) -> None:
    reduce = getattr(_core, "reduce", None)
    if reduce is None:
        pytest.skip("needs ringflow._core.reduce(a, b, out, dtype, op) (issue 3)")
    acc, src = _arrays_of(dtype)
    benchmark.group = f"reduce {dtype} {op}"
    benchmark.extra_info["bytes"] = acc.nbytes
    benchmark.extra_info["isa"] = getattr(_core, "reduce_kernel_isa", lambda: "?")()
    benchmark(reduce, acc, src, acc, _arrays.dtype_of(acc.dtype), _CORE_OPS[op])


@pytest.mark.parametrize(("dtype", "op"), CASES)
def test_numpy_ufunc(benchmark: Any, dtype: str, op: str) -> None:
    acc, src = _arrays_of(dtype)
    benchmark.group = f"reduce {dtype} {op}"
    benchmark.extra_info["bytes"] = acc.nbytes
    benchmark(_NUMPY_OPS[op], acc, src, out=acc)
