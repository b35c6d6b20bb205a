"""Horovod conformance, values: prescale_factor, postscale_factor and Average computed as
Horovod 0.28.1 computes them (tests/conformance.py states the rules), bit for bit, at N = 2 and 3,
for every dtype, in every form of allreduce and reducescatter (grouped included), through
``ringflow.torch`` and the numpy-level ``ringflow`` API alike.

Exactness without depending on the order ranks are added in: integer sums are exact (no
overflow here), and so are float sums of integer-valued inputs; a prescale that rounds is used
only at N = 2, where a sum has one order. Postscale and Average round once, after the sum.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ringflow as rf  # noqa: E402
import ringflow.torch as hvd  # noqa: E402
from tests import reference as ref  # noqa: E402
from tests.conformance import WORLD, assert_bitwise, my_rows, to_numpy, to_torch  # noqa: E402

DTYPES = (*ref.INT_DTYPES, *ref.FLOAT_DTYPES)
POSTSCALED = [("Sum", 1.7), ("Average", 1.0), ("Average", 2.5), ("Average", 0.3)]
POSTSCALED += [("Max", 3.0), ("Min", -0.5), ("Product", 0.75)]


def cases(n: int, dtype_name: str) -> list[tuple[str, float, float]]:
    """(op, prescale, postscale) for one dtype at world size n."""
    out = [("Sum", 1.0, 1.0), *((op, 1.0, post) for op, post in POSTSCALED)]
    if dtype_name in ref.INT_DTYPES or n == 2:
        pres = [0.3, 2.5] if dtype_name == "uint8" else [0.3, -1.5, 2.5]
    else:
        pres = [0.5, -2.0]  # exact: the sum of three prescaled floats has one value
    out += [(op, pre, 0.7) for op in ("Sum", "Average", "Max") for pre in pres]
    return out


def inputs(seed, tag, rank: int, shape, dtype_name: str, op: str) -> np.ndarray:
    """Small integers: sums, products (of 3) and scaled values stay exact and in range."""
    dt = ref.dtype(dtype_name)
    high = 3 if op == "Product" else {"bfloat16": 30}.get(dtype_name, 10)
    low = 0 if dtype_name == "uint8" else -high
    gen = ref.rng(ref.seed_of(seed, tag, dtype_name, op), rank)
    return gen.integers(low, high, size=shape, endpoint=True).astype(dt)


def big_int64(seed, tag, rank: int, count: int) -> np.ndarray:
    """int64 beyond 2**53: Horovod's float64 scaling loses their low bits (and so must we)."""
    return ref.rng(ref.seed_of(seed, tag), rank).integers(-(2**61), 2**61, size=count)


def _forms(x, x2, op, pre, post):
    """One case through every form of the reducing collectives; numpy results by form."""
    kw = {"op": getattr(hvd, op), "prescale_factor": pre, "postscale_factor": post}
    rkw = {"op": getattr(rf, op), "prescale_factor": pre, "postscale_factor": post}
    t, t2 = to_torch(x), to_torch(x2)
    res = {"allreduce": to_numpy(hvd.allreduce(t, **kw))}
    inplace = to_torch(x)
    hvd.allreduce_(inplace, **kw)
    res["allreduce_"] = to_numpy(inplace)
    handles = {
        "allreduce_async": hvd.allreduce_async(t, **kw),
        "grouped_allreduce_async": hvd.grouped_allreduce_async([t, t2], **kw),
        "reducescatter_async": hvd.reducescatter_async(t2, **kw),
        "grouped_reducescatter_async": hvd.grouped_reducescatter_async([t2, t], **kw),
    }
    for form, handle in handles.items():
        out = hvd.synchronize(handle)
        res[form] = [to_numpy(o) for o in out] if isinstance(out, list) else to_numpy(out)
    res["grouped_allreduce"] = [to_numpy(o) for o in hvd.grouped_allreduce([t, t2], **kw)]
    res["reducescatter"] = to_numpy(hvd.reducescatter(t2, **kw))
    res["grouped_reducescatter"] = [to_numpy(o) for o in hvd.grouped_reducescatter([t2, t], **kw)]
    res["rf.allreduce"] = rf.allreduce(x, **rkw)
    res["rf.reducescatter"] = rf.reducescatter(x2, **rkw)
    res["rf.grouped_reducescatter"] = rf.grouped_reducescatter([x2, x], **rkw)
    return res


def _scaled(seed: int) -> dict:
    n, me, out = hvd.size(), hvd.rank(), {}
    for dtype_name in DTYPES:
        for op, pre, post in cases(n, dtype_name):
            tag = (dtype_name, op, pre, post)
            x = inputs(seed, (tag, "x"), me, (2 * n + 1,), dtype_name, op)
            x2 = inputs(seed, (tag, "x2"), me, (2 * n + 1, 2), dtype_name, op)
            out[tag] = _forms(x, x2, op, pre, post)
    # Sizes the ring algorithm (not the inline path) reduces, and int64 beyond 2**53.
    for dtype_name in ("int32", "float32"):
        x = inputs(seed, "large", me, (20_011,), dtype_name, "Sum")
        out["large", dtype_name] = to_numpy(hvd.allreduce(to_torch(x), op=hvd.Average))
    big = big_int64(seed, "big", me, 64)
    out["big", "Average"] = to_numpy(hvd.allreduce(torch.from_numpy(big), op=hvd.Average))
    out["big", "Sum"] = to_numpy(
        hvd.allreduce(torch.from_numpy(big), op=hvd.Sum, postscale_factor=0.5)
    )
    return out


