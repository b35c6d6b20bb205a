"""allreduce / allreduce_ against numpy: every dtype x op x world size x size, scaling, rounding."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref

SMALL = [(n, size) for n in ref.WORLD_SIZES for size in ref.small_sizes(n)]

COMBOS = ref.reduction_combos()


# -- rank functions -------------------------------------------------------------------------------


def _allreduce(seed, shape, dtype_name, op, kind, prescale=1.0, postscale=1.0, name=None):
    x = ref.reduction_input(kind, seed, rf.rank(), shape, dtype_name, op)
    before = x.copy()
    out = rf.allreduce(
        x, op=getattr(rf, op), name=name, prescale_factor=prescale, postscale_factor=postscale
    )
    untouched = bool(np.array_equal(ref.bits(x), ref.bits(before)))
    return out, untouched, bool(np.shares_memory(out, x))


def _allreduce_inplace(seed, shape, dtype_name, op, kind):
    x = ref.reduction_input(kind, seed, rf.rank(), shape, dtype_name, op)
    returned = rf.allreduce_(x, op=getattr(rf, op))
    return x, returned is x


def _allreduce_given(per_rank, op=None, prescale=1.0, postscale=1.0):
    x = per_rank[rf.rank()].copy()
    if op is None:
        return rf.allreduce(x)
    return rf.allreduce(x, op=getattr(rf, op), prescale_factor=prescale, postscale_factor=postscale)


# -- checks ---------------------------------------------------------------------------------------


def check_allreduce(outputs, inputs, op, kind, context, prescale=1.0, postscale=1.0, extra=0):
    """Every rank's output against numpy, and every rank bit-identical to rank 0."""
    dt = inputs[0].dtype
    n = len(inputs)
    if kind == "exact" or op in ("Min", "Max") or not ref.is_float(dt):
        expected = ref.allreduce_exact(inputs, op, prescale, postscale)
        for rank, out in enumerate(outputs):
            ref.assert_exact(out, expected, f"rank {rank}, {context}")
    else:
        expected64 = ref.allreduce_float64(inputs, op, prescale, postscale)
        rtol = ref.float_rtol(dt, n, extra)
        for rank, out in enumerate(outputs):
            ref.assert_close(out, expected64, dt, rtol, f"rank {rank}, {context}")
    for rank, out in enumerate(outputs[1:], start=1):
        ref.assert_bits_equal(out, outputs[0], f"rank {rank} differs from rank 0, {context}")


def run_and_check(pools, n, shape, dtype_name, op, kind, extra=0, name=None, **scaling):
    seed = ref.seed_of("allreduce", n, shape, dtype_name, op, kind, scaling)
    results = pools.call(n, _allreduce, seed, shape, dtype_name, op, kind, name=name, **scaling)
    context = f"dtype {dtype_name}, op {op}, n {n}, shape {shape}, kind {kind}, {scaling}"
    for rank, (_, untouched, shared) in enumerate(results):
        assert untouched, f"rank {rank}: allreduce modified its input, {context}"
        assert not shared, f"rank {rank}: allreduce output shares memory with the input, {context}"
    inputs = [ref.reduction_input(kind, seed, r, shape, dtype_name, op) for r in range(n)]
    check_allreduce(
        [out for out, _, _ in results], inputs, op, kind, context, extra=extra, **scaling
    )


# -- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype_name", "op", "kind"), COMBOS)
@pytest.mark.parametrize(("n", "size"), SMALL, ids=[f"n{n}-size{s}" for n, s in SMALL])
def test_allreduce(pools, n, size, dtype_name, op, kind):
    run_and_check(pools, n, (size,), dtype_name, op, kind)


# At 1000003 elements (every dtype x op x world size): integers and integer-valued floats are
# checked exactly; random positive floats only for Sum and Average, the ops that accumulate.
LARGE_COMBOS = [c for c in COMBOS if c[2] == "exact" or c[1] in ("Sum", "Average")]


