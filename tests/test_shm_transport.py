"""The shared-memory transport (issue 13): every collective exact against numpy over shm at
N = 2, 3, 4 (sizes 0, 1, odd, not divisible by N, larger than the ring), the per-pair choice
(RINGFLOW_TRANSPORT=auto|tcp|shm, mixed shm and TCP pairs, netlab namespaces of one machine),
/dev/shm left empty (segments are unlinked once mapped, so even a SIGKILL leaves nothing; a full
/dev/shm falls back to TCP or fails clearly), and hostile frames in the ring.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ringflow as rf
from tests import harness, netlab
from tests.test_hostile_clients import UNTOUCHED, _frame

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this host")

RING_BYTES = 64 * 1024
"""Small rings, so the large sizes wrap them many times (the default is 1 MiB)."""
LARGE = 100_001
"""Elements: 400 KB of float32, over six rings' worth, and odd."""
SHM_ENV = {"RINGFLOW_TRANSPORT": "shm", "RINGFLOW_SHM_RING_BYTES": str(RING_BYTES)}
DTYPES = ("float32", "int64")


def _sizes(n):
    return [0, 1, 7, 1001, 1000 * n + 1, LARGE]


def _input(rank, size, dtype_name, salt=0):
    """Integers small enough that every sum is exact in every dtype used here."""
    values = (np.arange(size, dtype=np.int64) * (rank + 3) + 7 * rank + salt) % 1001 - 500
    return values.astype(dtype_name)


def _splits(rank, n, rows):
    """Uneven alltoall splits that sum to rows (some zero)."""
    weights = [(rank + j) % 3 for j in range(n)]
    total = sum(weights) or 1
    splits = [rows * w // total for w in weights]
    splits[-1] += rows - sum(splits)
    return splits


def _shm_segments(pids):
    """Files in /dev/shm made by these processes (segments are named ringflow-<pid>-...)."""
    prefixes = tuple(f"ringflow-{pid}-" for pid in pids)
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(prefixes))


# -- rank functions -------------------------------------------------------------------------------


def _every_collective(sizes, dtypes):
    n, me = rf.size(), rf.rank()
    out = {"transports": rf.peer_transports()}
    for dtype_name in dtypes:
        for size in sizes:
            key = f"{dtype_name}.{size}"
            x = _input(me, size, dtype_name)
            for op in ("Sum", "Min", "Max"):
                out[f"allreduce.{op}.{key}"] = rf.allreduce(
                    x, op=getattr(rf, op), name=f"ar{op}{key}"
                )
            out[f"broadcast.{key}"] = rf.broadcast(x.copy(), n - 1, name=f"bc{key}")
            uneven = _input(me, size + me, dtype_name)  # allgatherv: every rank its own length
            out[f"allgather.{key}"] = rf.allgather(uneven, name=f"ag{key}")
            out[f"reducescatter.{key}"] = rf.reducescatter(x, op=rf.Sum, name=f"rs{key}")
            received, _ = rf.alltoall(x, splits=_splits(me, n, size), name=f"a2a{key}")
            out[f"alltoall.{key}"] = received
            # The fused and async engine paths: three tensors in one group, then async ones.
            group = [_input(me, size, dtype_name, salt) for salt in (1, 2, 3)]
            out[f"grouped.{key}"] = rf.grouped_allreduce(group, op=rf.Sum, name=f"g{key}")
            handles = [
                rf.allreduce_async(t, op=rf.Sum, name=f"async{salt}.{key}")
                for salt, t in enumerate(group)
            ]
            out[f"async.{key}"] = [rf.synchronize(h) for h in handles]
            if me == 0:
                rf.send(x, n - 1, name=f"p2p{key}")
            elif me == n - 1:
                out[f"p2p.{key}"] = rf.recv(np.empty_like(x), 0, name=f"p2p{key}")
    return out


def _transports_and_sum():
    x = _input(rf.rank(), 1001, "int64")
    return rf.peer_transports(), rf.allreduce(x, op=rf.Sum, name="selection")


