"""init / shutdown / init again, and what rank(), size(), local_rank() … report."""

from __future__ import annotations

import builtins
import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref


def _topology():
    return {
        "initialized": rf.is_initialized(),
        "rank": rf.rank(),
        "size": rf.size(),
        "local_rank": rf.local_rank(),
        "local_size": rf.local_size(),
        "cross_rank": rf.cross_rank(),
        "cross_size": rf.cross_size(),
    }


@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_topology_one_host(pools, n):
    """N ranks on one host: local = global, one node."""
    for rank, topo in enumerate(pools.call(n, _topology)):
        assert topo == {
            "initialized": True,
            "rank": rank,
            "size": n,
            "local_rank": rank,
            "local_size": n,
            "cross_rank": 0,
            "cross_size": 1,
        }, f"rank {rank}"


def _init_cycles(cycles):
    """Several init/shutdown cycles, each with a collective; records is_initialized around."""
    log = []
    for cycle in range(cycles):
        log.append(("before init", rf.is_initialized()))
        rf.init()
        log.append(("after init", rf.is_initialized()))
        x = np.full(3, rf.rank() + 10 * cycle, dtype=np.int64)
        log.append(("sum", rf.allreduce(x, op=rf.Sum).tolist()))
        log.append(("topology", (rf.rank(), rf.size(), rf.local_rank(), rf.local_size())))
        rf.shutdown()
        log.append(("after shutdown", rf.is_initialized()))
    return log


@pytest.mark.parametrize("n", [1, 3])
def test_init_shutdown_init(make_job, n):
    cycles = 3
    job = make_job(n, auto_init=False).start()
    logs = job.call(_init_cycles, cycles)
    for rank, log in enumerate(logs):
        expected = []
        for cycle in range(cycles):
            total = sum(r + 10 * cycle for r in range(n))
            expected += [
                ("before init", False),
                ("after init", True),
                ("sum", [total] * 3),
                ("topology", (rank, n, rank, n)),
                ("after shutdown", False),
            ]
        assert log == expected, f"rank {rank}"
    if n == 1:
        return  # a world of one has no peers to connect to, so nothing to publish
    # Every cycle published each rank's data address under its own generation.
    store = job.store_client()
    try:
        for generation in range(cycles):
            for rank in range(n):
                harness.data_address(store, generation, rank, timeout_s=5.0)
    finally:
        store.close()


_SINGLE = textwrap.dedent(
    """
    import json
    import numpy as np
    import ringflow as rf

    before = rf.is_initialized()
    rf.init()
    x = np.arange(5, dtype=np.float32)
    result = {
        "before": before,
        "topology": [rf.rank(), rf.size(), rf.local_rank(), rf.local_size(),
                     rf.cross_rank(), rf.cross_size()],
        "allreduce": rf.allreduce(x, op=rf.Sum).tolist(),
        "average": rf.allreduce(x).tolist(),
        "allgather": rf.allgather(x).tolist(),
        "broadcast": rf.broadcast(x, 0).tolist(),
    }
    rf.barrier()
    rf.shutdown()
    result["after"] = rf.is_initialized()
    print("RESULT " + json.dumps(result))
    """
)


def test_single_process_without_environment():
    """No launcher variables at all: a world of one."""
    proc = subprocess.run(
        [sys.executable, "-c", _SINGLE],
        env=harness.clean_env({"RINGFLOW_TIMEOUT": "20"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    values = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert result == {
        "before": False,
        "topology": [0, 1, 0, 1, 0, 1],
        "allreduce": values,
        "average": values,
        "allgather": values,
        "broadcast": values,
        "after": False,
    }


def test_exception_hierarchy_and_ops():
    assert issubclass(rf.Error, RuntimeError)
    for cls, builtin in [
        (rf.InvalidArgumentError, ValueError),
        (rf.MismatchError, rf.Error),
        (rf.TimeoutError, builtins.TimeoutError),
        (rf.PeerFailureError, ConnectionError),
    ]:
        assert issubclass(cls, rf.Error) and issubclass(cls, builtin), cls
    ops = [rf.Sum, rf.Average, rf.Min, rf.Max, rf.Product]
    assert all(isinstance(op, rf.ReduceOp) for op in ops)
    assert len(set(ops)) == 5


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_rank_zero_hosts_the_store(make_job):
    """Without RINGFLOW_STORE_EXTERNAL, rank 0 hosts the store at ADDR:PORT (the harness's own
    store stays unused)."""
    env = {"RINGFLOW_STORE_EXTERNAL": None, "RINGFLOW_STORE_PORT": str(_free_port())}
    job = make_job(3, env=env).start()
    for rank, topo in enumerate(job.call(_topology)):
        assert topo["rank"] == rank and topo["size"] == 3, topo
    totals = job.call(_sum_of_ranks)
    for rank, total in enumerate(totals):
        ref.assert_exact(total, np.full(4, 3, dtype=np.int32), f"rank {rank}")


def _sum_of_ranks():
    return rf.allreduce(np.full(4, rf.rank(), dtype=np.int32), op=rf.Sum)
