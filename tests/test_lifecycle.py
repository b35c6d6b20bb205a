"""init → shutdown → init in any pattern: generations belong to the job, not to each process.

Every init() of a job is a new generation, agreed through the store (job_generation.h): ranks
may have initialised different numbers of times, some ranks may start over while others stay
in (or out), and a replacement process joins the job's current generation. The rank-0-hosted
store (no launcher) is started afresh by every init(), and a rank that starts over waits for
rank 0's new one. An init() on a failed runtime says how to recover.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness


def _init(size=None):
    """init() as a world of `size` ranks (default: the job's), keeping this process's rank."""
    if size is not None:
        os.environ["RINGFLOW_SIZE"] = str(size)
    rf.init()
    return rf.rank(), rf.size()


def _restart(size=None):
    rf.shutdown()
    return _init(size)


def _sum(tag):
    """An exact int64 sum over the current world, and which ranks took part."""
    x = np.full(5, 1000 * tag + rf.rank(), np.int64)
    return rf.allreduce(x, op=rf.Sum, name=f"sum.{tag}").tolist(), rf.size()


def check_sum(values, tag, ranks):
    want = [sum(1000 * tag + r for r in ranks)] * 5
    for rank, (got, size) in zip(ranks, values):
        assert size == len(ranks), f"rank {rank}: world of {size}, expected {len(ranks)}"
        assert got == want, f"rank {rank}, tag {tag}: {got} != {want}"


def _sum_or_error(tag):
    try:
        return str(_sum(tag))
    except rf.PeerFailureError as error:
        return str(error)


def _generation():
    return rf._state.engine.generation


@pytest.mark.parametrize("n", [2, 3])
def test_every_rank_starts_over_twice(make_job, n):
    job = make_job(n, auto_init=False).start()
    job.call(_init)
    gens = []
    for tag in range(3):
        check_sum(job.call(_sum, tag), tag, range(n))
        gens.append(set(job.call(_generation)))
        job.call(_restart)
    assert all(len(g) == 1 for g in gens) and len(set.union(*gens)) == 3, gens


@pytest.mark.parametrize("n", [2, 3])
def test_some_ranks_start_over_as_a_smaller_world(make_job, n):
    """The last rank stays in the first generation while the others start over without it;
    it then finds itself alone (its collectives with them raise), and finally every rank starts
    over together again. The ranks end with different numbers of init() calls."""
    job = make_job(n, auto_init=False).start()
    last, others = n - 1, list(range(n - 1))
    job.call(_init)
    check_sum(job.call(_sum, 1), 1, range(n))
    # The others leave and meet again as a world of n - 1.
    job.call(_restart, n - 1, ranks=others)
    check_sum(job.call(_sum, 2, ranks=others), 2, others)
    left_alone = job.call(_sum_or_error, 3, ranks=[last])[0]
    assert "rank 0 shut down while 'sum.3' waits for it" in left_alone, left_alone
    # Everyone together again (the others: their third init, the last rank: its second).
    job.submit(_restart, n, ranks=others)
    job.submit(_restart, n, ranks=[last])
    harness.values(job.collect())
    check_sum(job.call(_sum, 4), 4, range(n))


def _solo_cycles(count):
    """init() and shutdown() as a world of one, `count` times (no store involved)."""
    size = os.environ["RINGFLOW_SIZE"]
    for _ in range(count):
        _init(1)
        rf.shutdown()
    os.environ["RINGFLOW_SIZE"] = size


@pytest.mark.parametrize("n", [2, 3])
def test_ranks_with_different_init_counts_meet(make_job, n):
    """Rank 0 has started and stopped three worlds of its own; at N=3 ranks 0 and 1 have also
    met twice as a world of two while rank 2 had not started at all. Then all n meet."""
    job = make_job(n, auto_init=False).start()
    job.call(_solo_cycles, 3, ranks=[0])
    if n == 3:
        pair = [0, 1]
        job.call(_init, 2, ranks=pair)
        check_sum(job.call(_sum, 1, ranks=pair), 1, pair)
        job.call(_restart, 2, ranks=pair)
        check_sum(job.call(_sum, 2, ranks=pair), 2, pair)
        job.call(rf.shutdown, ranks=pair)
    job.call(_init, n)
    check_sum(job.call(_sum, 3), 3, range(n))


def _fail_then_start_over(size):
    """A survivor: its call on the broken job raises; then it leaves and inits again."""
    try:
        rf.allreduce(np.ones(4), name="after-the-death")
        raise AssertionError("a call with a dead rank returned")
    except rf.PeerFailureError:
        pass
    return _restart(size)


@pytest.mark.parametrize(("n", "victim"), [(2, 1), (3, 0)])
def test_replacement_process_joins_the_restarted_job(make_job, n, victim):
    """A rank is killed; the survivors start over, and a new process started for that rank
    (it has never called init()) joins them."""
    job = make_job(n, auto_init=False).start()
    job.call(_init)
    check_sum(job.call(_sum, 1), 1, range(n))
    job.kill(victim)
    job.carry_on_without_the_dead()
    survivors = [r for r in range(n) if r != victim]
    job.submit(_fail_then_start_over, n, ranks=survivors)
    job.replace(victim)
    job.submit(_init, ranks=[victim])
    started = harness.values(job.collect())
    assert sorted(started) == [(r, n) for r in range(n)], started
    check_sum(job.call(_sum, 2), 2, range(n))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("n", [2, 3])
def test_rank_zero_hosted_store_restart(make_job, n):
    """Without a launcher's store, rank 0 hosts a new one at each init(). Ranks 1.. start over
    first and meet rank 0's old store, which refuses them (they used it); they join rank 0's
    next store once rank 0 starts over too."""
    env = {"RINGFLOW_STORE_EXTERNAL": None, "RINGFLOW_STORE_PORT": str(_free_port())}
    # Rank 0 logs at info: the refusals by its old store (normal operation, no warning).
    job = make_job(n, auto_init=False, env=env, rank_env={0: {"RINGFLOW_LOG_LEVEL": "info"}})
    job.start()
    job.call(_init)
    check_sum(job.call(_sum, 1), 1, range(n))
    rest = list(range(1, n))
    job.submit(_restart, ranks=rest)
    end = time.monotonic() + 60  # until rank 0's old store has refused one of them
    while "used this store in an earlier init()" not in job.log_tail(0):
        assert time.monotonic() < end, job.log_tail(0)
        time.sleep(0.05)
    job.submit(_restart, ranks=[0])
    harness.values(job.collect())
    check_sum(job.call(_sum, 2), 2, range(n))
    assert not [line for line in job.log_tail(0).splitlines() if "WARNING" in line], job.log_tail(0)


def _init_on_failed_runtime():
    with contextlib.suppress(rf.PeerFailureError):  # the dead peer fails the runtime
        rf.allreduce(np.ones(4), name="after-the-death")
    try:
        rf.init()
        outcome = "init() returned"
    except rf.Error as error:
        outcome = str(error)
    rf.shutdown()
    os.environ["RINGFLOW_SIZE"] = "1"
    rf.init()
    return outcome, rf.size(), rf.allreduce(np.arange(3.0), op=rf.Sum).tolist()


def test_init_on_a_failed_runtime_says_how_to_recover(make_job):
    job = make_job(2).start()
    job.call(_generation)  # both initialised
    job.kill(1)
    job.carry_on_without_the_dead()
    outcome, size, total = harness.values(job.run(_init_on_failed_runtime, ranks=[0]))[0]
    assert "call ringflow.shutdown() and then ringflow.init()" in outcome, outcome
    assert "rank 1" in outcome, outcome  # the failure itself is quoted
    assert (size, total) == (1, [0.0, 1.0, 2.0])


def test_generations_are_the_jobs(make_job):
    """The store's record: each generation's ranks published their addresses under the job's
    generation number, the same on every rank (harness.data_address reads them)."""
    n = 2
    job = make_job(n, auto_init=False).start()
    job.call(_init)
    first = set(job.call(_generation))
    job.call(_restart)
    second = set(job.call(_generation))
    assert len(first) == len(second) == 1 and first != second, (first, second)
    store = job.store_client()
    try:
        for generation in (*first, *second):
            for rank in range(n):
                harness.data_address(store, generation, rank, timeout_s=5.0)
    finally:
        store.close()
    assert sorted(first | second) == [0, 1], (first, second)  # a fresh store counts from 0
