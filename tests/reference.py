"""Deterministic per-rank data and numpy reference implementations of the collectives.

Every rank builds its input from ``(seed, rank)`` alone, so the parent process can rebuild every
rank's input and compute the expected result of the whole job locally. Nothing here imports
ringflow: ranks and the parent share it.

Rounding rules (the contract the references implement):

Horovod 0.28.1's: a factor scales as ``factor * x``, integers in float64 truncated toward zero,
floats in the accumulation type with the factor rounded to it first; a factor of exactly 1.0
leaves values untouched. Prescale scales each rank's input; Average is the Sum scaled once by
``postscale / N`` (Horovod's ``postscale_factor /= size``), other ops scale by ``postscale``.

- Integers: Sum/Product wrap in the dtype; Min/Max are np.minimum/np.maximum.
- bool: Min is logical and, Max is logical or; Sum/Average/Product are invalid.
- Floats: accumulate in the accumulation type (float32 for float16/bfloat16/float32, float64 for
  float64); float16/bfloat16 round back to the dtype after every step.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import ml_dtypes
import numpy as np

OPS = ("Sum", "Average", "Min", "Max", "Product")
INT_DTYPES = ("uint8", "int8", "int16", "int32", "int64")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPES = (*INT_DTYPES, *FLOAT_DTYPES, "bool")
WORLD_SIZES = (1, 2, 3, 4)
LARGE = 1_000_003
"""Large element count: not divisible by 2, 3 or 4, above any small-message threshold."""

COPY_LARGE_DTYPES = ("bool", "uint8", "float16", "int32", "float64")
"""Copy collectives are dtype-blind but for the item size: large cases cover 1, 2, 4, 8 bytes."""

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def dtype(name: str) -> np.dtype:
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)


def is_float(dt: np.dtype) -> bool:
    return dt == BFLOAT16 or np.issubdtype(dt, np.floating)


def is_int(dt: np.dtype) -> bool:
    return np.issubdtype(dt, np.integer)


def acc_dtype(dt: np.dtype) -> np.dtype:
    """The accumulation type of a float dtype."""
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def eps(dt: np.dtype) -> float:
    """Machine epsilon (distance from 1.0 to the next value) of a float dtype."""
    return float(ml_dtypes.finfo(dt).eps) if dt == BFLOAT16 else float(np.finfo(dt).eps)


def valid_reduction(dtype_name: str, op: str) -> bool:
    return dtype_name != "bool" or op in ("Min", "Max")


def reduction_combos() -> list[tuple[str, str, str]]:
    """(dtype, op, kind) for the reducing collectives: floats are checked exactly on
    integer-valued inputs ("exact") and within float_rtol on random positive ones ("positive");
    Min/Max are exact on either."""
    return [
        (dtype_name, op, kind)
        for dtype_name in DTYPES
        for op in OPS
        if valid_reduction(dtype_name, op)
        for kind in (("exact", "positive") if dtype_name in FLOAT_DTYPES else ("exact",))
    ]


def small_sizes(n: int) -> list[int]:
    """Element counts every collective is swept over at world size n (LARGE comes separately)."""
    return sorted({0, 1, 7, n - 1, n + 1})


def seed_of(*parts: object) -> int:
    """A stable seed derived from a test's parameters."""
    return zlib.crc32(repr(parts).encode())


def rng(seed: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, rank])


# -- inputs ---------------------------------------------------------------------------------------


