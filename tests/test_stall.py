"""Stall inspector: a tensor that some ranks submitted and others never did.

With RINGFLOW_STALL_CHECK_TIME=1 and RINGFLOW_STALL_SHUTDOWN_TIME=3, rank 0 submits a named
tensor that rank 1 never submits. Rank 0 warns on stderr (a line starting "ringflow WARNING:"
with "stalled", the tensor and the missing rank) and, after the shutdown time, every rank fails:
rank 0's synchronize raises rf.Error saying "stalled", naming the tensor and rank 1. Rank 1 stays
out of ringflow until then (waiting in the store), so it may still submit: a stall, not a
deadlock. Later calls raise on both. The wait for the stall times is inherent; the harness
deadline bounds it. (Rank 1 blocked in a collective only it called would be a deadlock, found
at once: tests/test_deadlock.py.)
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time

import numpy as np

import ringflow as rf
from tests import harness

CHECK_S = 1
SHUTDOWN_S = 3
SLACK_S = 10.0
"""Beyond the shutdown time: scheduling on a loaded 2-core machine, one more check interval."""

ENV = {
    "RINGFLOW_STALL_CHECK_TIME": str(CHECK_S),
    "RINGFLOW_STALL_SHUTDOWN_TIME": str(SHUTDOWN_S),
}


def _outcome(fn):
    """(exception type name, message, is an rf.Error, seconds) of a call expected to raise."""
    start = time.monotonic()
    try:
        value = fn()
    except Exception as exc:
        return type(exc).__name__, str(exc), isinstance(exc, rf.Error), time.monotonic() - start
    return "returned", repr(value)[:200], False, time.monotonic() - start


def _stall(token):
    """Rank 0 waits on "lonely.grad", which rank 1 never submits. Rank 1 stays out of ringflow
    until rank 0's call returned (it waits in the store). Then both make one more call."""
    rank = rf.rank()
    store = harness.rank_store()
    rf.allreduce(np.ones(4, np.float32), op=rf.Sum, name="stall.warm-up")
    first = polled = None
    if rank == 0:
        try:
            handle = rf.allreduce_async(np.ones(8, np.float32), op=rf.Sum, name="lonely.grad")
            first = _outcome(lambda: rf.synchronize(handle))
            polled = rf.poll(handle)
        finally:
            store.set(f"{token}/rank0-returned", b"1")
    else:
        store.get(f"{token}/rank0-returned", timeout_s=SHUTDOWN_S + 2 * SLACK_S)
    later = _outcome(lambda: rf.allreduce(np.ones(2, np.float64), op=rf.Sum, name="stall.later"))
    with contextlib.suppress(rf.Error):
        rf.shutdown()  # may raise on a failed job, must not hang
    return first, polled, later


MISSING_RANK_1 = re.compile(r"\brank[s]?\W*\[?1\b")


def test_stall_shutdown(make_job):
    job = make_job(2, env=ENV).start()
    token = secrets.token_hex(8)
    results = job.call(_stall, token, deadline=SHUTDOWN_S + 2 * SLACK_S + 30)
    for rank, (first, polled, later) in enumerate(results):
        if first is not None:
            kind, message, is_rf, elapsed = first
            context = f"rank {rank}: {kind}: {message!r} after {elapsed:.1f} s"
            assert is_rf, f"{context}: not an rf.Error"
            assert "stalled" in message.lower(), f"{context}: does not say 'stalled'"
            assert "lonely.grad" in message, f"{context}: does not name 'lonely.grad'"
            assert SHUTDOWN_S - 0.5 <= elapsed < SHUTDOWN_S + SLACK_S, f"{context}: wrong time"
            assert MISSING_RANK_1.search(message), f"{context}: names no missing rank 1"
        if rank == 0:
            assert polled is True, f"rank 0: poll() of the failed handle gave {polled!r}"
        kind, message, is_rf, _ = later
        context = f"rank {rank}: a call after the stall shutdown: {kind}: {message!r}"
        assert is_rf, f"{context}: not an rf.Error"
        assert "stalled" in message.lower(), f"{context}: does not say 'stalled'"
        assert "lonely.grad" in message, f"{context}: does not name 'lonely.grad'"

    log = job.log_tail(0)
    warnings = [line for line in log.splitlines() if line.startswith("ringflow WARNING:")]
    stalled = [line for line in warnings if "stalled" in line and "lonely.grad" in line]
    assert stalled, f"rank 0's log has no stall warning naming 'lonely.grad':\n{log}"
    # The part of the line from the tensor's name to the next tensor (if several are listed).
    parts = [line[line.index("lonely.grad") :].split(";")[0] for line in stalled]
    assert any(MISSING_RANK_1.search(part) for part in parts), (
        f"rank 0's stall warning does not name the missing rank 1:\n{stalled}"
    )


def _no_stall(total):
    """Every rank submits every tensor: no error, no stall warning."""
    rank = rf.rank()
    handles = [
        rf.allreduce_async(np.full(3, rank, np.int32), op=rf.Sum, name=f"ok.{i}")
        for i in range(total)
    ]
    return [rf.synchronize(h) for h in handles]


def test_no_false_stall(make_job):
    """Short stall times do not fail or warn about tensors that every rank submits."""
    job = make_job(2, env=ENV).start()
    for rank, outs in enumerate(job.call(_no_stall, 50, deadline=60)):
        for out in outs:
            np.testing.assert_array_equal(out, np.full(3, 1, np.int32), err_msg=f"rank {rank}")
    for rank in range(2):
        log = job.log_tail(rank)
        warned = [line for line in log.splitlines() if "ok." in line and "WARNING" in line]
        assert not warned, f"rank {rank} warned about tensors every rank submitted:\n{log}"
