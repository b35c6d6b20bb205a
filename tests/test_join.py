"""join(): ranks with fewer batches finish early; the others' collectives complete, with the
joined ranks standing in (zeros, no rows) and Average over the ranks that brought data."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref

N = 3
BATCHES = [4, 1, 2]  # rank r runs BATCHES[r] steps, then joins


def _x(rank: int, step: int, rows: int = 5) -> np.ndarray:
    return np.arange(rows * 2, dtype=np.float64).reshape(rows, 2) + 10 * rank + step


def _uneven() -> dict:
    rank = rf.rank()
    out: dict = {}
    for step in range(BATCHES[rank]):
        out[f"avg{step}"] = rf.allreduce(_x(rank, step), op=rf.Average, name=f"avg{step}")
        out[f"sum{step}"] = rf.allreduce(_x(rank, step, 1)[0], op=rf.Sum, name=f"sum{step}")
        out[f"ag{step}"] = rf.allgather(_x(rank, step, rank + 1), name=f"ag{step}")
        out[f"rs{step}"] = rf.reducescatter(_x(rank, step), op=rf.Sum, name=f"rs{step}")
    out["last"] = rf.join()
    out["after"] = rf.allreduce(np.ones(3), op=rf.Sum, name="after")
    return out


@pytest.fixture(scope="module")
def join_pools():
    from tests import harness

    pools = harness.Pools()
    yield pools
    pools.close()


def test_uneven_batches(join_pools):
    results = join_pools.call(N, _uneven)
    for rank, out in enumerate(results):
        for step in range(BATCHES[rank]):
            active = [r for r in range(N) if BATCHES[r] > step]
            want = sum(_x(r, step) for r in active) / len(active)
            ref.assert_exact(out[f"avg{step}"], want, f"rank {rank} step {step} average")
            want = sum(_x(r, step, 1)[0] for r in active)
            ref.assert_exact(out[f"sum{step}"], want, f"rank {rank} step {step} sum")
            want = np.concatenate([_x(r, step, r + 1) for r in active])
            ref.assert_exact(out[f"ag{step}"], want, f"rank {rank} step {step} allgather")
            full = sum(_x(r, step) for r in active)
            want = ref.reducescatter_block(full, N, rank)
            ref.assert_exact(out[f"rs{step}"], want, f"rank {rank} step {step} reducescatter")
        assert out["last"] == BATCHES.index(max(BATCHES)), f"rank {rank}: last {out['last']}"
        ref.assert_exact(out["after"], np.full(3, float(N)), f"rank {rank}: after join")


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