@pytest.mark.parametrize(("dtype_name", "op", "kind"), LARGE_COMBOS)
@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_allreduce_large(pools, n, dtype_name, op, kind):
    run_and_check(pools, n, (ref.LARGE,), dtype_name, op, kind, name="large")


@pytest.mark.parametrize("shape", [(3, 4, 5), (0, 3), (2, 0, 4), (1, 1), ()])
@pytest.mark.parametrize("dtype_name", ["int32", "float32", "bfloat16"])
@pytest.mark.parametrize("n", [2, 3])
def test_allreduce_shapes(pools, n, dtype_name, shape):
    run_and_check(pools, n, shape, dtype_name, "Sum", "exact")


@pytest.mark.parametrize(
    ("dtype_name", "op"), [(d, op) for d, op, kind in COMBOS if kind == "exact"]
)
@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_allreduce_inplace(pools, n, op, dtype_name):
    size = 2 * n + 3
    seed = ref.seed_of("allreduce_", n, op, dtype_name)
    results = pools.call(n, _allreduce_inplace, seed, (size,), dtype_name, op, "exact")
    inputs = [ref.exact_input(seed, r, (size,), dtype_name, op) for r in range(n)]
    context = f"allreduce_, dtype {dtype_name}, op {op}, n {n}, size {size}"
    for rank, (_, same) in enumerate(results):
        assert same, f"rank {rank}: allreduce_ did not return its argument, {context}"
    check_allreduce([x for x, _ in results], inputs, op, "exact", context)


def test_allreduce_large_inplace(pools):
    n, op, dtype_name = 4, "Sum", "float32"
    seed = ref.seed_of("allreduce_ large")
    results = pools.call(n, _allreduce_inplace, seed, (ref.LARGE,), dtype_name, op, "exact")
    inputs = [ref.exact_input(seed, r, (ref.LARGE,), dtype_name, op) for r in range(n)]
    assert all(same for _, same in results)
    check_allreduce([x for x, _ in results], inputs, op, "exact", "allreduce_ large")


# -- scaling --------------------------------------------------------------------------------------

POW2_SCALES = [(0.5, 1.0), (1.0, 4.0), (2.0, 0.25), (0.25, 2.0)]


@pytest.mark.parametrize(("prescale", "postscale"), POW2_SCALES)
@pytest.mark.parametrize("op", ["Sum", "Average", "Product", "Max"])
@pytest.mark.parametrize("dtype_name", ref.FLOAT_DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4])
def test_float_scaling_exact(pools, n, dtype_name, op, prescale, postscale):
    """Power-of-two factors on integer-valued inputs: every step is exact but Average's /N."""
    run_and_check(pools, n, (33,), dtype_name, op, "exact", prescale=prescale, postscale=postscale)


@pytest.mark.parametrize("op", ["Sum", "Average", "Product"])
@pytest.mark.parametrize("dtype_name", ref.FLOAT_DTYPES)
@pytest.mark.parametrize("n", [2, 3])
def test_float_scaling_rounded(pools, n, dtype_name, op):
    """Factors that round: the prescale rounding is in the reference's inputs (they are scaled
    by the dtype rule first), the postscale adds one rounding to the tolerance."""
    run_and_check(
        pools, n, (101,), dtype_name, op, "positive", prescale=1 / 3, postscale=3.1, extra=1
    )


INT_SCALES = [(0.5, 1.0), (2.5, 1.0), (1.0, 0.5), (1.5, 0.3), (-1.5, 0.5)]
INT_SCALE_CASES = [
    (dtype_name, pre, post)
    for dtype_name in ref.INT_DTYPES
    for pre, post in INT_SCALES
    if dtype_name != "uint8" or pre > 0  # negative values do not fit uint8
]


def _bounded_ints(seed, rank, size, dtype_name):
    # Small enough that prescaling by 2.5 stays in range for int8; postscales are <= 1.
    low = 0 if dtype_name == "uint8" else -40
    return ref.rng(seed, rank).integers(low, 41, size=size).astype(ref.dtype(dtype_name))