def _init_error():
    try:
        rf.init()
    except rf.Error as exc:
        return type(exc).__name__, str(exc)
    return None


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shm_jobs():
    jobs = {}
    yield lambda n: jobs.setdefault(n, harness.Job(n, env=SHM_ENV).start())
    for job in jobs.values():
        job.close()


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_collective_exact_over_shm(shm_jobs, n):
    job = shm_jobs(n)
    sizes = _sizes(n)
    results = job.call(_every_collective, sizes, DTYPES)
    for rank, got in enumerate(results):
        assert got["transports"] == ["self" if r == rank else "shm" for r in range(n)], got
    for dtype_name in DTYPES:
        for size in sizes:
            key = f"{dtype_name}.{size}"
            inputs = [_input(r, size, dtype_name) for r in range(n)]
            stacked = np.stack(inputs)
            total = stacked.sum(axis=0, dtype=np.int64).astype(dtype_name)
            expected = {
                "Sum": total,
                "Min": stacked.min(axis=0),
                "Max": stacked.max(axis=0),
            }
            gathered = np.concatenate([_input(r, size + r, dtype_name) for r in range(n)])
            groups = [
                sum(_input(r, size, dtype_name, salt).astype(np.int64) for r in range(n))
                for salt in (1, 2, 3)
            ]
            for rank, got in enumerate(results):
                context = f"N={n} rank {rank} {key}"
                for op, want in expected.items():
                    np.testing.assert_array_equal(got[f"allreduce.{op}.{key}"], want, context)
                np.testing.assert_array_equal(got[f"broadcast.{key}"], inputs[n - 1], context)
                np.testing.assert_array_equal(got[f"allgather.{key}"], gathered, context)
                block = np.array_split(total, n)[rank]
                np.testing.assert_array_equal(got[f"reducescatter.{key}"], block, context)
                parts = []
                for source in range(n):
                    splits = _splits(source, n, size)
                    start = sum(splits[:rank])
                    parts.append(inputs[source][start : start + splits[rank]])
                np.testing.assert_array_equal(
                    got[f"alltoall.{key}"], np.concatenate(parts), context
                )
                for fused in (got[f"grouped.{key}"], got[f"async.{key}"]):
                    for value, want in zip(fused, groups):
                        np.testing.assert_array_equal(value, want.astype(dtype_name), context)
            np.testing.assert_array_equal(results[n - 1][f"p2p.{key}"], inputs[0], key)


def test_mixed_shm_and_tcp_pairs(make_job):
    """Rank 2 forces TCP: pair 0-1 shares memory, the others use sockets, in one transport
    (its waits sleep in epoll, woken by doorbells from the shm peer)."""
    n = 3
    env = {**SHM_ENV, "RINGFLOW_TRANSPORT": "auto"}
    job = make_job(n, env=env, rank_env={2: {"RINGFLOW_TRANSPORT": "tcp"}}).start()
    sizes = [0, 1, 7, LARGE]
    results = job.call(_every_collective, sizes, ("float32",))
    assert [got["transports"] for got in results] == [
        ["self", "shm", "tcp"],
        ["shm", "self", "tcp"],
        ["tcp", "tcp", "self"],
    ]
    for size in sizes:
        inputs = [_input(r, size, "float32") for r in range(n)]
        total = np.stack(inputs).sum(axis=0)
        for rank, got in enumerate(results):
            np.testing.assert_array_equal(got[f"allreduce.Sum.float32.{size}"], total)
            np.testing.assert_array_equal(got[f"broadcast.float32.{size}"], inputs[n - 1])
            block = np.array_split(total, n)[rank]
            np.testing.assert_array_equal(got[f"reducescatter.float32.{size}"], block)


@pytest.mark.parametrize(
    ("transport", "expected"), [(None, "shm"), ("auto", "shm"), ("tcp", "tcp"), ("shm", "shm")]
)
def test_transport_selection(make_job, transport, expected):
    """auto (the default) shares memory between ranks of one host; tcp forces sockets."""
    n = 3
    job = make_job(n, env={"RINGFLOW_TRANSPORT": transport}).start()
    total = sum(_input(r, 1001, "int64") for r in range(n))
    for rank, (kinds, result) in enumerate(job.call(_transports_and_sum)):
        assert kinds == ["self" if r == rank else expected for r in range(n)]
        np.testing.assert_array_equal(result, total)


def test_unknown_transport_is_an_error(make_job):
    job = make_job(2, auto_init=False, env={"RINGFLOW_TRANSPORT": "carrier-pigeon"}).start()
    for name, message in job.call(_init_error):
        assert name == "InvalidArgumentError", (name, message)
        assert "RINGFLOW_TRANSPORT=carrier-pigeon is not one of auto, tcp, shm" in message


def test_dev_shm_empty_while_running_and_after(make_job):
    """Segments are unlinked once every peer has mapped them: none is left during the job, at
    the end, or after a SIGKILL."""
    job = make_job(3, env=SHM_ENV).start()
    pids = [job.pid(r) for r in range(3)]
    kinds, _ = job.call(_transports_and_sum)[0]
    assert kinds == ["self", "shm", "shm"]
    assert _shm_segments(pids) == []
    job.kill(2, signal.SIGKILL)
    assert _shm_segments(pids) == []
    job.broken = True
    job.close()
    assert _shm_segments(pids) == []


@pytest.mark.parametrize(("transport", "falls_back"), [("auto", True), ("shm", False)])
def test_full_dev_shm(make_job, transport, falls_back):
    """Rings larger than /dev/shm: posix_fallocate fails up front (never a SIGBUS later); auto
    falls back to TCP with a warning, shm raises naming the cause."""
    free = os.statvfs("/dev/shm")
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    env = {"RINGFLOW_TRANSPORT": transport, "RINGFLOW_SHM_RING_BYTES": str(too_big)}
    if falls_back:
        job = make_job(2, env=env).start()
        for rank, (kinds, _) in enumerate(job.call(_transports_and_sum)):
            assert kinds == ["self" if r == rank else "tcp" for r in range(2)]
        assert "cannot reserve" in job.log_tail(0)
        assert _shm_segments([job.pid(0), job.pid(1)]) == []
    else:
        job = make_job(2, auto_init=False, env=env).start()
        for name, message in job.call(_init_error):
            assert name == "InvalidArgumentError", (name, message)
            assert "RINGFLOW_TRANSPORT=shm" in message and "cannot reserve" in message, message


