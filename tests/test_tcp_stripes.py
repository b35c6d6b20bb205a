"""Several TCP connections per peer pair (RINGFLOW_TCP_STREAMS): large collective frames are cut
into one part per connection (each part at least 256 KiB), small frames and point-to-point
messages stay on the first. Results are exact at sizes around the part and segment boundaries,
a pair whose ranks ask for different counts uses the smaller, every connection is handshaken,
and a SIGKILLed rank or a single closed stripe is still named within 5 s.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import time

import numpy as np
import pytest

import ringflow as rf
from tests.test_failure_reports import _start_loop
from tests.test_failures import DEAD_PEER_S, names_dead_rank
from tests.test_shm_transport import _every_collective, _input, _splits

TCP = {"RINGFLOW_TRANSPORT": "tcp"}
TIMEOUT_S = 10.0
# float32 elements. At N=2 a ring frame is half the tensor (up to the 512 KiB segment), so these
# give frames just under and over one part (256 KiB), two parts and the segment, and many segments.
SIZES = [0, 1, 131071, 131073, 262145, 393219, 1048583]


def _peer_sockets():
    """(local port, remote port) of this process's connected TCP sockets."""
    pairs = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:  # a copy: the family is detected
                if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM:
                    pairs.append((sock.getsockname()[1], sock.getpeername()[1]))
        except OSError:  # not an AF_INET socket, or not connected (a listener)
            continue
    return pairs


def _collectives_and_sockets(sizes):
    out = _every_collective(sizes, ("float32",))
    out["sockets"] = len(_peer_sockets())
    return out


def _check(results, n, sizes):
    for size in sizes:
        key = f"float32.{size}"
        inputs = [_input(r, size, "float32") for r in range(n)]
        total = np.stack(inputs).sum(axis=0)
        gathered = np.concatenate([_input(r, size + r, "float32") for r in range(n)])
        for rank, got in enumerate(results):
            context = f"N={n} rank {rank} {key}"
            assert got["transports"] == ["self" if r == rank else "tcp" for r in range(n)]
            np.testing.assert_array_equal(got[f"allreduce.Sum.{key}"], total, context)
            np.testing.assert_array_equal(got[f"allreduce.Max.{key}"], np.max(inputs, 0), context)
            np.testing.assert_array_equal(got[f"broadcast.{key}"], inputs[n - 1], context)
            np.testing.assert_array_equal(got[f"allgather.{key}"], gathered, context)
            block = np.array_split(total, n)[rank]
            np.testing.assert_array_equal(got[f"reducescatter.{key}"], block, context)
            parts = []
            for source in range(n):
                start = sum(_splits(source, n, size)[:rank])
                parts.append(inputs[source][start : start + _splits(source, n, size)[rank]])
            np.testing.assert_array_equal(got[f"alltoall.{key}"], np.concatenate(parts), context)
        np.testing.assert_array_equal(results[n - 1][f"p2p.{key}"], inputs[0], key)


def test_exact_with_1_2_4_streams(make_job):
    """The same collectives at 1, 2 and 4 streams; each extra stream is one more connection
    to every peer."""
    n = 2
    sockets = {}
    for streams in (1, 2, 4):
        job = make_job(n, env={**TCP, "RINGFLOW_TCP_STREAMS": str(streams)}).start()
        results = job.call(_collectives_and_sockets, SIZES)
        _check(results, n, SIZES)
        sockets[streams] = [got["sockets"] for got in results]
        job.close()
    for streams in (2, 4):
        for rank in range(n):
            extra = sockets[streams][rank] - sockets[1][rank]
            assert extra == (n - 1) * (streams - 1), sockets


