"""The rendezvous store: set/get/add/wait, deadlines, authentication, hostile connections."""

from __future__ import annotations

import builtins
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import ringflow as rf
from ringflow import _core
from tests import hostile

SECRET = b"store-test-secret"
JOB = "store-test-job"


@pytest.fixture
def server():
    srv = _core.StoreServer(host="127.0.0.1", port=0, secret=SECRET, job_id=JOB)
    yield srv
    srv.close()


def connect(server, secret=SECRET, job_id=JOB, timeout_s=10.0):
    return _core.StoreClient(
        "127.0.0.1", server.port, secret=secret, job_id=job_id, timeout_s=timeout_s
    )


@pytest.fixture
def client(server):
    cli = connect(server)
    yield cli
    cli.close()


def test_set_get(client):
    client.set("a", b"1")
    assert client.get("a") == b"1"
    client.set("a", b"2")  # overwrite
    assert client.get("a") == b"2"
    client.set("empty", b"")
    assert client.get("empty") == b""
    every_byte = bytes(range(256)) * 3
    client.set("binary", every_byte)
    assert client.get("binary") == every_byte
    big = os.urandom(4 << 20)
    client.set("big", big)
    assert client.get("big") == big
    client.set("k/\u00e9/\u4e2d", b"unicode key")
    assert client.get("k/\u00e9/\u4e2d") == b"unicode key"


def test_values_are_shared_between_clients(server, client):
    other = connect(server)
    try:
        client.set("shared", b"from client")
        assert other.get("shared") == b"from client"
    finally:
        other.close()


