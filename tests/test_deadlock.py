"""Deadlock found at once: ranks that all wait in calls that can never match raise within 1 s.

When every rank of a set waits in a call (a blocking collective or synchronize()) and each
waited collective still misses a rank of that set, nothing can ever complete: every rank of the
job raises rf.MismatchError naming each stuck rank's pending call, long before the stall
timeout (Horovod hangs here). Async submissions in any order, a rank that is busy elsewhere,
and joined ranks are no deadlock (the no-false-positive tests below).
"""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness

FOUND_S = 1.0
"""Every rank raises within this long of the last rank starting to wait."""
LONG_STALL = {"RINGFLOW_STALL_CHECK_TIME": "60", "RINGFLOW_STALL_SHUTDOWN_TIME": "60"}
"""So that a deadlock reported in time cannot be the stall inspector's doing."""


def _outcome(fn):
    """(error type name or "returned", message, seconds)."""
    start = time.monotonic()
    try:
        fn()
    except rf.Error as error:
        return type(error).__name__, str(error), time.monotonic() - start
    return "returned", "", time.monotonic() - start


def _then_later_call():
    """A call after the deadlock raises at once too; shutdown() returns."""
    later = _outcome(lambda: rf.allreduce(np.ones(2), name="after"))
    with contextlib.suppress(rf.Error):
        rf.shutdown()
    return later


def _object_vs_barrier():
    """Rank 0 in allgather_object (e.g. reporting an assertion that failed on it alone), the
    others in barrier."""
    import ringflow.torch as hvd

    rf.allreduce(np.ones(2), name="warm-up")
    if rf.rank() == 0:
        first = _outcome(lambda: hvd.allgather_object({"failed": "assertion"}))
    else:
        first = _outcome(hvd.barrier)
    return first, _then_later_call()


def check_deadlock(results, calls, everyone=True):
    """Every rank raised in time, naming the stuck ranks' calls; later calls raise at once.
    calls[r]: what the message says rank r waits in. everyone: every rank must be named stuck;
    else at least two. (When two ranks are stuck on each other before a third announced its
    wait, that verdict is right, and the third's call raises it: the runtime failed, so that
    call raises PeerFailureError quoting the deadlock.)"""
    for rank, (first, later) in enumerate(harness.values(results)):
        kind, message, elapsed = first
        context = f"rank {rank}: {kind} after {elapsed:.2f} s: {message}"
        assert elapsed < FOUND_S, context
        assert f"rank {rank}: deadlock: " in message, context
        named = [stuck for stuck in calls if f"rank {stuck} waits in " in message]
        assert named == list(calls) if everyone else len(named) > 1, context
        assert kind == "MismatchError" if rank in named else kind.endswith("Error"), context
        for stuck in named:
            assert f"rank {stuck} waits in {calls[stuck]}" in message, f"{context}\n{calls[stuck]}"
        kind, message, elapsed = later
        assert kind != "returned" and "deadlock" in message, f"rank {rank} later: {message}"
        assert elapsed < FOUND_S, f"rank {rank} later: {elapsed:.2f} s"


def test_allgather_object_against_barrier(make_job):
    """Horovod hangs here at N=3 (until its stall timeout, if any)."""
    pytest.importorskip("torch")
    n = 3
    job = make_job(n, env=LONG_STALL).start()
    calls = {0: "allgather of 'allgather_object.noname.0.size' (not submitted by "}
    calls.update({r: "barrier of 'barrier.noname.0' (not submitted by rank" for r in range(1, n)})
    check_deadlock(job.run(_object_vs_barrier, deadline=30), calls, everyone=False)


def _each_its_own():
    """Every rank in a different named collective: a blocking one, or synchronize()."""
    rank = rf.rank()
    x = np.arange(4, dtype=np.float32)
    if rank == 0:
        first = _outcome(lambda: rf.allreduce(x, name="only-0"))
    elif rank == 1:
        first = _outcome(lambda: rf.synchronize(rf.broadcast_async(x, 0, name="only-1")))
    else:
        first = _outcome(lambda: rf.allgather(x, name="only-2"))
    return first, _then_later_call()


@pytest.mark.parametrize("n", [2, 3])
def test_every_rank_in_a_different_collective(make_job, n):
    job = make_job(n, env=LONG_STALL).start()
    calls = {0: "allreduce of 'only-0'", 1: "broadcast of 'only-1'", 2: "allgather of 'only-2'"}
    # At N=3 any two are stuck on each other already: the third may come too late to be named.
    check_deadlock(job.run(_each_its_own, deadline=30), {r: calls[r] for r in range(n)}, n == 2)


_SETS: dict[int, rf.ProcessSet] = {}


def _add_set(ranks):
    process_set = rf.add_process_set(ranks)
    _SETS[process_set.process_set_id] = process_set
    return process_set.process_set_id


def _stuck_pair(set_id, token):
    """Ranks 0 and 1 wait in different collectives of their set while rank 2 stays out of
    ringflow (it waits in the store until they returned): 0 and 1 are stuck on each other."""
    store = harness.rank_store()
    if rf.rank() == 2:
        store.get(f"{token}/0", timeout_s=30)
        store.get(f"{token}/1", timeout_s=30)
        return None, _then_later_call()
    x = np.ones(3, np.int64)
    name = "pair-allreduce" if rf.rank() == 0 else "pair-allgather"
    fn = rf.allreduce if rf.rank() == 0 else rf.allgather
    first = _outcome(lambda: fn(x, name=name, process_set=_SETS[set_id]))
    store.set(f"{token}/{rf.rank()}", b"1")
    return first, _then_later_call()


