"""numpy rules for ringflow's CUDA kernels (csrc/ringflow/cuda/element_math.h), shared by the
CPU tests of their host reference (tests/test_cuda_kernels_reference.py) and the GPU check of the
kernels themselves (tools/device_check/kernels.py). Nothing here imports ringflow.

The rules, element by element:

- reduce_fold: acc = src[0]; acc = src[k] op acc for k = 1..n-1, in the compute type (the dtype
  for integers and float32/float64, float32 for float16/bfloat16, rounded to the dtype once at
  the end). Integers wrap; Min/Max are IEEE 754-2019 minimum/maximum (NaN wins, -0 < +0); bool
  (any non-zero byte is true, results 0/1): Sum, Average and Max are or, Min and Product are and.
  Average folds as Sum.
- scale: integers x * factor in float64, truncated toward zero, saturated to the dtype (NaN -> 0);
  floats x * factor in the compute type with factor rounded to it first. factor 1.0: unchanged.
- divide: integers x * (1.0 / divisor) in float64, then as scale; floats x / divisor in the
  compute type. divisor 1: unchanged.
- cast: float32 <-> float16 / bfloat16, round to nearest even (numpy's and ml_dtypes' astype).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

OPS = ("Sum", "Average", "Min", "Max", "Product")
INT_DTYPES = ("uint8", "int8", "int16", "int32", "int64")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPES = (*INT_DTYPES, *FLOAT_DTYPES, "bool")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def storage(name: str) -> np.dtype:
    """The numpy dtype holding a kernel dtype's bytes (bool as uint8: any byte may be set)."""
    if name == "bfloat16":
        return BFLOAT16
    return np.dtype(np.uint8) if name == "bool" else np.dtype(name)


def compute(name: str) -> np.dtype:
    """The type a dtype's arithmetic runs in."""
    if name in ("float16", "bfloat16"):
        return np.dtype(np.float32)
    return np.dtype(np.bool_) if name == "bool" else storage(name)


def is_float(name: str) -> bool:
    return name in FLOAT_DTYPES


def unsigned_view(x: np.ndarray) -> np.ndarray:
    """The same bytes as unsigned integers of the item size (what CuPy can hold)."""
    return x.view(f"u{x.dtype.itemsize}")


def inputs(name: str, count: int, n: int, seed: int) -> list[np.ndarray]:
    """n arrays of count elements: random values plus the ones that break careless kernels
    (NaN, +-inf, +-0, subnormals, extremes; for bool, bytes other than 0 and 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if name == "bool":
            x = np.array([0, 0, 1, 1, 2, 255], np.uint8)[
                np.frombuffer(rng.bytes(count), np.uint8) % 6
            ]
        elif not is_float(name):
            # Uniform over the whole range (random bytes), the extremes first.
            x = np.frombuffer(rng.bytes(count * storage(name).itemsize), storage(name)).copy()
            info = np.iinfo(storage(name))
            edges = np.array([info.min, info.max, 0, -1 if info.min else 1], storage(name))
            x[: min(count, 4)] = edges[: min(count, 4)]
        else:
            dt = storage(name)
            info = ml_dtypes.finfo(dt) if dt == BFLOAT16 else np.finfo(dt)
            wide = np.float64 if name == "float64" else np.float32
            values = rng.standard_normal(count, dtype=wide) * wide(3)
            picks = [np.nan, np.inf, -np.inf, 0.0, -0.0, float(info.tiny), float(info.max)]
            picks += [-float(info.max), float(info.smallest_subnormal), 1.0, -1.0]
            special = rng.random(count) < 0.01
            values[special] = rng.choice(np.array(picks, wide), int(special.sum()))
            with np.errstate(over="ignore"):
                x = values.astype(dt)
        out.append(x)
    return out


def _ieee_min(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r = np.minimum(a, b)
    zeros = (a == 0) & (b == 0)
    r[zeros] = np.where(np.signbit(a[zeros]) | np.signbit(b[zeros]), -0.0, 0.0)
    return r


def _ieee_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r = np.maximum(a, b)
    zeros = (a == 0) & (b == 0)
    r[zeros] = np.where(np.signbit(a[zeros]) & np.signbit(b[zeros]), -0.0, 0.0)
    return r


def _combine(name: str, op: str, x: np.ndarray, acc: np.ndarray) -> np.ndarray:
    if name == "bool":
        return x | acc if op in ("Sum", "Average", "Max") else x & acc
    if op in ("Sum", "Average"):
        return np.add(x, acc)
    if op == "Product":
        return np.multiply(x, acc)
    if is_float(name):
        return _ieee_min(x, acc) if op == "Min" else _ieee_max(x, acc)
    return np.minimum(x, acc) if op == "Min" else np.maximum(x, acc)


def widen(name: str, x: np.ndarray) -> np.ndarray:
    """x in its compute type (bool: any non-zero byte is True)."""
    return x != 0 if name == "bool" else x.astype(compute(name))


def fold(name: str, op: str, srcs: list[np.ndarray], widened: list[np.ndarray] | None = None):
    """reduce_fold's result (storage dtype). `widened` may pass widen(name, src) precomputed."""
    wide = widened if widened is not None else [widen(name, s) for s in srcs]
    with np.errstate(all="ignore"):
        acc = wide[0].copy()
        for x in wide[1:]:
            acc = _combine(name, op, x, acc)
        return acc.astype(storage(name))


def _truncate(name: str, values: np.ndarray) -> np.ndarray:
    """float64 -> integer dtype: toward zero, saturated, NaN -> 0 (values is overwritten)."""
    info = np.iinfo(storage(name))
    high = values >= float(info.max)  # float(int64 max) is 2^63: no cast may see it
    low = values <= float(info.min)
    values[high | low | np.isnan(values)] = 0
    out = values.astype(storage(name))  # in range: truncates toward zero
    out[high] = info.max
    out[low] = info.min
    return out


def scale(name: str, x: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return x.copy()
    with np.errstate(all="ignore"):
        if not is_float(name):
            return _truncate(name, x.astype(np.float64) * factor)
        c = compute(name)
        return (x.astype(c) * c.type(factor)).astype(storage(name))


def divide(name: str, x: np.ndarray, divisor: int) -> np.ndarray:
    if divisor == 1:
        return x.copy()
    with np.errstate(all="ignore"):
        if not is_float(name):
            return _truncate(name, x.astype(np.float64) * (1.0 / divisor))
        c = compute(name)
        return (x.astype(c) / c.type(divisor)).astype(storage(name))


def cast(dst_name: str, x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x.astype(storage(dst_name))


def first_difference(got: np.ndarray, want: np.ndarray) -> int | None:
    """Index of the first element whose bits differ (NaN equals any NaN), or None."""
    differ = np.flatnonzero(unsigned_view(got) != unsigned_view(want))
    if differ.size and (got.dtype.kind == "f" or got.dtype == BFLOAT16):
        both_nan = np.isnan(got[differ].astype(np.float64)) & np.isnan(
            want[differ].astype(np.float64)
        )
        differ = differ[~both_nan]
    return int(differ[0]) if differ.size else None
