"""Negotiation by name: a field that differs between ranks fails that tensor on every rank.

For each field the engine compares (shape, dtype, op, root, prescale, postscale), one rank passes
a different value for one named tensor, submitted async: synchronize raises rf.MismatchError on
EVERY rank, naming the tensor, the field and each rank's value; poll() says True and does not
raise. Requests around it, submitted in per-rank orders, complete exactly, and the job stays
usable (a following allreduce is exact).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref

WORLDS = [(2, 1), (3, 1), (3, 0)]
"""(world size, the rank with the odd value)"""


@pytest.fixture(scope="module")
def neg_pools():
    """A pool of its own, so that a core bug here cannot spill into the other modules."""
    pools = harness.Pools()
    yield pools
    pools.close()


# Each field: (field word, kind, value on the odd rank, value on the others, as the message
# shows them). Values chosen so that their text cannot be confused with rank numbers.
FIELDS = {
    "shape": ("shape", "allreduce", (5,), (4,), "(5,)", "(4,)"),
    "dtype": ("dtype", "allreduce", "float64", "float32", "float64", "float32"),
    "dtype_allgather": ("dtype", "allgather", "int8", "uint8", "int8", "uint8"),
    "op": ("op", "allreduce", "Max", "Sum", "max", "sum"),
    "op_reducescatter": ("op", "reducescatter", "Min", "Max", "min", "max"),
    "root": ("root", "broadcast", None, 0, None, "0"),  # the odd rank passes n - 1
    "prescale": ("prescale", "allreduce", 0.25, 0.5, "0.25", "0.5"),
    "postscale": ("postscale", "allreduce", 0.125, 0.375, "0.125", "0.375"),
}


def _submit(case, rank, odd, name):
    _, _, odd_value, value, _, _ = FIELDS[case]
    v = odd_value if rank == odd else value
    if case == "shape":
        return rf.allreduce_async(np.ones(v, np.float32), op=rf.Sum, name=name)
    if case == "dtype":
        return rf.allreduce_async(np.ones(4, v), op=rf.Sum, name=name)
    if case == "dtype_allgather":
        return rf.allgather_async(np.ones(3, v), name=name)
    if case == "op":
        return rf.allreduce_async(np.ones(4, np.float32), op=getattr(rf, v), name=name)
    if case == "op_reducescatter":
        return rf.reducescatter_async(np.ones(6, np.float32), op=getattr(rf, v), name=name)
    if case == "root":
        root = rf.size() - 1 if rank == odd else value
        return rf.broadcast_async(np.full(4, rank, np.float32), root, name=name)
    if case == "prescale":
        return rf.allreduce_async(np.ones(4, np.float32), op=rf.Sum, name=name, prescale_factor=v)
    if case == "postscale":
        return rf.allreduce_async(np.ones(4, np.float32), op=rf.Sum, name=name, postscale_factor=v)
    raise AssertionError(case)


def _mismatch_among_good(case, odd, tag):
    """Eight good allreduces and the bad tensor, submitted in this rank's own order; then
    synchronize everything. Returns (error of the bad one, poll of it, good results, after)."""
    rank = rf.rank()
    bad = f"neg.{tag}.bad"
    order = ["bad", *range(8)]
    gen = ref.rng(ref.seed_of(tag), rank)
    gen.shuffle(order)
    handles = {}
    for what in order:
        if what == "bad":
            handles["bad"] = _submit(case, rank, odd, bad)
        else:
            x = np.full(3 + what, rank + what, dtype=np.int64)
            handles[what] = rf.allreduce_async(x, op=rf.Sum, name=f"neg.{tag}.good.{what}")
    good = {}
    error = None
    for what in reversed(order):
        if what == "bad":
            try:
                rf.synchronize(handles["bad"])
            except Exception as exc:
                error = exc
        else:
            good[what] = rf.synchronize(handles[what])
    polled = rf.poll(handles["bad"])
    after = rf.allreduce(np.full(3, rank + 1, dtype=np.int64), op=rf.Sum, name=f"neg.{tag}.after")
    return error, polled, good, after


def check_message(rank, n, odd, error, case, name):
    field, _, _, _, odd_text, text = FIELDS[case]
    result = harness.RankResult(rank, error=error)
    harness.assert_raised(result, rf.MismatchError, name, field)
    message = str(error)
    if case == "root":
        odd_text = str(n - 1)
    for r in range(n):
        value = odd_text if r == odd else text
        pattern = rf"rank {r}[\s:=]+{re.escape(value)}"
        assert re.search(pattern, message, re.IGNORECASE), (
            f"rank {rank}: the message does not give rank {r}'s {field} {value!r} "
            f"(no {pattern!r}): {message}"
        )


@pytest.mark.parametrize("case", list(FIELDS))
@pytest.mark.parametrize(("n", "odd"), WORLDS, ids=[f"n{n}-odd{o}" for n, o in WORLDS])
def test_mismatched_field(neg_pools, n, odd, case):
    tag = f"{case}.{n}.{odd}"
    name = f"neg.{tag}.bad"
    results = neg_pools.call(n, _mismatch_among_good, case, odd, tag)
    for rank, (error, polled, good, after) in enumerate(results):
        assert error is not None, f"rank {rank}: the mismatched '{name}' completed"
        check_message(rank, n, odd, error, case, name)
        assert polled is True, f"rank {rank}: poll() of the failed handle gave {polled!r}"
        for what in range(8):
            want = np.full(3 + what, sum(r + what for r in range(n)), dtype=np.int64)
            ref.assert_exact(good[what], want, f"rank {rank}: good allreduce {what}, {case}")
        want = np.full(3, n * (n + 1) // 2, dtype=np.int64)
        ref.assert_exact(after, want, f"rank {rank}: allreduce after the mismatch, {case}")


def _blocking_mismatch(odd):
    """The blocking form of a dtype mismatch (submit + synchronize), then a good allreduce."""
    rank = rf.rank()
    x = np.ones(4, np.float64 if rank == odd else np.float32)
    try:
        rf.allreduce(x, op=rf.Sum, name="neg.blocking")
        error = None
    except Exception as exc:
        error = exc
    after = rf.allreduce(np.full(2, rank, dtype=np.int32), op=rf.Sum, name="neg.blocking.after")
    return error, after


def test_blocking_mismatch(neg_pools):
    n, odd = 3, 2
    results = neg_pools.call(n, _blocking_mismatch, odd)
    for rank, (error, after) in enumerate(results):
        check_message(rank, n, odd, error, "dtype", "neg.blocking")
        ref.assert_exact(after, np.full(2, 3, dtype=np.int32), f"rank {rank}: after")