def test_deadlock_in_part_of_the_job(make_job):
    """Only ranks 0 and 1 are stuck (rank 2 may still do anything): they raise at once, and
    rank 2's next call raises the same deadlock."""
    job = make_job(3, env=LONG_STALL).start()
    set_id = job.call(_add_set, [0, 1])[0]
    results = harness.values(job.run(_stuck_pair, set_id, f"pair-{time.monotonic_ns()}"))
    for rank, (first, later) in enumerate(results):
        if first is not None:
            kind, message, elapsed = first
            context = f"rank {rank}: {kind} after {elapsed:.2f} s: {message}"
            assert kind == "MismatchError" and elapsed < FOUND_S, context
            assert "ranks 0 and 1 wait in calls that can never complete" in message, context
            assert "rank 0 waits in allreduce of 'pair-allreduce'" in message, context
            assert "rank 1 waits in allgather of 'pair-allgather'" in message, context
        assert "deadlock" in later[1] and later[2] < FOUND_S, f"rank {rank}: {later}"


# -- no false positives ---------------------------------------------------------------------


def _shuffled_async(n_tensors, iterations, seed):
    """Async allreduces submitted in a per-rank random order, synchronized in another one (as
    autograd hooks and optimizers do); a blocking barrier now and then. The last rank computes
    a little before each submission, so the others wait on tensors it has not submitted yet.
    Exact sums back."""
    rng = random.Random(seed * 1000 + rf.rank())
    slow = rf.rank() == rf.size() - 1
    totals = []
    for step in range(iterations):
        names = [f"grad.{i}" for i in range(n_tensors)]
        rng.shuffle(names)
        handles = {}
        for name in names:
            end = time.monotonic() + (0.002 if slow else 0.0)
            while time.monotonic() < end:  # a backward pass computing the next gradient
                pass
            x = np.full(5, rf.rank() + int(name.split(".")[1]), np.int64)
            handles[name] = rf.allreduce_async(x, op=rf.Sum, name=name)
        rng.shuffle(names)
        results = {name: rf.synchronize(handles[name]).tolist() for name in names}
        totals.append([results[f"grad.{i}"][0] for i in range(n_tensors)])
        if step % 5 == 4:
            rf.barrier()
    return totals


@pytest.mark.parametrize("n", [2, 3])
def test_async_out_of_order_is_no_deadlock(pools, n):
    n_tensors, iterations = 12, 20
    expected = [[sum(range(n)) + n * i for i in range(n_tensors)]] * iterations
    for rank, totals in enumerate(pools.call(n, _shuffled_async, n_tensors, iterations, 7)):
        assert totals == expected, f"rank {rank}"


def _chain(set_id, busy_s):
    """Rank 0 waits on 'a' (everyone), rank 1 on 'b' (ranks 1 and 2), while rank 2 computes
    for a while: not a deadlock, since rank 2 is not waiting. Rank 2 then submits 'b' and 'a',
    rank 1 submits 'a' once 'b' is done, and everything completes."""
    x = np.full(3, rf.rank() + 1, np.int64)
    if rf.rank() == 2:
        end = time.monotonic() + busy_s  # the others' waits are announced within 50 ms
        while time.monotonic() < end:
            pass
    if rf.rank() >= 1:
        b = rf.allreduce(x, op=rf.Sum, name="b", process_set=_SETS[set_id]).tolist()
    else:
        b = None
    return b, rf.allreduce(x, op=rf.Sum, name="a").tolist()


def test_waits_on_a_busy_rank_are_no_deadlock(make_job):
    job = make_job(3, env=LONG_STALL).start()
    set_id = job.call(_add_set, [1, 2])[0]
    results = job.call(_chain, set_id, 0.3, deadline=30)
    assert results == [(None, [6] * 3), ([5] * 3, [6] * 3), ([5] * 3, [6] * 3)], results


def _two_threads(busy_s):
    """Each rank waits on one tensor in its main thread while a second thread, after some work,
    submits the tensor the other rank waits on: the check's assumption broken on purpose."""
    import threading

    x = np.full(3, rf.rank() + 1, np.int64)
    mine, theirs = ("a", "b") if rf.rank() == 0 else ("b", "a")
    results = {}

    def second_thread():
        end = time.monotonic() + busy_s  # long past the 50 ms after which waits are announced
        while time.monotonic() < end:
            pass
        results[theirs] = rf.allreduce(x, op=rf.Sum, name=theirs).tolist()

    helper = threading.Thread(target=second_thread)
    helper.start()
    results[mine] = _outcome(lambda: rf.allreduce(x, op=rf.Sum, name=mine))[0]
    helper.join()
    return results[mine], results[theirs]


def test_deadlock_check_can_be_turned_off(make_job):
    """With RINGFLOW_DEADLOCK_CHECK=0 a rank may submit from one thread while another waits:
    both waits complete (with the check on, this pattern is reported as a deadlock)."""
    job = make_job(2, env={**LONG_STALL, "RINGFLOW_DEADLOCK_CHECK": "0"}).start()
    assert job.call(_two_threads, 0.3, deadline=30) == [("returned", [3] * 3)] * 2
