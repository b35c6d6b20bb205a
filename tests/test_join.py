"""join(): ranks with fewer batches finish early; the others' collectives complete, with the
joined ranks standing in (zeros, no rows). Average divides by the whole set, as Horovod's does
(joined ranks count as zeros); RINGFLOW_JOIN_AVERAGE=contributors divides by the ranks that
brought data instead, and must be set alike on every rank."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref
from tests.test_engine_setup import _init_error

N = 3
BATCHES = {2: [3, 1], 3: [4, 1, 2]}  # rank r runs BATCHES[n][r] steps, then joins


def _x(rank: int, step: int, rows: int = 5) -> np.ndarray:
    return np.arange(rows * 2, dtype=np.float64).reshape(rows, 2) + 10 * rank + step


def _ints(rank: int, step: int) -> np.ndarray:
    return np.array([7, -7, 5, 1, -1], dtype=np.int32) * (rank + 1) + step


def _uneven() -> dict:
    rank = rf.rank()
    out: dict = {}
    for step in range(BATCHES[rf.size()][rank]):
        out[f"avg{step}"] = rf.allreduce(_x(rank, step), op=rf.Average, name=f"avg{step}")
        out[f"iavg{step}"] = rf.allreduce(_ints(rank, step), op=rf.Average, name=f"iavg{step}")
        out[f"sum{step}"] = rf.allreduce(_x(rank, step, 1)[0], op=rf.Sum, name=f"sum{step}")
        out[f"ag{step}"] = rf.allgather(_x(rank, step, rank + 1), name=f"ag{step}")
        out[f"rs{step}"] = rf.reducescatter(_x(rank, step), op=rf.Sum, name=f"rs{step}")
        out[f"rsavg{step}"] = rf.reducescatter(_x(rank, step), op=rf.Average, name=f"rsa{step}")
    out["last"] = rf.join()
    out["after"] = rf.allreduce(np.ones(3), op=rf.Sum, name="after")
    return out


def check_uneven(results: list, divide_by_contributors: bool) -> None:
    n = len(results)
    batches = BATCHES[n]
    for rank, out in enumerate(results):
        for step in range(batches[rank]):
            active = [r for r in range(n) if batches[r] > step]
            divisor = len(active) if divide_by_contributors else n
            context = f"rank {rank} step {step} of {n}"
            full = sum(_x(r, step) for r in active)
            ref.assert_exact(out[f"avg{step}"], ref.scale(full, 1 / divisor), f"{context} avg")
            total = sum(_ints(r, step) for r in active)
            want = ref.scale(total, 1 / divisor)  # float64 product, truncated
            ref.assert_exact(out[f"iavg{step}"], want, f"{context} integer average")
            want = sum(_x(r, step, 1)[0] for r in active)
            ref.assert_exact(out[f"sum{step}"], want, f"{context} sum")
            want = np.concatenate([_x(r, step, r + 1) for r in active])
            ref.assert_exact(out[f"ag{step}"], want, f"{context} allgather")
            want = ref.reducescatter_block(full, n, rank)
            ref.assert_exact(out[f"rs{step}"], want, f"{context} reducescatter")
            want = ref.scale(want, 1 / divisor)
            ref.assert_exact(out[f"rsavg{step}"], want, f"{context} reducescatter average")
        assert out["last"] == batches.index(max(batches)), f"rank {rank}: last {out['last']}"
        ref.assert_exact(out["after"], np.full(3, float(n)), f"rank {rank}: after join")


@pytest.fixture(scope="module")
def join_pools():
    from tests import harness

    pools = harness.Pools()
    yield pools
    pools.close()


@pytest.mark.parametrize("n", [2, 3])
def test_uneven_batches(join_pools, n):
    """Average over the whole set: joined ranks count as zeros (Horovod)."""
    check_uneven(join_pools.call(n, _uneven), divide_by_contributors=False)


def test_average_over_contributors_opt_in(make_job):
    """RINGFLOW_JOIN_AVERAGE=contributors: Average divides by the ranks that brought data."""
    job = make_job(3, env={"RINGFLOW_JOIN_AVERAGE": "contributors"}).start()
    check_uneven(job.call(_uneven), divide_by_contributors=True)


def test_join_average_must_agree(make_job):
    job = make_job(2, auto_init=False, rank_env={1: {"RINGFLOW_JOIN_AVERAGE": "contributors"}})
    for rank, message in enumerate(job.start().call(_init_error)):
        assert message.startswith(f"rank {rank}: init()"), message
        assert "RINGFLOW_JOIN_AVERAGE" in message, message
        assert "rank 0 size" in message and "rank 1 contributors" in message, message


def _broadcast_from_joined() -> str:
    if rf.rank() == 1:
        rf.join()
        return "joined"
    try:
        rf.broadcast(np.ones(2), root_rank=1, name="from.joined")
        message = "broadcast succeeded"
    except rf.InvalidArgumentError as error:
        message = str(error)
    rf.join()
    return message


def test_broadcast_from_a_joined_root_fails(join_pools):
    results = join_pools.call(N, _broadcast_from_joined)
    assert results[1] == "joined"
    for rank in (0, 2):
        assert "root rank 1 has joined" in results[rank], results[rank]
