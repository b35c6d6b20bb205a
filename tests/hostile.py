"""Hostile connections for tests: what an intruder can send to the store and data ports.

`Attacker` fires a bounded number of connections (random bytes, truncated, wrong-magic,
wrong-version, wrong-job and wrong-secret hellos, absurd length prefixes, half-open sockets held
open, hellos cut off mid-way, and — knowing the secret, at the store only — authenticated
clients sending malformed requests) at a list of targets from one thread, within a time limit.
Wire layouts mirror csrc/ringflow/net/handshake.cc and store/store_protocol.h.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import hmac
import os
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HELLO = struct.Struct("<IHBBiIH32s")
MAGIC = 0x52464C57
VERSION = 1
ROLE_STORE_CLIENT, ROLE_STORE_SERVER, ROLE_PEER = 1, 2, 3
LABEL = b"ringflow-handshake-v1"
MAX_HELD = 150
"""Half-open sockets held at once (more than the servers' 64 pending handshakes)."""


def hello(
    role: int,
    rank: int,
    job_id: bytes,
    *,
    version: int = VERSION,
    magic: int = MAGIC,
    nonce: bytes | None = None,
    job_len: int | None = None,
) -> bytes:
    nonce = os.urandom(32) if nonce is None else nonce
    length = len(job_id) if job_len is None else job_len
    return HELLO.pack(magic, version, role, 0, rank, 0, length, nonce) + job_id


def proof(
    secret: bytes, role: int, rank: int, job_id: bytes, peer_nonce: bytes, own_nonce: bytes
) -> bytes:
    message = LABEL + bytes([role]) + struct.pack("<iI", rank, 0) + job_id + peer_nonce + own_nonce
    return hmac.new(secret, message, hashlib.sha256).digest()


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def handshake(sock: socket.socket, secret: bytes, job_id: bytes, role: int, rank: int) -> int:
    """Runs the client side of the handshake; returns the other side's verdict byte."""
    nonce = os.urandom(32)
    sock.sendall(hello(role, rank, job_id, nonce=nonce))
    header = HELLO.unpack(_recv_exactly(sock, HELLO.size))
    _recv_exactly(sock, header[6])  # their job id
    sock.sendall(proof(secret, role, rank, job_id, header[7], nonce))
    _recv_exactly(sock, 32)  # their proof (not checked: we are the intruder)
    sock.sendall(b"\x00")
    return _recv_exactly(sock, 1)[0]


@dataclass
class Target:
    host: str
    port: int
    kind: str  # "store" or "data"


@dataclass
class Attacker:
    """Fires at most `count` hostile connections at `targets` within `time_limit` seconds."""

    targets: list[Target]
    secret: bytes
    job_id: bytes
    count: int
    time_limit: float
    seed: int = 0
    fired: collections.Counter = field(default_factory=collections.Counter)
    per_kind: collections.Counter = field(default_factory=collections.Counter)
    refused: collections.Counter = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._held: collections.deque[socket.socket] = collections.deque()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="attacker", daemon=True)

    @property
    def total(self) -> int:
        return sum(self.fired.values())

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def add_target(self, target: Target) -> None:
        with self._lock:
            self.targets.append(target)

    def start(self) -> Attacker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "attacker thread did not stop"
        while self._held:
            self._held.popleft().close()

    def wait_fired(self, kind: str, at_least: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.fired[kind] < at_least and self._thread.is_alive() and time.monotonic() < end:
            time.sleep(0.01)

    def _run(self) -> None:
        end = time.monotonic() + self.time_limit
        while self.total < self.count and time.monotonic() < end and not self._stop.is_set():
            with self._lock:
                target = self._rng.choice(self.targets)
            payload = self._rng.choice(PAYLOADS)
            if payload is _authenticated_garbage and target.kind != "store":
                payload = _refused_rank
            try:
                with socket.create_connection((target.host, target.port), timeout=1.0) as sock:
                    if payload(self, sock) == "hold":
                        self._held.append(sock.dup())
                        if len(self._held) > MAX_HELD:
                            self._held.popleft().close()
            except ConnectionRefusedError:
                # Nobody listens any more (a data port after init): aim elsewhere from now on.
                self.refused[target.kind] += 1
                with self._lock:
                    if len(self.targets) > 1 and target in self.targets:
                        self.targets.remove(target)
            except (ConnectionError, socket.timeout):
                pass  # reset or closed by the server: what we expect
            except OSError as exc:
                # ENOTCONN: shutdown() after the server's reset; EADDRNOTAVAIL: our own ports
                if exc.errno not in (errno.ENOTCONN, errno.EADDRNOTAVAIL):
                    self.unexpected.append(f"{payload.__name__} -> {target}: {exc!r}")
            self.fired[target.kind] += 1
            self.per_kind[payload.__name__] += 1


def _random_bytes(a: Attacker, sock: socket.socket) -> None:
    sock.sendall(os.urandom(a._rng.randint(1, 8192)))


def _truncated_hello(a: Attacker, sock: socket.socket) -> None:
    full = hello(ROLE_PEER, 1, a.job_id)
    sock.sendall(full[: a._rng.randint(1, len(full) - 1)])


def _wrong_magic(a: Attacker, sock: socket.socket) -> None:
    sock.sendall(hello(ROLE_PEER, 1, a.job_id, magic=a._rng.getrandbits(32)) + os.urandom(33))


def _wrong_version(a: Attacker, sock: socket.socket) -> None:
    sock.sendall(hello(ROLE_PEER, 1, a.job_id, version=a._rng.choice([0, 2, 0xFFFF])))
    sock.sendall(os.urandom(33))


def _huge_lengths(a: Attacker, sock: socket.socket) -> None:
    sock.sendall(hello(ROLE_PEER, 1, a.job_id, job_len=0xFFFF))
    sock.sendall(struct.pack("<Q", 2**64 - 1) * 8)


def _wrong_secret(a: Attacker, sock: socket.socket) -> None:
    role = ROLE_STORE_CLIENT if a._rng.random() < 0.5 else ROLE_PEER
    handshake(sock, os.urandom(16), a.job_id, role, 1)


def _wrong_job(a: Attacker, sock: socket.socket) -> None:
    handshake(sock, a.secret, b"another-job", ROLE_PEER, 1)


def _refused_rank(a: Attacker, sock: socket.socket) -> None:
    """Knows the secret but claims a rank no job has: authenticated, then refused."""
    handshake(sock, a.secret, a.job_id, ROLE_PEER, 10_000 + a._rng.randint(0, 99))


def _authenticated_garbage(a: Attacker, sock: socket.socket) -> None:
    """An authenticated store client whose request is malformed."""
    if handshake(sock, a.secret, a.job_id, ROLE_STORE_CLIENT, 10_000) != 0:
        return
    sock.sendall(
        a._rng.choice(
            [
                b"\x01" + struct.pack("<I", 0xFFFFFFFF),  # set, key length beyond the limit
                b"\x01" + struct.pack("<I", 5) + b"hostile" + struct.pack("<I", 60 << 20),
                b"\x04" + struct.pack("<I", 0xFFFFFFFF),  # wait on 4 billion keys
                b"\x09",  # no such command
                b"\x03" + struct.pack("<I", 3),  # add, truncated
                os.urandom(64),
            ]
        )
    )


def _half_open(a: Attacker, sock: socket.socket) -> str:
    return "hold"  # connect, say nothing, stay connected


def _closed_mid_hello(a: Attacker, sock: socket.socket) -> None:
    sock.sendall(hello(ROLE_PEER, 1, a.job_id)[:30])
    sock.shutdown(socket.SHUT_WR)


PAYLOADS = [
    _random_bytes,
    _truncated_hello,
    _wrong_magic,
    _wrong_version,
    _huge_lengths,
    _wrong_secret,
    _wrong_job,
    _refused_rank,
    _authenticated_garbage,
    _half_open,
    _half_open,
    _closed_mid_hello,
]
