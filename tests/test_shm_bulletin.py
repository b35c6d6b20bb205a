"""One-shot negotiation rounds over shared memory (issue 13's small-message path): every rank
publishes its announcement, small allreduces inline, in its own bulletin in the segment and
reads the others' in place. Exact against numpy for every dtype and sizes 0, 1 and odd at
N = 2, 3, 4; a batch whose announcement outgrows the bulletin (its payload then travels as
frames); fused and unfused results bitwise equal; ranks submitting in different orders; and a
rank SIGKILLed while the others loop over 8-byte allreduces is named by every survivor within
5 s, with nothing left in /dev/shm.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests.shm_kill import sigkill_during_loop

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host")

ENV = {"RINGFLOW_TRANSPORT": "shm"}
DTYPES = ("uint8", "int8", "int32", "int64", "float16", "float32", "float64")
SIZES = (0, 1, 7, 33)
OPS = ("Sum", "Min", "Max", "Product")
BATCH = 400
"""Async tensors in one round: 400 new descriptors (~77 KB) outgrow the 16 KiB bulletin."""
TIMEOUT_S = 10.0


def _input(rank, size, dtype_name, salt=0):
    """Values whose sums and products stay exact in every dtype here (products of 1, 2, -1)."""
    values = (np.arange(size, dtype=np.int64) * (rank + 1) + salt) % 3 - 1
    if dtype_name == "uint8":
        values = values + 1
    return values.astype(dtype_name)


def _expected(op, inputs):
    stacked = np.stack(inputs).astype(np.float64)
    reduce = {"Sum": np.sum, "Min": np.min, "Max": np.max, "Product": np.prod}[op]
    return reduce(stacked, axis=0).astype(inputs[0].dtype)


def _small_allreduces():
    me, out = rf.rank(), {}
    for dtype_name in DTYPES:
        for size in SIZES:
            for op in OPS:
                x = _input(me, size, dtype_name)
                key = f"{op}.{dtype_name}.{size}"
                out[key] = rf.allreduce(x, op=getattr(rf, op), name=key)
    # Fused (one grouped call) and unfused (one call each) must agree bit for bit.
    rng = np.random.default_rng(me)
    floats = [rng.standard_normal(n).astype(np.float32) for n in (1, 5, 17)]
    out["unfused"] = [rf.allreduce(f, op=rf.Sum, name=f"unfused.{i}") for i, f in enumerate(floats)]
    out["fused"] = rf.grouped_allreduce(floats, op=rf.Sum, name="fused")
    # Submitted in another order on each rank: matched by name all the same.
    order = list(range(BATCH))
    np.random.default_rng(me + 17).shuffle(order)
    handles = {
        i: rf.allreduce_async(np.full(3, i + me, np.int64), op=rf.Sum, name=f"batch.{i}")
        for i in order
    }
    out["batch"] = [rf.synchronize(handles[i]) for i in range(BATCH)]
    return out


def _job(make_job, n):
    job = make_job(n, env=ENV, rank_timeout=TIMEOUT_S)
    job.start()
    for rank, kinds in enumerate(job.call(rf.peer_transports)):
        assert kinds == ["self" if r == rank else "shm" for r in range(n)], kinds
    return job


@pytest.mark.parametrize("n", [2, 3, 4])
def test_small_allreduces_exact(make_job, n):
    job = _job(make_job, n)
    results = job.call(_small_allreduces)
    for dtype_name in DTYPES:
        for size in SIZES:
            inputs = [_input(r, size, dtype_name) for r in range(n)]
            for op in OPS:
                key = f"{op}.{dtype_name}.{size}"
                want = _expected(op, inputs)
                for rank, got in enumerate(results):
                    assert got[key].dtype == want.dtype, key
                    np.testing.assert_array_equal(got[key], want, f"N={n} rank {rank} {key}")
    for rank, got in enumerate(results):
        for fused, unfused in zip(got["fused"], got["unfused"]):
            assert fused.tobytes() == unfused.tobytes(), f"rank {rank}"
        assert fused.tobytes() == results[0]["fused"][-1].tobytes()
        for i, value in enumerate(got["batch"]):
            np.testing.assert_array_equal(value, np.full(3, n * i + n * (n - 1) // 2), f"{i}")


def _loop_small(victim):
    """8-byte allreduces until one raises; the victim says (through the store) once it loops."""
    x = np.ones(2, dtype=np.float32)
    for step in range(10_000_000):
        if step == 100 and rf.rank() == victim:
            harness.rank_store().set("test/looping", b"1")
        try:
            rf.allreduce_(x, op=rf.Max, name="small.loop")
        except rf.Error as exc:
            return step, exc, time.monotonic()
    raise AssertionError("the loop never failed")


@pytest.mark.parametrize("n", [2, 4])
def test_sigkill_during_small_allreduces(make_job, n):
    job = _job(make_job, n)
    sigkill_during_loop(job, n - 1, _loop_small, min_step=100, deadline=TIMEOUT_S + 30)
