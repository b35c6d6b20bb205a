"""Hostile input: intruders at the store and data ports while a job runs, and malformed frames.

The data listeners exist only during ``rf.init()`` (closed once the mesh is built), so they are
attacked during init: ranks 0..N-2 start first and sit in their accept phase, the attack starts
on the store and on their published data ports, then rank N-1 starts while it goes on (and its
own port is attacked as soon as it appears). After init the store stays under attack while the
ranks run collectives, each checked against numpy inside the rank.

The frame tests feed the real TcpPair raw bytes (``_core._probe_frames``): a frame longer than
its receive or tagged for another collective fails with a PeerFailure naming the peer, and the
receive buffer is left untouched.
"""

from __future__ import annotations

import logging
import struct
import threading
import time

import numpy as np
import pytest

import ringflow as rf
from ringflow import _core
from tests import harness, hostile

log = logging.getLogger(__name__)

PAYLOADS = 2000
"""Hostile connections per job, at least."""
ATTACK_SECONDS = 60.0
"""Bound on the attack; it ends once PAYLOADS were fired and the collectives ran under it for
MIN_UNDER_ATTACK_S, or at MAX_PAYLOADS."""
MIN_UNDER_ATTACK_S = 5.0
MAX_PAYLOADS = 20_000
"""Below the ephemeral port range: our own TIME_WAIT sockets cannot exhaust it."""
INIT_BOUND_S = 10.0
"""Rank N-1's rf.init() under attack. The old serial accept loop spent the 2 s handshake
deadline on every silent connection queued before a real peer, and the attack holds up to
150 of them open: it would take minutes."""
STOP_KEY = "hostile/stop"


