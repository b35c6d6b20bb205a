"""ringflow.ray.RayExecutor on a real local Ray cluster (one for the whole file)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (ringflow[ray])")

from ringflow.ray import RayExecutor, RayJobError  # noqa: E402

WORKERS = 3  # odd on purpose


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    # Ray's session files in a directory of our own (short: Ray puts sockets there), removed after.
    temp = tempfile.mkdtemp(prefix="rf-ray-")
    # Room for a second, 2-worker executor beside this one.
    ray.init(num_cpus=WORKERS + 2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    executor = RayExecutor(num_workers=WORKERS, cpus_per_worker=1)
    try:
        executor.start()
        yield executor
    finally:
        executor.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def topology(a: int, b: int = 0) -> dict[str, Any]:
    import ringflow as rf

    rf.init()
    found = {
        "rank": rf.rank(),
        "size": rf.size(),
        "local_rank": rf.local_rank(),
        "local_size": rf.local_size(),
        "cross_size": rf.cross_size(),
        "pid": os.getpid(),
        "value": a * rf.rank() + b,
    }
    rf.shutdown()
    return found


@pytest.mark.timeout(120)
def test_results_in_rank_order(executor):
    found = executor.run(topology, args=(10,), kwargs={"b": 1})
    assert [t["rank"] for t in found] == list(range(WORKERS))
    assert [t["value"] for t in found] == [1, 11, 21]
    # One Ray node: one host, local ranks in rank order.
    assert [t["local_rank"] for t in found] == list(range(WORKERS))
    assert {(t["size"], t["local_size"], t["cross_size"]) for t in found} == {(WORKERS, WORKERS, 1)}
    assert len({t["pid"] for t in found} | {os.getpid()}) == WORKERS + 1  # one actor per rank


def collectives(sizes: list[int]) -> int:
    """Exact allreduce / allgather / broadcast against numpy, for each length."""
    import ringflow as rf

    rf.init()
    rank, size = rf.rank(), rf.size()
    checks = 0
    for n in sizes:
        for dtype in (np.float32, np.int64):

            def part(r: int, n: int = n, dtype: Any = dtype) -> np.ndarray:
                return (np.arange(n) * (r + 2) - r).astype(dtype)  # integers: exact sums

            total = rf.allreduce(part(rank), op=rf.Sum, name=f"sum.{n}.{dtype.__name__}")
            assert np.array_equal(total, np.sum([part(r) for r in range(size)], axis=0))
            assert total.dtype == dtype
            rows = np.full((2 * rank + n, 3), rank, dtype)  # uneven: rank r gives 2r + n rows
            gathered = rf.allgather(rows, name=f"gather.{n}.{dtype.__name__}")
            expect = np.concatenate([np.full((2 * r + n, 3), r, dtype) for r in range(size)])
            assert np.array_equal(gathered, expect)
            sent = rf.broadcast(part(rank), root_rank=1, name=f"bcast.{n}.{dtype.__name__}")
            assert np.array_equal(sent, part(1))
            checks += 3
    rf.shutdown()
    return checks


@pytest.mark.timeout(120)
def test_collectives_exact(executor):
    assert executor.run(collectives, args=([0, 1, 5, 1001],)) == [24] * WORKERS


def fail_on_rank_1() -> None:
    import ringflow as rf

    rf.init()
    if rf.rank() == 1:
        raise ValueError("rank one gives up")
    rf.allreduce(np.ones(4), name="never_completes")


@pytest.mark.timeout(60)
def test_a_failing_rank_is_named_and_the_executor_recovers(executor):
    start = time.monotonic()
    with pytest.raises(RayJobError, match=r"rank 1 .*ValueError: rank one gives up") as raised:
        executor.run(fail_on_rank_1)
    assert raised.value.rank == 1
    assert time.monotonic() - start < 15
    # The others left that job too: the next run is a fresh job on the same actors.
    assert [t["rank"] for t in executor.run(topology, args=(0,))] == list(range(WORKERS))


def fail_on_rank_0_while_rank_1_sleeps() -> None:
    import ringflow as rf

    rf.init()
    if rf.rank() == 0:
        raise RuntimeError("rank zero gives up")
    time.sleep(120)  # outside ringflow: nothing but the executor can end it


@pytest.mark.timeout(60)
def test_a_rank_stuck_after_a_failure_is_killed(executor):
    other = RayExecutor(num_workers=2, failure_grace_s=1.0)
    other.start()
    try:
        start = time.monotonic()
        with pytest.raises(RayJobError, match=r"rank 0 .*RuntimeError: rank zero gives up"):
            other.run(fail_on_rank_0_while_rank_1_sleeps)
        assert time.monotonic() - start < 15
        with pytest.raises(RuntimeError, match="not started"):  # its actors are gone
            other.run(topology, args=(0,))
    finally:
        other.shutdown()


def test_too_many_workers_fail_to_start(executor):
    extra = RayExecutor(num_workers=8, start_timeout=1.0)
    with pytest.raises(RuntimeError, match="could not reserve 8 x"):
        extra.start()
    assert extra._actors == [] and extra._group is None  # nothing left reserved


def test_ranks_are_grouped_by_node():
    # Bundles land on nodes A, B, A, B, C: ranks go A, A, B, B, C (the local ranks contiguous).
    from ringflow.ray import _rank_envs, _ranked

    places = [("A", "10.0.0.1"), ("B", "10.0.0.2"), ("A", "10.0.0.1"), ("B", "10.0.0.2")]
    places.append(("C", "10.0.0.3"))
    actors, nodes, store_host = _ranked(list("01234"), places, driver=("A", "10.0.0.1"))
    assert actors == list("02134") and nodes == list("AABBC")
    assert store_host == "10.0.0.1"  # other nodes must reach the driver: not loopback
    envs = _rank_envs(nodes, store_host, 4242, "s", "job")
    local = [(e["RINGFLOW_LOCAL_RANK"], e["RINGFLOW_LOCAL_SIZE"]) for e in envs]
    assert local == [("0", "2"), ("1", "2"), ("0", "2"), ("1", "2"), ("0", "1")]
    assert [e["RINGFLOW_RANK"] for e in envs] == list("01234")
    assert {e["RINGFLOW_HOST_ID"] for e in envs} == {"ray-node:A", "ray-node:B", "ray-node:C"}
    # Everything on the driver's node: the store stays on loopback.
    assert _ranked(["x"], [("A", "10.0.0.1")], driver=("A", "10.0.0.1"))[2] == "127.0.0.1"
