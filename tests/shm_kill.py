"""A rank SIGKILLed while every rank loops over collectives on shared memory: the check that the
shared-memory tests (rings, bulletin, collective areas) share. Every survivor raises
PeerFailureError naming itself and the dead rank within DEAD_PEER_S, and /dev/shm keeps nothing
of the job."""

from __future__ import annotations

import signal
import time

import ringflow as rf
from tests import harness
from tests.test_failures import DEAD_PEER_S, names_dead_rank
from tests.test_shm_transport import _shm_segments


def sigkill_during_loop(job, victim, loop, *, min_step, deadline):
    """Runs ``loop(victim)`` on every rank of the started job; ``loop`` sets "test/looping" in the
    store once it runs on the victim and returns (steps done, the error it raised, anything).
    SIGKILLs the victim then, and checks the survivors and /dev/shm."""
    pids = [job.pid(r) for r in range(job.size)]
    job.submit(loop, victim)
    store = job.store_client()
    try:
        store.get("test/looping", timeout_s=60.0)
    finally:
        store.close()
    killed_at = time.monotonic()
    job.kill(victim)
    results = job.collect(deadline=deadline)
    assert time.monotonic() - killed_at < DEAD_PEER_S, harness.describe_all(results)
    for result in results:
        if result.rank == victim:
            assert result.died and result.exitcode == -signal.SIGKILL, result.describe()
            continue
        assert result.ok, result.describe()
        step, error = result.value[:2]
        assert step >= min_step and isinstance(error, rf.PeerFailureError), result.describe()
        assert f"rank {result.rank}" in str(error), result.describe()
        assert names_dead_rank(str(error), victim), result.describe()
    assert _shm_segments(pids) == []
    return results