def test_get_waits_for_the_key(server, client):
    other = connect(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(other.get, "later", 20.0)
            client.set("later", b"value")
            assert pending.result(timeout=30) == b"value"
    finally:
        other.close()


def test_wait_for_several_keys(server, client):
    other = connect(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(other.wait, ["w/1", "w/2", "w/3"], 20.0)
            for key in ("w/3", "w/1", "w/2"):
                client.set(key, b"x")
            assert pending.result(timeout=30) is None
    finally:
        other.close()
    client.wait([])  # nothing to wait for


def test_add(client):
    assert client.add("counter", 5) == 5  # a missing key counts as 0
    assert client.add("counter", -7) == -2
    assert client.add("counter", 0) == -2
    assert client.add("big", 2**62) == 2**62
    assert client.add("other", 1) == 1


def test_concurrent_adds_are_atomic(server):
    """8 clients add 1 25 times each: the returned values are exactly 1..200."""
    clients = [connect(server) for _ in range(8)]
    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            futures = [pool.submit(lambda c=c: [c.add("n", 1) for _ in range(25)]) for c in clients]
            returned = sorted(v for f in futures for v in f.result(timeout=60))
        assert returned == list(range(1, 201))
    finally:
        for cli in clients:
            cli.close()


def test_round_trip_latency(client):
    """A store round trip on loopback takes well under a millisecond; 25 ms on average is a
    bound no loaded CI machine should reach, but small messages stalled by Nagle's algorithm
    against delayed ACKs (40 ms per exchange) do."""
    client.add("latency", 1)  # connection warm
    start = time.monotonic()
    for _ in range(10):
        client.add("latency", 1)
        client.get("latency")
    elapsed = time.monotonic() - start
    assert elapsed < 20 * 0.025, f"20 store round trips took {elapsed * 1000:.0f} ms"


def test_wait_deadline_names_missing_keys(client):
    client.set("present", b"1")
    start = time.monotonic()
    with pytest.raises(rf.TimeoutError) as info:
        client.wait(["present", "missing/a", "missing/b"], timeout_s=0.3)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, builtins.TimeoutError)
    assert isinstance(info.value, rf.Error)
    message = str(info.value)
    assert "missing/a" in message and "missing/b" in message, message
    assert 0.25 <= elapsed < 10, elapsed


def test_get_deadline_names_the_key(client):
    with pytest.raises(rf.TimeoutError, match="never/set"):
        client.get("never/set", timeout_s=0.3)


def test_client_default_timeout(server):
    """The constructor's timeout_s is the deadline of calls that give none."""
    cli = connect(server, timeout_s=0.5)
    outcome = {}

    def calls_without_timeout():
        for method, args in (("get", ("absent",)), ("wait", (["absent/1", "absent/2"],))):
            start = time.monotonic()
            try:
                getattr(cli, method)(*args)
            except rf.Error as exc:
                outcome[method] = (exc, time.monotonic() - start)

    # In a thread: the GIL-free C++ wait cannot be interrupted by pytest-timeout.
    thread = threading.Thread(target=calls_without_timeout, daemon=True)
    thread.start()
    thread.join(timeout=20)
    try:
        assert not thread.is_alive(), "get()/wait() without timeout_s ignored the client's 0.5 s"
        for method, fragment in (("get", "absent"), ("wait", "absent/2")):
            error, elapsed = outcome[method]
            assert isinstance(error, rf.TimeoutError) and fragment in str(error), error
            assert elapsed < 10, f"{method}: {elapsed:.1f} s"
    finally:
        if thread.is_alive():
            server.close()  # wakes the blocked call
            thread.join(timeout=30)
        cli.close()


def test_client_usable_after_timeout(client):
    with pytest.raises(rf.TimeoutError):
        client.get("late", timeout_s=0.2)
    client.set("late", b"ok")
    assert client.get("late") == b"ok"


@pytest.mark.parametrize(
    ("secret", "job_id"),
    [(b"wrong secret", JOB), (SECRET, "other-job"), (b"", JOB), (SECRET[:-1], JOB)],
    ids=["wrong-secret", "wrong-job", "empty-secret", "prefix-secret"],
)
def test_authentication_refused(server, client, secret, job_id):
    with pytest.raises(rf.Error):
        connect(server, secret=secret, job_id=job_id, timeout_s=5.0)
    # The server keeps serving its other clients, old and new.
    client.set("after refusal", b"1")
    assert client.get("after refusal") == b"1"
    fresh = connect(server)
    try:
        assert fresh.get("after refusal") == b"1"
    finally:
        fresh.close()


def _hostile_connections(port):
    """Garbage, huge length prefixes, an immediate close, a silent connection; returns the
    sockets still open (callers close them)."""
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(os.urandom(64 << 10))
    huge = socket.create_connection(("127.0.0.1", port))
    huge.sendall(struct.pack("<Q", 2**63 - 1) + struct.pack(">Q", 2**63 - 1) + b"\xff" * 64)
    http = socket.create_connection(("127.0.0.1", port))
    http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socket.create_connection(("127.0.0.1", port)).close()
    silent = socket.create_connection(("127.0.0.1", port))
    partial = socket.create_connection(("127.0.0.1", port))
    partial.sendall(b"\x00")
    return [garbage, huge, http, silent, partial]


def test_hostile_connections_do_not_break_the_server(server, client):
    client.set("before", b"1")
    held = _hostile_connections(server.port)
    try:
        # While the silent and partial connections are still open, old and new clients work.
        client.set("during", b"2")
        fresh = connect(server, timeout_s=10.0)
        try:
            assert fresh.get("before") == b"1"
            assert fresh.get("during") == b"2"
            assert fresh.add("count", 3) == 3
        finally:
            fresh.close()
    finally:
        for sock in held:
            sock.close()
    assert client.get("during") == b"2"


def test_nothing_listening():
    """A client of a port where no store listens gives up with rf.Error at its deadline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(rf.Error):
        _core.StoreClient("127.0.0.1", port, secret=SECRET, job_id=JOB, timeout_s=1.0)
    assert time.monotonic() - start < 15


def test_server_closing_wakes_a_waiting_client():
    """A client blocked in get() raises rf.Error when the server goes away (no hang)."""
    srv = _core.StoreServer(host="127.0.0.1", port=0, secret=SECRET, job_id=JOB)
    cli = connect(srv)
    try:
        outcome = {}
        started = threading.Event()

        def blocked_get():
            started.set()
            try:
                outcome["value"] = cli.get("never", 20.0)
            except rf.Error as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=blocked_get)
        thread.start()
        started.wait()
        closed_at = time.monotonic()
        srv.close()
        thread.join(timeout=40)
        assert not thread.is_alive(), "get() still blocked 40 s after the server closed"
        assert "error" in outcome, outcome
        # The client notices the closed connection; it does not sit out its 20 s deadline.
        assert time.monotonic() - closed_at < 15, outcome["error"]
    finally:
        cli.close()


def _closed_within(sock, seconds):
    """Whether the server closes `sock` within `seconds` (reading and discarding its bytes)."""
    sock.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def test_silent_connections_beyond_the_cap(server, client):
    """200 silent connections (the server lets 64 wait for their handshake): a new client still
    gets in at once, the oldest silent ones are cut off, and the rest at the handshake deadline."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    try:
        start = time.monotonic()
        fresh = connect(server, timeout_s=10.0)
        try:
            fresh.set("past the silent ones", b"1")
        finally:
            fresh.close()
        assert time.monotonic() - start < 3.0, f"a client waited {time.monotonic() - start:.1f} s"
        assert _closed_within(silent[0], 3.0), "the oldest silent connection was not cut off"
        # The handshake deadline (5 s) ends the ones still pending.
        assert all(_closed_within(sock, 15.0) for sock in silent[-10:])
    finally:
        for sock in silent:
            sock.close()
    assert client.get("past the silent ones") == b"1"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x01" + struct.pack("<I", 0xFFFFFFFF),  # set: key longer than the limit
        b"\x01" + struct.pack("<I", 1) + b"k" + struct.pack("<I", 0x7FFFFFFF),  # value too long
        b"\x04" + struct.pack("<I", 0xFFFFFFFF),  # wait on 4 billion keys
        b"\x2a",  # no such command
    ],
    ids=["key-length", "value-length", "wait-count", "command"],
)
def test_authenticated_client_with_malformed_request(server, client, request_bytes):
    """Knowing the secret does not let a client corrupt the server: a malformed request only
    closes its own connection."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(10.0)
        assert hostile.handshake(sock, SECRET, JOB.encode(), hostile.ROLE_STORE_CLIENT, 0) == 0
        sock.sendall(request_bytes)
        assert _closed_within(sock, 10.0), "the server kept a malformed client connected"
    client.set("after malformed", b"ok")
    assert client.get("after malformed") == b"ok"


def test_announced_value_is_not_allocated_up_front(server, client):
    """A set announcing 60 MiB and sending 1 byte does not cost 60 MiB (chunked reads): many of
    them at once leave the server serving."""
    socks = []
    rss_before = _rss_bytes()
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.settimeout(10.0)
            assert hostile.handshake(sock, SECRET, JOB.encode(), hostile.ROLE_STORE_CLIENT, 0) == 0
            sock.sendall(b"\x01" + struct.pack("<I", 1) + b"k" + struct.pack("<I", 60 << 20) + b"v")
            socks.append(sock)
        client.set("still serving", b"1")
        assert client.get("still serving") == b"1"
        grown = _rss_bytes() - rss_before
        assert grown < 256 << 20, f"20 announced 60 MiB values grew the server by {grown >> 20} MiB"
    finally:
        for sock in socks:
            sock.close()


def _rss_bytes():
    """Resident memory of this process (the server runs in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
