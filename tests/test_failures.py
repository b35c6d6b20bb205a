"""A rank dies or stalls: every survivor raises rf.Error naming it; nothing hangs.

A dead peer is noticed from its sockets (EOF, reset), so survivors raise within DEAD_PEER_S
whatever RINGFLOW_TIMEOUT is; a rank that stays alive but never joins fails the others at the
timeout. Each test runs its own job (the communicator ends up poisoned), at N = 2 and 4.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests.test_failure_reports import _start_loop

TIMEOUT_S = 10.0
"""RINGFLOW_TIMEOUT of these jobs: larger than DEAD_PEER_S, so a death noticed late would show."""
SLACK_S = 10.0
DEAD_PEER_S = 5.0
"""The issue's bound: every survivor raises within this long of a peer's death."""
POISONED_S = 1.0
"""A call on a poisoned communicator raises at once (this allows for a loaded CI machine)."""


def _collective(kind, name):
    x = np.arange(1000, dtype=np.float32) + rf.rank()
    if kind == "allreduce":
        return rf.allreduce(x, op=rf.Sum, name=name)
    if kind == "broadcast":
        return rf.broadcast(x, 0, name=name)
    if kind == "allgather":
        return rf.allgather(x, name=name)
    if kind == "barrier":
        return rf.barrier()
    if kind == "recv":
        return rf.recv(x, rf.size() - 1)
    raise AssertionError(kind)


def _timed(kind, name):
    """(error or None, seconds the call took)."""
    start = time.monotonic()
    try:
        _collective(kind, name)
        error = None
    except rf.Error as exc:
        error = exc
    return error, time.monotonic() - start


def _warm_up_then(victim, how, kind):
    """One good collective; then the victim dies and the others try ``kind`` twice: both calls
    must raise (the second on a poisoned communicator). Then shutdown() must return (it may
    raise rf.Error) rather than hang."""
    rf.allreduce(np.ones(8, dtype=np.int32), op=rf.Sum, name="warm-up")
    if rf.rank() == victim:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    attempts = (_timed(kind, "after-death"), _timed(kind, "again"))
    with contextlib.suppress(rf.Error):
        rf.shutdown()
    return attempts


def check_survivors(results, victim, expected_exit):
    for result in results:
        if result.rank == victim:
            assert result.died and result.exitcode == expected_exit, result.describe()
            continue
        assert result.ok, result.describe()
        for attempt, (error, elapsed) in zip(("first", "second"), result.value):
            context = f"rank {result.rank}, {attempt} call after rank {victim} died"
            assert isinstance(error, rf.Error), f"{context}: no error ({elapsed:.1f} s)"
            bound = DEAD_PEER_S if attempt == "first" else POISONED_S
            assert elapsed < bound, f"{context}: took {elapsed:.1f} s: {error}"
            assert f"rank {result.rank}" in str(error), f"{context}: {error}"
            assert names_dead_rank(str(error), victim), f"{context}: {error}"


def names_dead_rank(message, victim):
    """Whether the message says that the victim's connection failed (directly, through a
    peer's abort, or as the job's first failure)."""
    return any(
        phrase in message
        for phrase in (
            f"the connection to rank {victim} was closed",
            f"receiving from rank {victim} failed",
            f"sending to rank {victim} failed",
        )
    )


@pytest.mark.parametrize("kind", ["allreduce", "broadcast", "allgather", "barrier"])
@pytest.mark.parametrize("n", [2, 4])
def test_rank_killed_before_collective(make_job, n, kind):
    victim = n - 1
    job = make_job(n, rank_timeout=TIMEOUT_S).start()
    results = job.run(_warm_up_then, victim, "sigkill", kind)
    check_survivors(results, victim, -signal.SIGKILL)


@pytest.mark.parametrize("n", [2, 4])
def test_rank_exits_without_shutdown(make_job, n):
    job = make_job(n, rank_timeout=TIMEOUT_S).start()
    results = job.run(_warm_up_then, 1, "exit", "allreduce")
    check_survivors(results, 1, 3)


@pytest.mark.parametrize("n", [2, 4])
def test_killed_sender_fails_waiting_receiver(make_job, n):
    """recv from a rank that dies before sending."""
    job = make_job(n, rank_timeout=TIMEOUT_S).start()
    results = job.run(_warm_up_then, n - 1, "sigkill", "recv")
    check_survivors(results, n - 1, -signal.SIGKILL)


@pytest.mark.parametrize("n", [2, 4])
def test_rank_killed_from_outside_mid_job(make_job, n):
    """The parent SIGKILLs a rank while every rank loops over large allreduces."""
    victim = 1
    job = make_job(n, rank_timeout=TIMEOUT_S).start()
    _start_loop(job, victim)
    killed_at = time.monotonic()
    job.kill(victim)
    results = job.collect(deadline=TIMEOUT_S + 30)
    assert time.monotonic() - killed_at < DEAD_PEER_S, harness.describe_all(results)
    for result in results:
        if result.rank == victim:
            assert result.died and result.exitcode == -signal.SIGKILL, result.describe()
        else:
            assert result.ok, result.describe()
            step, error, _ = result.value
            assert step >= 3 and isinstance(error, rf.Error), result.describe()
            assert f"rank {result.rank}" in str(error), result.describe()
            assert names_dead_rank(str(error), victim), result.describe()


@pytest.mark.parametrize("n", [2, 4])
def test_rank_killed_while_others_negotiate(make_job, n):
    """The others wait for the last rank to join an allreduce; it is killed instead."""
    victim = n - 1
    job = make_job(n, rank_timeout=TIMEOUT_S).start()
    job.call(_collective, "allreduce", "warm-up")
    survivors = list(range(victim))
    job.submit(_timed, "allreduce", "never-joined", ranks=survivors)
    job.kill(victim)
    for result in job.collect(ranks=survivors, deadline=TIMEOUT_S + 30):
        error, elapsed = result.value
        assert isinstance(error, rf.Error), result.describe()
        assert elapsed < DEAD_PEER_S, result.describe()
        assert names_dead_rank(str(error), victim), result.describe()


@pytest.mark.parametrize("n", [2, 4])
def test_stalled_rank_times_out(make_job, n):
    """The last rank stays alive but never joins: the others raise at RINGFLOW_TIMEOUT, naming
    the tensor and the rank that is missing (DESIGN.md, stall inspector)."""
    timeout, missing = 3.0, n - 1
    job = make_job(n, rank_timeout=timeout).start()
    job.call(_collective, "allreduce", "warm-up")
    results = job.run(_timed, "allreduce", "stalled.tensor", ranks=range(missing), deadline=60)
    for result in results:
        error, elapsed = result.value
        assert isinstance(error, rf.Error), result.describe()
        assert "stalled.tensor" in str(error), result.describe()
        assert f"rank {result.rank}" in str(error), result.describe()
        assert f"not by rank {missing}" in str(error), f"missing rank not named: {error}"
        assert timeout - 0.5 < elapsed < timeout + SLACK_S, result.describe()


def _hang_on(rank):
    if rf.rank() == rank:
        threading.Event().wait()  # never set: a stand-in for a hung collective
    return rf.rank()


def test_harness_kills_a_hung_job(make_job):
    """The harness itself: past the deadline it names the silent rank and kills the job."""
    job = make_job(2).start()
    with pytest.raises(harness.HarnessTimeout, match=r"ranks \[1\] of 2 did not answer"):
        job.run(_hang_on, 1, deadline=3)
    assert job.broken
    assert not job.alive(0) and not job.alive(1)