def _expected(seed, n, tag, rank):
    dtype_name, op, pre, post = tag
    xs = [inputs(seed, (tag, "x"), r, (2 * n + 1,), dtype_name, op) for r in range(n)]
    x2s = [inputs(seed, (tag, "x2"), r, (2 * n + 1, 2), dtype_name, op) for r in range(n)]
    full = ref.allreduce_exact(xs, op, pre, post)
    full2 = ref.allreduce_exact(x2s, op, pre, post)
    block, block1 = my_rows(full2, n, rank), my_rows(full, n, rank)
    return {
        "allreduce": full,
        "allreduce_": full,
        "allreduce_async": full,
        "grouped_allreduce_async": [full, full2],
        "grouped_allreduce": [full, full2],
        "reducescatter_async": block,
        "reducescatter": block,
        "grouped_reducescatter_async": [block, block1],
        "grouped_reducescatter": [block, block1],
        "rf.allreduce": full,
        "rf.reducescatter": block,
        "rf.grouped_reducescatter": [block, block1],
    }


@pytest.mark.parametrize("n", WORLD)
def test_scaling_as_horovod(pools, n):
    seed = ref.seed_of("conformance scaling", n)
    results = pools.call(n, _scaled, seed)
    for rank, got in enumerate(results):
        for tag, forms in got.items():
            if tag[0] in ("large", "big"):
                continue
            for form, want in _expected(seed, n, tag, rank).items():
                context = f"rank {rank} of {n}: {form}, dtype/op/prescale/postscale {tag}"
                actual = forms[form]
                if isinstance(want, list):
                    assert len(actual) == len(want), context
                    for i, (a, w) in enumerate(zip(actual, want)):
                        assert_bitwise(a, w, f"{context}, tensor {i}")
                else:
                    assert_bitwise(actual, want, context)
        for dtype_name in ("int32", "float32"):
            xs = [inputs(seed, "large", r, (20_011,), dtype_name, "Sum") for r in range(n)]
            want = ref.allreduce_exact(xs, "Average")
            assert_bitwise(got["large", dtype_name], want, f"rank {rank}: large {dtype_name}")
        bigs = [big_int64(seed, "big", r, 64) for r in range(n)]
        want = ref.allreduce_exact(bigs, "Average")
        exact = np.sum(bigs, axis=0) // n  # what exact integer arithmetic would give
        assert np.any(want != exact), "the data shows no float64 rounding"
        assert_bitwise(got["big", "Average"], want, f"rank {rank}: int64 beyond 2**53, Average")
        want = ref.allreduce_exact(bigs, "Sum", postscale=0.5)
        assert_bitwise(got["big", "Sum"], want, f"rank {rank}: int64 beyond 2**53, postscale")


def test_references_distinguish_horovod_from_rounding():
    """The data above can tell Horovod's rules from the ones ringflow had: truncation from
    rounding to nearest, and float multiplication by 1/N from division by N."""
    n = 3
    seed = ref.seed_of("conformance scaling", n)
    tag = ("int32", "Average", 1.0, 2.5)
    xs = [inputs(seed, (tag, "x"), r, (2 * n + 1,), "int32", "Average") for r in range(n)]
    total = np.sum(xs, axis=0).astype(np.float64) * (2.5 / n)
    assert np.any(np.trunc(total) != np.rint(total)), "no case where truncation differs"
    assert np.any((total < 0) & (np.trunc(total) != np.floor(total))), "no negative fraction"
    # float32 Average: sum * float32(1/3) is not sum / 3 for some sums.
    sums = np.arange(1, 4000, dtype=np.float32)
    assert np.any(sums * np.float32(1 / 3) != sums / np.float32(3))


# -- literal cases: the issue's, and what Horovod leaves undefined ---------------------------


def _literals():
    mine = torch.tensor([39, -39, 27, 3], dtype=torch.int32)
    return {
        # Each rank's 39 * 0.375 = 14.625 truncates to 14 before the Sum (rounding gave 15).
        "prescale": hvd.allreduce(mine, op=hvd.Sum, prescale_factor=0.375).tolist(),
        "average": hvd.allreduce(mine, op=hvd.Average).tolist(),
        # Out of range: Horovod's C++ conversion is undefined there; ringflow saturates.
        "saturate int8": hvd.allreduce(
            torch.tensor([100, -100], dtype=torch.int8), op=hvd.Max, prescale_factor=3.0
        ).tolist(),
        "saturate uint8": hvd.allreduce(
            torch.tensor([200, 7], dtype=torch.uint8), op=hvd.Max, postscale_factor=-1.0
        ).tolist(),
    }


@pytest.mark.parametrize("n", WORLD)
def test_literal_cases(pools, n):
    for rank, got in enumerate(pools.call(n, _literals)):
        assert got["prescale"] == [14 * n, -14 * n, 10 * n, 1 * n], (rank, got)
        # 39n/n, -39n/n, 27n/n, 3n/n: (1/n) * 39n rounds to 39 or to 38.99.. (truncated: 38)
        want = [int(np.trunc((1.0 / n) * float(v * n))) for v in (39, -39, 27, 3)]
        assert got["average"] == want, (rank, got, want)
        assert got["saturate int8"] == [127, -128], (rank, got)
        assert got["saturate uint8"] == [0, 0], (rank, got)