def bit_patterns(seed: int, rank: int, shape: Sequence[int], dtype_name: str) -> np.ndarray:
    """Arbitrary bit patterns (NaN payloads, infinities, -0.0, subnormals) for copy collectives."""
    dt = dtype(dtype_name)
    gen = rng(seed, rank)
    count = int(np.prod(shape, dtype=np.int64))
    if dt == np.bool_:
        return gen.integers(0, 2, size=shape, dtype=np.uint8).astype(np.bool_)
    raw = gen.integers(0, 256, size=count * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def exact_input(seed: int, rank: int, shape: Sequence[int], dtype_name: str, op: str) -> np.ndarray:
    """Values for which ``op`` over up to 4 ranks is exact in every order, also after scaling by
    powers of two.

    Integers use their full range (Sum/Product wrap), except int64 Average, kept within
    +-2**50 so that its sums convert to float64 exactly. Float Sum/Average inputs are small
    integers whose sums over 4 ranks (times 2) stay exactly representable: float16 has 11
    significant bits, bfloat16 8. Float Product inputs are integers in [-4, 4] (float16/bfloat16)
    or [-16, 16]: any product of four has an odd part of at most 7 bits. Float Min/Max are exact
    for any values.
    """
    dt = dtype(dtype_name)
    gen = rng(seed, rank)
    if dt == np.bool_:
        return gen.integers(0, 2, size=shape, dtype=np.uint8).astype(np.bool_)
    if is_int(dt):
        info = np.iinfo(dt)
        low, high = int(info.min), int(info.max)
        if dt == np.int64 and op == "Average":
            low, high = -(2**50), 2**50
        return gen.integers(low, high, size=shape, dtype=dt, endpoint=True)
    if op in ("Min", "Max"):
        return (gen.standard_normal(size=shape) * 100).astype(dt)
    if op == "Product":
        bound = 4 if dt.itemsize == 2 else 16
    else:
        bound = {"float16": 128, "bfloat16": 32, "float32": 2**20, "float64": 2**40}[dtype_name]
    return gen.integers(-bound, bound, size=shape, endpoint=True).astype(dt)


def positive_input(seed: int, rank: int, shape: Sequence[int], dtype_name: str) -> np.ndarray:
    """Uniform in [0.5, 1.5): reductions round, so results are checked within `float_rtol`."""
    return (rng(seed, rank).random(size=shape) + 0.5).astype(dtype(dtype_name))


def reduction_input(
    kind: str, seed: int, rank: int, shape: Sequence[int], dtype_name: str, op: str
) -> np.ndarray:
    """`exact_input` (kind "exact") or `positive_input` (kind "positive")."""
    if kind == "positive":
        return positive_input(seed, rank, shape, dtype_name)
    assert kind == "exact", kind
    return exact_input(seed, rank, shape, dtype_name, op)


def alltoall_splits(seed: int, rank: int, n: int, rows: int) -> list[int]:
    """Uneven splits of ``rows`` over n destinations; with n > 1 at least one of them is 0."""
    gen = rng(seed, 10_000 + rank)
    if n == 1:
        return [rows]
    zero = (rank + 1) % n
    others = [i for i in range(n) if i != zero]
    counts = gen.multinomial(rows, [1.0 / len(others)] * len(others))
    splits = [0] * n
    for dest, count in zip(others, counts):
        splits[dest] = int(count)
    return splits


# -- references -----------------------------------------------------------------------------------


def scale(x: np.ndarray, factor: float) -> np.ndarray:
    """factor * x by Horovod's rule (identity for a factor of exactly 1.0): integers in float64,
    truncated toward zero (saturating); floats in the accumulation type."""
    if factor == 1.0:
        return x
    if is_int(x.dtype):
        info = np.iinfo(x.dtype)
        product = np.trunc(np.float64(factor) * x.astype(np.float64))
        high = np.float64(info.max)  # 2**63 for int64: compare before converting
        out = np.where(product >= high, info.max, np.where(product <= info.min, info.min, 0))
        inside = (product < high) & (product > info.min)
        out = out.astype(x.dtype)
        out[inside] = product[inside].astype(x.dtype)
        return out
    acc = acc_dtype(x.dtype)
    return (acc.type(factor) * x.astype(acc)).astype(x.dtype)


def finishing_factor(op: str, postscale: float, n: int) -> float:
    """The one factor a finished reduction is scaled by: postscale / N for Average."""
    return postscale / n if op == "Average" else postscale


def _combine(a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return {"Min": np.logical_and, "Max": np.logical_or}[op](a, b)
    ufunc = {
        "Sum": np.add,
        "Average": np.add,
        "Product": np.multiply,
        "Min": np.minimum,
        "Max": np.maximum,
    }[op]
    return ufunc(a, b)


def allreduce_exact(
    inputs: Sequence[np.ndarray], op: str, prescale: float = 1.0, postscale: float = 1.0
) -> np.ndarray:
    """The exact expected result, for inputs where the reduction order cannot matter (integers,
    bool, floats from `exact_input`)."""
    dt = inputs[0].dtype
    n = len(inputs)
    xs = [scale(x, prescale) for x in inputs]
    factor = finishing_factor(op, postscale, n)
    if is_float(dt):
        # The float64 reduction is exact for these inputs, and so is its rounding to the dtype.
        total = xs[0].astype(np.float64)
        for x in xs[1:]:
            total = _combine(total, x.astype(np.float64), op)
        return scale(total.astype(dt), factor)
    result = xs[0].copy()
    for x in xs[1:]:
        result = _combine(result, x, op)
    return scale(result, factor)


def allreduce_float64(
    inputs: Sequence[np.ndarray], op: str, prescale: float = 1.0, postscale: float = 1.0
) -> np.ndarray:
    """The float64 result of the reduction of the (prescaled, dtype-rounded) inputs."""
    total = scale(inputs[0], prescale).astype(np.float64)
    for x in inputs[1:]:
        total = _combine(total, scale(x, prescale).astype(np.float64), op)
    if op == "Average":
        total = total / len(inputs)
    return total * postscale


def float_rtol(dt: np.dtype, n: int, extra_roundings: int = 0) -> float:
    """Relative tolerance of a float Sum/Average/Product of n positive inputs.

    With unit roundoff u = eps/2, each of the n-1 additions (or multiplications) of positive
    partial results rounds with relative error <= u -- in the dtype for float16/bfloat16, which
    round after every step, else in the accumulation type -- whatever the order or tree shape,
    and every partial result is <= the final one, so the chain errs by <= (n-1)u. Average's
    multiplication by 1/N (rounded to the accumulation type, then the product rounded) and the
    final rounding to the dtype add <= 3u, each further scaling step (`extra_roundings`) u. The
    bound is (n+2+extra)u to first order; the tolerance, (n+1+extra) eps = 2(n+1+extra)u,
    covers it and the higher-order terms for every n >= 1.
    """
    return (n + 1 + extra_roundings) * eps(dt)


def reducescatter_block(full: np.ndarray, n: int, rank: int) -> np.ndarray:
    """This rank's block of the reduced array: np.array_split along axis 0."""
    return np.array_split(full, n, axis=0)[rank]


def alltoall_expected(
    inputs: Sequence[np.ndarray], splits: Sequence[Sequence[int]], rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """What ``rank`` receives: from every source in rank order, that source's rows for it."""
    parts = []
    for x, source_splits in zip(inputs, splits):
        offset = sum(source_splits[:rank])
        parts.append(x[offset : offset + source_splits[rank]])
    received = np.array([source_splits[rank] for source_splits in splits], dtype=np.int64)
    return np.concatenate(parts, axis=0), received


# -- assertions -----------------------------------------------------------------------------------


def _check_meta(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    assert isinstance(actual, np.ndarray), f"{context}: got {type(actual).__name__}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"


def bits(x: np.ndarray) -> np.ndarray:
    """The raw bit patterns of x as unsigned integers of the same width."""
    return np.ascontiguousarray(x).view(f"u{x.dtype.itemsize}")


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    """Bit-exact equality (distinguishes NaN payloads and -0.0)."""
    _check_meta(actual, expected, context)
    np.testing.assert_array_equal(bits(actual), bits(expected), err_msg=context)


def _as_comparable(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) if is_float(x.dtype) else x


def assert_exact(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    """Equal values, same dtype and shape (NaN equals NaN)."""
    _check_meta(actual, expected, context)
    np.testing.assert_array_equal(_as_comparable(actual), _as_comparable(expected), err_msg=context)


def assert_close(
    actual: np.ndarray, expected64: np.ndarray, dt: np.dtype, rtol: float, context: str
):
    """Same dtype and shape as the input, values within rtol of the float64 reference."""
    assert isinstance(actual, np.ndarray), f"{context}: got {type(actual).__name__}"
    assert actual.dtype == dt, f"{context}: dtype {actual.dtype} != {dt}"
    assert actual.shape == expected64.shape, (
        f"{context}: shape {actual.shape} != {expected64.shape}"
    )
    np.testing.assert_allclose(
        actual.astype(np.float64), expected64, rtol=rtol, atol=0, err_msg=context
    )
