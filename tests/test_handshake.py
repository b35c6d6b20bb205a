"""The peer handshake: intruders on the data and store ports are refused and the job goes on.

Ranks connect in order: rank r connects to every j < r and accepts from every j > r, so ranks
0..N-2 sit in their accept phase until rank N-1 starts. The tests start ranks 0..N-2, read their
data addresses from the store (``rf/0/addr/{rank}``), attack those ports, then start rank N-1.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import numpy as np
import pytest

import ringflow as rf
from ringflow import _core
from tests import harness, hostile
from tests import reference as ref


def _init_and_collectives(seed):
    rf.init()
    x = ref.exact_input(seed, rf.rank(), (1001,), "int32", "Sum")
    total = rf.allreduce(x, op=rf.Sum)
    gathered = rf.allgather(np.array([rf.rank()], dtype=np.int64))
    rf.shutdown()
    return total, gathered


def _check_job_results(results, seed, n):
    inputs = [ref.exact_input(seed, r, (1001,), "int32", "Sum") for r in range(n)]
    expected = ref.allreduce_exact(inputs, "Sum")
    for rank, (total, gathered) in enumerate(results):
        ref.assert_exact(total, expected, f"rank {rank}: allreduce")
        ref.assert_exact(gathered, np.arange(n, dtype=np.int64), f"rank {rank}: allgather")


def _send_garbage(host, port):
    """Random bytes, absurd length prefixes, an immediate close, a partial handshake."""
    with socket.create_connection((host, port)) as sock:
        sock.sendall(os.urandom(4096))
        _drain_until_closed(sock)
    with socket.create_connection((host, port)) as sock:
        sock.sendall(struct.pack("<Q", 2**64 - 1) * 4 + struct.pack(">Q", 2**63) * 4)
        _drain_until_closed(sock)
    socket.create_connection((host, port)).close()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"\x00\x01")  # then close mid-handshake


def _drain_until_closed(sock):
    """Read until the peer closes the connection (it must, on garbage) or 20 s pass."""
    sock.settimeout(20.0)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"{sock.getpeername()} kept a garbage connection open for 20 s")


@pytest.mark.parametrize("n", [2, 3])
def test_intruders_refused_and_job_completes(make_job, n):
    job = make_job(n, auto_init=False).start(range(n - 1))
    seed = ref.seed_of("handshake", n)
    job.submit(_init_and_collectives, seed, ranks=range(n - 1))
    store = job.store_client()
    secret = job.secret.encode()
    try:
        for rank in range(n - 1):
            host, port = harness.data_address(store, 0, rank)
            for bad_secret, job_id, claimed in [
                (b"wrong secret", job.job_id, n - 1),
                (secret, "wrong-job", n - 1),
                (secret[:-1], job.job_id, n - 1),
                (secret, job.job_id, n + 5),  # a rank that does not exist
            ]:
                with pytest.raises(rf.Error) as refused:
                    _core.probe_handshake(host, port, bad_secret, job_id, claimed, 10.0)
                # Refused by the rank, not merely unanswered.
                assert not isinstance(refused.value, rf.TimeoutError), refused.value
            _send_garbage(host, port)
        # The store: garbage and a refused client must not break it either.
        _send_garbage("127.0.0.1", job.store_port)
        with pytest.raises(rf.Error):
            _core.StoreClient(
                "127.0.0.1", job.store_port, secret=b"nope", job_id=job.job_id, timeout_s=5.0
            )
        store.set("test/still-works", b"1")
        assert store.get("test/still-works") == b"1"
    finally:
        store.close()
    job.start([n - 1])
    job.submit(_init_and_collectives, seed, ranks=[n - 1])
    _check_job_results([r.value for r in _all_ok(job.collect())], seed, n)


def _all_ok(results):
    failed = [r for r in results if not r.ok]
    assert not failed, "\n".join(r.describe() for r in failed)
    return results


def test_correct_handshake_is_accepted(make_job):
    """Positive control for the refusals above: the right secret, job id and rank pass."""
    job = make_job(2, auto_init=False).start([0])
    job.submit(_init_and_collectives, 0, ranks=[0])
    store = job.store_client()
    try:
        host, port = harness.data_address(store, 0, 0)
        _core.probe_handshake(host, port, job.secret.encode(), job.job_id, 1, 10.0)
    finally:
        store.close()
        job.abort()  # rank 0 now holds a connection from a "rank 1" that went away


def test_rank_with_wrong_secret(make_job):
    """A rank whose secret differs is refused by the store; nobody hangs: every rank raises
    rf.Error naming itself, the others at their RINGFLOW_TIMEOUT."""
    n = 3
    job = make_job(n, auto_init=False, rank_env={2: {"RINGFLOW_SECRET": "wrong"}}, rank_timeout=5)
    results = job.start().run(_init_and_collectives, 0, deadline=60)
    for result in results:
        assert not result.died, result.describe()
        assert isinstance(result.error, rf.Error), result.describe()
        assert f"rank {result.rank}" in str(result.error), result.describe()


def _init_timed():
    start = time.monotonic()
    rf.init()
    elapsed = time.monotonic() - start
    rf.shutdown()
    return elapsed


def test_silent_intruders_do_not_delay_init(make_job):
    """100 silent connections at each waiting rank's data port (beyond its 64 pending
    handshakes) and at the store: the last rank still inits at once. Handshaking them one by one
    for 2 s each, as ringflow once did, would take minutes."""
    n = 3
    job = make_job(n, auto_init=False).start(range(n - 1))
    job.submit(_init_timed, ranks=range(n - 1))
    store = job.store_client()
    held = []
    try:
        ports = [harness.data_address(store, 0, r) for r in range(n - 1)]
        for address in [*ports, ("127.0.0.1", job.store_port)]:
            held += [socket.create_connection(address) for _ in range(100)]
        job.start([n - 1])
        job.submit(_init_timed, ranks=[n - 1])
        results = _all_ok(job.collect(deadline=60))
    finally:
        for sock in held:
            sock.close()
        store.close()
    assert results[-1].value < 5.0, f"rank {n - 1}: init took {results[-1].value:.1f} s"


def test_refusal_is_logged_with_the_peer_address(make_job):
    """A hello of another protocol version is refused, and the rank's log names who sent it."""
    job = make_job(2, auto_init=False).start([0])
    job.submit(_init_timed, ranks=[0])
    store = job.store_client()
    try:
        address = harness.data_address(store, 0, 0)
        with socket.create_connection(address) as sock:
            local = "{}:{}".format(*sock.getsockname())
            sock.sendall(hostile.hello(hostile.ROLE_PEER, 1, job.job_id.encode(), version=7))
            sock.sendall(bytes(32))  # a proof, so that the rank gets to judge the hello
            _drain_until_closed(sock)
        end = time.monotonic() + 20
        while f"from {local}" not in job.log_tail(0) and time.monotonic() < end:
            time.sleep(0.05)
        log = job.log_tail(0)
        assert f"refused a connection from {local}" in log and "version 7" in log, log
    finally:
        store.close()
    job.start([1])
    job.submit(_init_timed, ranks=[1])
    _all_ok(job.collect(deadline=60))