def _init_and_collectives(max_seconds):
    """Init (timed), then rounds of exact collectives until the test sets STOP_KEY."""
    start = time.monotonic()
    rf.init()
    init_s = time.monotonic() - start
    n, me = rf.size(), rf.rank()
    store = harness.rank_store()
    base = np.arange(4099, dtype=np.int64)
    rounds, wrong = 0, []
    end = time.monotonic() + max_seconds
    while True:
        total = rf.allreduce(base * (me + 1) + rounds, op=rf.Sum)
        expected = base * (n * (n + 1) // 2) + n * rounds
        if not np.array_equal(total, expected):
            wrong.append(f"allreduce round {rounds}")
        gathered = rf.allgather(np.full(3, me * 1000 + rounds, dtype=np.int32))
        if not np.array_equal(gathered, np.repeat(np.arange(n) * 1000 + rounds, 3)):
            wrong.append(f"allgather round {rounds}")
        root = rounds % n
        sent = np.arange(17, dtype=np.float64) + (rounds if me == root else -1)
        if not np.array_equal(rf.broadcast(sent, root_rank=root), np.arange(17.0) + rounds):
            wrong.append(f"broadcast round {rounds}")
        rounds += 1
        stop = np.zeros(1, dtype=np.uint8)
        if me == 0:
            try:
                store.wait([STOP_KEY], timeout_s=0.0)
                stop[0] = 1
            except rf.TimeoutError:
                stop[0] = time.monotonic() > end
        if rf.broadcast(stop, root_rank=0)[0]:
            break
    rf.shutdown()
    return init_s, rounds, wrong


@pytest.mark.timeout(240)
@pytest.mark.parametrize("n", [2, 4])
def test_job_stays_exact_under_attack(make_job, n):
    job = make_job(n, auto_init=False, rank_timeout=40).start(range(n - 1))
    job.submit(_init_and_collectives, ATTACK_SECONDS + 30, ranks=range(n - 1))
    store = job.store_client()
    targets = [hostile.Target("127.0.0.1", job.store_port, "store")]
    targets += [hostile.Target(*harness.data_address(store, 0, r), "data") for r in range(n - 1)]
    attacker = hostile.Attacker(
        targets, job.secret.encode(), job.job_id.encode(), MAX_PAYLOADS, ATTACK_SECONDS, seed=n
    ).start()
    last = None
    try:
        # Ranks 0..N-2 are in their accept phase: let the attack fill their listeners first.
        attacker.wait_fired("data", 300, timeout=30)
        started = time.monotonic()
        job.start([n - 1])
        job.submit(_init_and_collectives, ATTACK_SECONDS + 30, ranks=[n - 1])
        last = threading.Thread(target=_attack_when_published, args=(job, n - 1, attacker))
        last.start()
        while attacker.running and (
            attacker.total < PAYLOADS or time.monotonic() - started < MIN_UNDER_ATTACK_S
        ):
            time.sleep(0.05)
        store.set(STOP_KEY, b"1")
        results = job.collect(deadline=120)
    finally:
        attacker.stop()
        if last is not None:
            last.join(timeout=60)
        store.close()
    failed = [r for r in results if not r.ok]
    assert not failed, harness.describe_all(failed)
    init_s = [r.value[0] for r in results]
    rounds = {r.value[1] for r in results}
    log.info(
        "n=%d: %d hostile connections (%s, of which refused as nobody listened: %s; %s), "
        "rank %d init %.2f s, %s rounds, %.1f s",
        n, attacker.total, dict(attacker.fired), dict(attacker.refused), dict(attacker.per_kind),
        n - 1, init_s[-1], rounds, time.monotonic() - started,
    )  # fmt: skip
    delivered = attacker.total - sum(attacker.refused.values())
    assert delivered >= PAYLOADS, f"only {delivered} hostile connections were accepted"
    assert attacker.fired["data"] - attacker.refused["data"] >= 300, "data ports barely attacked"
    assert not attacker.unexpected, attacker.unexpected[:10]
    assert init_s[-1] < INIT_BOUND_S, f"rank {n - 1}: init took {init_s[-1]:.1f} s under attack"
    assert len(rounds) == 1 and min(rounds) >= 1, f"ranks ran different rounds: {rounds}"
    for result in results:
        assert not result.value[2], f"rank {result.rank}: wrong results in {result.value[2][:5]}"
    # Refusals are logged with the intruder's address.
    assert "refused a connection from 127.0.0.1:" in job.log_tail(0) + "".join(
        job.log_tail(r) for r in range(1, n)
    )


def _attack_when_published(job, rank, attacker):
    """Adds a rank's data port to the targets as soon as its address is in the store."""
    store = job.store_client()
    try:
        attacker.add_target(hostile.Target(*harness.data_address(store, 0, rank), "data"))
    except rf.Error:
        pass  # the job ended first
    finally:
        store.close()


# -- frames -------------------------------------------------------------------------------------

FRAME_MAGIC = 0x52464652
UNTOUCHED = b"\xa5"  # what _probe_frames fills receive buffers with


def _frame(tag, payload, *, kind=1, length=None):
    size = len(payload) if length is None else length
    return struct.pack("<IIQQ", FRAME_MAGIC, kind, tag, size) + payload


def test_valid_frames_are_received():
    """Positive control: two frames in one stream land in their receives."""
    out = _core._probe_frames(
        _frame(4, b"a" * 10) + _frame(5, b"b" * 3), [(10, 4, False), (3, 5, False)], 3
    )
    assert out["error_kind"] == "none", out
    assert out["completed"] == 2 and out["buffers"] == [b"a" * 10, b"b" * 3]


@pytest.mark.parametrize("length", [17, 4096, 2**31, 2**63, 2**64 - 1])
def test_frame_longer_than_the_buffer(length):
    """A collective's frame announcing more than was agreed fails before any byte is written."""
    out = _core._probe_frames(_frame(7, b"x" * 64, length=length), [(16, 7, False)], 3)
    assert out["error_kind"] == "peer_failure", out
    assert "rank 3" in out["error"] and str(length) in out["error"], out["error"]
    assert out["completed"] == 0 and out["buffers"] == [UNTOUCHED * 16]


def test_frame_shorter_than_the_buffer():
    out = _core._probe_frames(_frame(7, b"x" * 8), [(16, 7, False)], 3)
    assert out["error_kind"] == "peer_failure" and "rank 3" in out["error"], out
    assert out["buffers"] == [UNTOUCHED * 16]


@pytest.mark.parametrize("tag", [6, 8, 2**40, (1 << 63) | 7])
def test_frame_of_another_collective(tag):
    """A frame tagged with another sequence number (or point-to-point) is never applied."""
    out = _core._probe_frames(_frame(tag, b"y" * 16), [(16, 7, False)], 2)
    assert out["error_kind"] == "peer_failure", out
    assert "rank 2" in out["error"] and "collective #7" in out["error"], out["error"]
    assert out["buffers"] == [UNTOUCHED * 16]


def test_second_frame_of_another_collective():
    """The first receive completes; the second frame's wrong tag fails only the second."""
    out = _core._probe_frames(
        _frame(1, b"a" * 4) + _frame(3, b"b" * 4), [(4, 1, False), (4, 2, False)], 5
    )
    assert out["error_kind"] == "peer_failure" and "rank 5" in out["error"], out
    assert out["completed"] == 1 and out["buffers"] == [b"a" * 4, UNTOUCHED * 4]


def test_point_to_point_of_another_length_is_drained():
    """A point-to-point receive of another length reports it and keeps the stream in sync."""
    p2p = 1 << 63
    out = _core._probe_frames(
        _frame(p2p | 1, b"z" * 40) + _frame(p2p | 2, b"w" * 4), [(8, p2p | 1, True), (4, p2p | 2, True)], 1
    )  # fmt: skip
    assert out["error_kind"] == "none", out
    assert out["actual_lens"] == [40, 4] and out["buffers"] == [UNTOUCHED * 8, b"w" * 4]


@pytest.mark.parametrize(
    "stream",
    [b"", b"\x52\x46", _frame(7, b"x" * 16)[:30], b"\x00" * 24, b"garbage" * 100],
    ids=["empty", "partial-header", "truncated-payload", "zero-header", "garbage"],
)
def test_truncated_or_garbage_stream(stream):
    out = _core._probe_frames(stream, [(16, 7, False)], 4)
    assert out["error_kind"] == "peer_failure" and "rank 4" in out["error"], out


def test_abort_frame_names_the_peer():
    out = _core._probe_frames(_frame(0, b"out of memory", kind=2, length=2**60), [(8, 1, False)], 6)
    assert out["error_kind"] == "peer_failure", out
    assert "rank 6 failed: out of memory" in out["error"], out["error"]