_LAB_RANK = """
import json, numpy as np, ringflow as rf
rf.init()
x = np.arange(1001, dtype=np.int64) * (rf.rank() + 1)
print(json.dumps([rf.peer_transports(), rf.allreduce(x, op=rf.Sum, name="lab").tolist()]))
rf.shutdown()
"""


@pytest.mark.skipif(
    netlab.unavailable_reason() is not None, reason=str(netlab.unavailable_reason())
)
@pytest.mark.parametrize(("transport", "expected"), [("auto", "shm"), ("tcp", "tcp")])
def test_network_namespaces_of_one_machine(transport, expected):
    """Two netlab "hosts" are namespaces of this machine: the probe finds one boot id and one
    /dev/shm, so auto shares memory between them; tcp keeps the sockets (what netlab
    benchmarks of the network path need)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free here, so (almost surely) in the fresh namespace
    with netlab.Lab(2) as lab:
        env = {
            "RINGFLOW_SIZE": "2",
            "RINGFLOW_STORE_ADDR": lab.addr(0),
            "RINGFLOW_STORE_PORT": str(port),
            "RINGFLOW_SECRET": secrets.token_hex(16),
            "RINGFLOW_JOB_ID": f"shm-lab-{secrets.token_hex(4)}",
            "RINGFLOW_TIMEOUT": "30",
            "RINGFLOW_TRANSPORT": transport,
        }
        procs = [
            lab.popen(
                host,
                [sys.executable, "-c", _LAB_RANK],
                env=harness.clean_env({**env, "RINGFLOW_RANK": str(host)}),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for host in range(2)
        ]
        outputs = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=60)
                assert proc.returncode == 0, out
                outputs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    expected_sum = (np.arange(1001, dtype=np.int64) * 3).tolist()
    assert outputs == [[["self", expected], expected_sum], [[expected, "self"], expected_sum]]


# -- hostile frames in the ring (the real ShmPair, through _core._probe_frames) -----------------


def _probe(stream, recvs, peer):
    from ringflow import _core

    return _core._probe_frames(stream, recvs, peer, transport="shm")


def test_ring_frames_are_received_across_the_wrap():
    """Positive control: frames longer than the 4 KiB probe ring land whole."""
    a, b = bytes(range(256)) * 40, b"b" * 3
    out = _probe(_frame(4, a) + _frame(5, b), [(len(a), 4, False), (3, 5, False)], 3)
    assert out["error_kind"] == "none", out
    assert out["completed"] == 2 and out["buffers"] == [a, b]


@pytest.mark.parametrize("length", [17, 8, 2**31, 2**64 - 1])
def test_ring_frame_of_another_length(length):
    """The header is checked whole before any byte reaches the buffer."""
    out = _probe(_frame(7, b"x" * 64, length=length), [(16, 7, False)], 3)
    assert out["error_kind"] == "peer_failure", out
    assert "rank 3" in out["error"] and str(length) in out["error"], out["error"]
    assert out["completed"] == 0 and out["buffers"] == [UNTOUCHED * 16]


@pytest.mark.parametrize("tag", [6, (1 << 63) | 7])
def test_ring_frame_of_another_collective(tag):
    out = _probe(_frame(tag, b"y" * 16), [(16, 7, False)], 2)
    assert out["error_kind"] == "peer_failure" and "collective #7" in out["error"], out
    assert out["buffers"] == [UNTOUCHED * 16]


def test_ring_point_to_point_of_another_length_is_drained():
    p2p = 1 << 63
    stream = _frame(p2p | 1, b"z" * 5000) + _frame(p2p | 2, b"w" * 4)
    out = _probe(stream, [(8, p2p | 1, True), (4, p2p | 2, True)], 1)
    assert out["error_kind"] == "none", out
    assert out["actual_lens"] == [5000, 4] and out["buffers"] == [UNTOUCHED * 8, b"w" * 4]


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"\x52\x46",
        _frame(7, b"x" * 16)[:30],
        b"\x00" * 24,
        b"garbage" * 1000,
        _frame(0, b"x", kind=2),
    ],
    ids=["empty", "partial-header", "truncated-payload", "zero-header", "garbage", "abort-kind"],
)
def test_ring_truncated_or_garbage(stream):
    out = _probe(stream, [(16, 7, False)], 4)
    assert out["error_kind"] == "peer_failure" and "rank 4" in out["error"], out
    assert out["completed"] == 0, out  # a valid header's payload may land, never past the buffer