@pytest.mark.parametrize(("dtype_name", "prescale", "postscale"), INT_SCALE_CASES)
@pytest.mark.parametrize("op", ["Sum", "Average", "Min", "Product"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_integer_scaling(pools, n, op, dtype_name, prescale, postscale):
    """Integers scale as Horovod's do: factor * x in float64, truncated toward zero; prescale on
    every rank's input, then the Sum (or Average: one scaling by postscale / N)."""
    seed = ref.seed_of("int scaling", n, dtype_name, op, prescale, postscale)
    inputs = [_bounded_ints(seed, r, 64, dtype_name) for r in range(n)]
    outputs = pools.call(n, _allreduce_given, inputs, op, prescale, postscale)
    context = f"dtype {dtype_name}, op {op}, n {n}, prescale {prescale}, postscale {postscale}"
    check_allreduce(outputs, inputs, op, "exact", context, prescale, postscale)


# -- integer Average: Horovod's truncation --------------------------------------------------------


@pytest.mark.parametrize("dtype_name", ref.INT_DTYPES)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_integer_average_rounding(pools, n, dtype_name):
    """Average of integers as Horovod computes it: the wrapped Sum times 1/N in float64,
    truncated toward zero (so -1.5 gives -1, 1.5 gives 1, 2/3 of 3 gives 0.999.. -> 0 or 1 as
    the float64 product falls)."""
    low = 0 if dtype_name == "uint8" else -6
    seed = ref.seed_of("int average", n, dtype_name)
    dt = ref.dtype(dtype_name)
    inputs = [ref.rng(seed, r).integers(low, 7, size=1000).astype(dt) for r in range(n)]
    total = np.sum(inputs, axis=0, dtype=np.int64)
    if n % 2 == 0:
        assert np.any(total % n == n // 2), "the data has no halves to truncate"
    if low < 0:
        assert np.any((total < 0) & (total % n != 0)), "the data has no negative remainders"
    outputs = pools.call(n, _allreduce_given, inputs, "Average")
    check_allreduce(outputs, inputs, "Average", "exact", f"dtype {dtype_name}, n {n}")


@pytest.mark.parametrize(
    ("dtype_name", "per_rank", "expected"),
    [
        # Sums 1, -1, 3, -3, 5, 3 halve and truncate toward zero: 0, 0, 1, -1, 2, 1.
        ("int32", [[1, -1, 3, -3, 5, 2], [0, 0, 0, 0, 0, 1]], [0, 0, 1, -1, 2, 1]),
        # int8 Sum wraps first: 100 + 100 = -56 -> -28; -100 + -100 = 56 -> 28; 127 + 1 = -128.
        ("int8", [[100, -100, 127], [100, -100, 1]], [-28, 28, -64]),
        # uint8: 200 + 100 = 44 -> 22; 255 + 0 = 255 -> 127.5 -> 127; 3 -> 1.
        ("uint8", [[200, 255, 3], [100, 0, 0]], [22, 127, 1]),
        ("int64", [[2**40 + 1, -(2**40) - 3], [0, 0]], [2**39, -(2**39) - 1]),
    ],
)
def test_integer_average_literal(pools, dtype_name, per_rank, expected):
    dt = ref.dtype(dtype_name)
    inputs = [np.array(values, dtype=dt) for values in per_rank]
    outputs = pools.call(2, _allreduce_given, inputs, "Average")
    for rank, out in enumerate(outputs):
        ref.assert_exact(out, np.array(expected, dtype=dt), f"rank {rank}, {dtype_name}")


@pytest.mark.parametrize(
    ("op", "per_rank", "prescale", "postscale", "expected"),
    [
        # Each rank's 39 * 0.375 = 14.625 truncates to 14 before the Sum: 28 (rounding gave 30).
        ("Sum", [[39, -39], [39, -39]], 0.375, 1.0, [28, -28]),
        # The Sum 27 times 0.5 truncates: 13 (not 14); -27 gives -13 (toward zero, not floor).
        ("Sum", [[20, -20], [7, -7]], 1.0, 0.5, [13, -13]),
        # Average at N = 2 with postscale 3: one factor 3 / 2 on the Sum 9: 13.5 -> 13.
        ("Average", [[4, -4], [5, -5]], 1.0, 3.0, [13, -13]),
    ],
)
def test_integer_scaling_literal(pools, op, per_rank, prescale, postscale, expected):
    inputs = [np.array(values, dtype=np.int32) for values in per_rank]
    outputs = pools.call(2, _allreduce_given, inputs, op, prescale, postscale)
    for rank, out in enumerate(outputs):
        ref.assert_exact(out, np.array(expected, dtype=np.int32), f"rank {rank}, {op}")


def test_default_op_is_average(pools):
    inputs = [np.array([1, 2, 3, 4], dtype=np.int32), np.array([2, 2, 4, 4], dtype=np.int32)]
    outputs = pools.call(2, _allreduce_given, inputs)
    for rank, out in enumerate(outputs):
        # Sums 3, 4, 7, 8 halve and truncate (Horovod): 1, 2, 3, 4.
        ref.assert_exact(out, np.array([1, 2, 3, 4], dtype=np.int32), f"rank {rank}")


# -- special float values -------------------------------------------------------------------------


def _specials(n, dtype_name):
    """Small integers plus NaN, +-inf and -0.0 placed so that every result is order-independent."""
    dt = ref.dtype(dtype_name)
    inputs = [np.array([1, 2, 1, 2, 1, 2, 1, 2], dtype=np.float64) for _ in range(n)]
    inputs[0][0] = np.nan  # NaN propagates through every op
    inputs[-1][5] = np.nan  # ... also when it comes from the last rank
    inputs[0][1] = np.inf
    inputs[-1][1] = -np.inf  # inf + -inf = NaN; min/max pick an infinity
    inputs[-1][2] = np.inf
    inputs[0][3] = -0.0
    inputs[0][4] = 0.0
    inputs[-1][4] = np.inf  # 0 * inf = NaN
    return [x.astype(dt) for x in inputs]


@pytest.mark.parametrize("op", ref.OPS)
@pytest.mark.parametrize("dtype_name", ref.FLOAT_DTYPES)
@pytest.mark.parametrize("n", [2, 3])
def test_special_values(pools, n, dtype_name, op):
    inputs = _specials(n, dtype_name)
    outputs = pools.call(n, _allreduce_given, inputs, op)
    with np.errstate(invalid="ignore"):
        check_allreduce(outputs, inputs, op, "exact", f"specials, {dtype_name}, {op}, n {n}")


def test_named_and_unnamed_interleave(pools):
    """Names are optional; the same name can be reused once the previous call completed."""
    n = 3
    results = pools.call(n, _named_sequence)
    for rank, outs in enumerate(results):
        for step, out in enumerate(outs):
            expected = np.full(5, sum(r + step for r in range(n)), dtype=np.int64)
            ref.assert_exact(out, expected, f"rank {rank}, step {step}")


def _named_sequence():
    outs = []
    for step in range(6):
        x = np.full(5, rf.rank() + step, dtype=np.int64)
        name = None if step % 2 else "reused.name"
        outs.append(rf.allreduce(x, op=rf.Sum, name=name))
    return outs


def test_harness_reports_rank_exceptions(pools):
    """The harness itself: a rank's exception comes back with its type and traceback."""
    results = pools.run(2, _raise_on_rank_one)
    assert results[0].ok and results[0].value == 0
    harness.assert_raised(results[1], KeyError, "rank one")
    assert "_raise_on_rank_one" in results[1].traceback


def _raise_on_rank_one():
    if rf.rank() == 1:
        raise KeyError("rank one")
    return rf.rank()