def test_ranks_asking_for_different_counts(make_job):
    """Each pair uses the smaller of its two ranks' RINGFLOW_TCP_STREAMS."""
    n = 3
    counts = {0: "4", 1: "2", 2: "3"}
    rank_env = {r: {"RINGFLOW_TCP_STREAMS": c} for r, c in counts.items()}
    job = make_job(n, env=TCP, rank_env=rank_env).start()
    sizes = [1, 393219, 1048583]
    results = job.call(_collectives_and_sockets, sizes)
    _check(results, n, sizes)
    got = [r["sockets"] for r in results]
    # connections per rank, beyond one per peer: rank 0: min(4,2)-1 + min(4,3)-1 = 3, and so on
    extra = [got[0] - got[1], got[2] - got[1]]
    assert extra == [(1 + 2) - (1 + 1), (2 + 1) - (1 + 1)], got


def _close_one_stripe_then_allreduce(other):
    """Shut down this rank's last stripe to `other` (not the first connection), then allreduce
    a striped tensor: returns (the error, seconds until it was raised)."""
    x = np.ones(1 << 20, dtype=np.float32)
    rf.allreduce(x, op=rf.Sum, name="before")
    if rf.rank() == 1:
        # Rank 1 connected to rank 0: its stripes share rank 0's listening port as their remote
        # port, and the first connection has the lowest local port.
        by_remote = {}
        for local, remote in _peer_sockets():
            by_remote.setdefault(remote, []).append(local)
        stripes = next(sorted(ports) for ports in by_remote.values() if len(ports) == 4)
        for name in os.listdir("/proc/self/fd"):
            try:
                with socket.socket(fileno=os.dup(int(name))) as sock:
                    if sock.family == socket.AF_INET and sock.getsockname()[1] == stripes[-1]:
                        sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue
    start = time.monotonic()
    try:
        for step in range(100):
            rf.allreduce(x, op=rf.Sum, name=f"after{step}")
    except rf.Error as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def test_closed_stripe_is_a_peer_failure(make_job):
    """A stripe is noticed closed by the next frame that uses it: 1 MiB segments use all four."""
    n = 2
    env = {**TCP, "RINGFLOW_TCP_STREAMS": "4", "RINGFLOW_SEGMENT_BYTES": str(1 << 20)}
    job = make_job(n, env=env, rank_timeout=TIMEOUT_S).start()
    results = job.run(_close_one_stripe_then_allreduce, None)
    for result in results:
        assert result.ok, result.describe()
        error, elapsed = result.value
        other = 1 - result.rank
        assert isinstance(error, rf.PeerFailureError), (result.rank, error)
        assert elapsed < DEAD_PEER_S, (result.rank, elapsed, error)
        assert f"rank {other}" in str(error), (result.rank, error)


def test_sigkill_mid_striped_collective(make_job):
    """The parent SIGKILLs a rank while all loop over striped allreduces."""
    n, victim = 3, 1
    env = {**TCP, "RINGFLOW_TCP_STREAMS": "4", "RINGFLOW_SEGMENT_BYTES": str(1 << 20)}
    job = make_job(n, env=env, rank_timeout=TIMEOUT_S).start()
    _start_loop(job, victim)
    killed_at = time.monotonic()
    job.kill(victim)
    results = job.collect(deadline=TIMEOUT_S + 30)
    assert time.monotonic() - killed_at < DEAD_PEER_S
    for result in results:
        if result.rank == victim:
            assert result.died and result.exitcode == -signal.SIGKILL, result.describe()
            continue
        assert result.ok, result.describe()
        _, error, _ = result.value
        assert isinstance(error, rf.PeerFailureError), result.describe()
        assert names_dead_rank(str(error), victim), str(error)


@pytest.mark.parametrize("value", ["0", "9", "two"])
def test_bad_stream_count_is_refused(make_job, value):
    job = make_job(1, auto_init=False, env={**TCP, "RINGFLOW_TCP_STREAMS": value}).start()
    (result,) = job.run(_init_error)
    assert result.ok, result.describe()
    assert result.value is not None and "RINGFLOW_TCP_STREAMS" in result.value[1], result.value


def _init_error():
    try:
        rf.init()
    except rf.Error as exc:
        return type(exc).__name__, str(exc)
    return None
