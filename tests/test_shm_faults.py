"""Faults over the shared-memory transport (issue 13): a rank killed mid-collective or before
one makes every survivor raise rf.PeerFailureError naming it within 5 s (the pair's TCP
connection is the liveness channel: a futex sleeper looks at it every 50 ms), a stalled or
SIGSTOPped rank is named at the timeout with the flight recorder intact, and /dev/shm stays
empty throughout.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import ringflow as rf
from tests.shm_kill import sigkill_during_loop
from tests.test_failure_reports import _loop_until_error
from tests.test_failures import (
    _collective,
    _timed,
    _warm_up_then,
    check_survivors,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host")

TIMEOUT_S = 10.0
"""RINGFLOW_TIMEOUT: above DEAD_PEER_S, so a death noticed only at the timeout would show."""
ENV = {"RINGFLOW_TRANSPORT": "shm", "RINGFLOW_SHM_RING_BYTES": "65536"}


def _transports():
    return rf.peer_transports()


def _shm_job(make_job, n, **kwargs):
    job = make_job(n, env=ENV, rank_timeout=kwargs.pop("rank_timeout", TIMEOUT_S), **kwargs)
    job.start()
    for rank, kinds in enumerate(job.call(_transports)):
        assert kinds == ["self" if r == rank else "shm" for r in range(n)], kinds
    return job


@pytest.mark.parametrize("n", [2, 4])
def test_sigkill_mid_collective(make_job, n):
    """The parent SIGKILLs a rank while all loop over allreduces larger than the rings."""
    job = _shm_job(make_job, n)
    sigkill_during_loop(job, 1, _loop_until_error, min_step=3, deadline=TIMEOUT_S + 30)


@pytest.mark.parametrize(("kind", "how"), [("allreduce", "sigkill"), ("recv", "exit")])
def test_dead_peer_before_collective(make_job, kind, how):
    """The others are asleep on the futex when the victim dies, or block in recv from it."""
    n = 3
    job = _shm_job(make_job, n)
    results = job.run(_warm_up_then, n - 1, how, kind)
    check_survivors(results, n - 1, -signal.SIGKILL if how == "sigkill" else 3)


def _stall_then_report(name):
    error, elapsed = _timed("allreduce", name)
    return error, elapsed, rf.flight_recorder()


def test_stalled_rank_named_at_timeout(make_job):
    """Alive but silent (SIGSTOP would look the same): named at RINGFLOW_TIMEOUT, and the
    flight recorder holds the operation."""
    timeout, n = 3.0, 2
    job = _shm_job(make_job, n, rank_timeout=timeout)
    job.call(_collective, "allreduce", "warm-up")
    for result in job.run(_stall_then_report, "stalled.tensor", ranks=[0], deadline=60):
        error, elapsed, recorder = result.value
        assert isinstance(error, rf.Error), result.describe()
        assert "stalled.tensor" in str(error) and "not by rank 1" in str(error), error
        assert timeout - 0.5 < elapsed < timeout + 10, result.describe()
        names = [entry["name"] for entry in recorder["entries"]]
        assert "stalled.tensor" in names and recorder["error"], recorder


def _big_allreduce(name):
    x = np.ones(300_000, dtype=np.float32)  # 1.2 MB: fills the 64 KiB ring, then waits on it
    start = time.monotonic()
    try:
        rf.allreduce(x, op=rf.Sum, name=name)
    except rf.Error as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def test_sigstop_named_at_timeout(make_job):
    """A stopped peer holds no socket open or closed: the wait ends at RINGFLOW_TIMEOUT, and the
    error names the rank it waited on."""
    timeout, n = 3.0, 2
    job = _shm_job(make_job, n, rank_timeout=timeout)
    job.call(_collective, "allreduce", "warm-up")
    os.kill(job.pid(1), signal.SIGSTOP)  # not job.kill: rank 0 must still take requests
    try:
        for result in job.run(_big_allreduce, "stopped.peer", ranks=[0], deadline=60):
            error, elapsed = result.value
            assert isinstance(error, rf.TimeoutError), result.describe()
            assert "rank 1" in str(error), error
            assert timeout - 0.5 < elapsed < timeout + 10, result.describe()
    finally:
        job.kill(1, signal.SIGKILL)
