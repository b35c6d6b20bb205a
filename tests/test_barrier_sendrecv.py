"""barrier (checked through the store: nobody leaves before everybody arrived) and send/recv."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref

# -- barrier --------------------------------------------------------------------------------------


def _barrier_rounds(tag, rounds):
    """Count arrivals in the store before each barrier; after it, every rank must have arrived."""
    store = harness.rank_store()
    seen = []
    for i in range(rounds):
        key = f"test/barrier/{tag}/{i}"
        store.add(key, 1)
        assert rf.barrier() is None
        seen.append(store.add(key, 0))
    return seen


@pytest.mark.parametrize("n", ref.WORLD_SIZES)
def test_barrier(pools, n):
    seen = pools.call(n, _barrier_rounds, secrets.token_hex(4), 5)
    for rank, counts in enumerate(seen):
        assert counts == [n] * 5, f"rank {rank} left a barrier before every rank arrived: {counts}"


# -- send / recv ----------------------------------------------------------------------------------


def _ring_pass(seed, shape, dtype_name):
    """Rank r sends its array to r+1 and receives r-1's; ordered so no cycle of sends blocks."""
    rank, n = rf.rank(), rf.size()
    x = ref.bit_patterns(seed, rank, shape, dtype_name)
    before = x.copy()
    buf = np.zeros(shape, dtype=ref.dtype(dtype_name))
    if rank == 0:
        rf.send(x, (rank + 1) % n)
        returned = rf.recv(buf, (rank - 1) % n)
    else:
        returned = rf.recv(buf, (rank - 1) % n)
        rf.send(x, (rank + 1) % n)
    return buf, returned is buf, bool(np.array_equal(ref.bits(x), ref.bits(before)))


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize(
    ("n", "size"), [(n, s) for n in (2, 3, 4) for s in (0, 1, 7, n + 1)], ids=str
)
def test_send_recv_ring(pools, n, size, dtype_name):
    check_ring(pools, n, (size,), dtype_name)


@pytest.mark.parametrize(("n", "dtype_name"), [(2, "float64"), (3, "uint8"), (4, "bfloat16")])
def test_send_recv_large(pools, n, dtype_name):
    check_ring(pools, n, (ref.LARGE,), dtype_name)


def test_send_recv_multidim(pools):
    check_ring(pools, 3, (4, 0, 2), "int32")
    check_ring(pools, 3, (4, 3, 2), "float16")


def check_ring(pools, n, shape, dtype_name):
    seed = ref.seed_of("ring", n, shape, dtype_name)
    results = pools.call(n, _ring_pass, seed, shape, dtype_name)
    for rank, (buf, same, untouched) in enumerate(results):
        expected = ref.bit_patterns(seed, (rank - 1) % n, shape, dtype_name)
        context = f"rank {rank} from {(rank - 1) % n}, dtype {dtype_name}, shape {shape}"
        ref.assert_bits_equal(buf, expected, context)
        assert same, f"{context}: recv did not return its argument"
        assert untouched, f"{context}: send modified its input"


def _all_pairs(seed):
    """Every ordered pair (i, j) exchanges one message, in one global order on every rank."""
    rank, n = rf.rank(), rf.size()
    received = {}
    for src in range(n):
        for dst in range(n):
            if src == dst:
                continue
            if rank == src:
                rf.send(np.full(3 + src, 10 * src + dst, dtype=np.int32), dst)
            elif rank == dst:
                received[src] = rf.recv(np.empty(3 + src, dtype=np.int32), src)
    return received


@pytest.mark.parametrize("n", [2, 3, 4])
def test_send_recv_all_pairs(pools, n):
    results = pools.call(n, _all_pairs, 0)
    for rank, received in enumerate(results):
        assert sorted(received) == [src for src in range(n) if src != rank]
        for src, buf in received.items():
            expected = np.full(3 + src, 10 * src + rank, dtype=np.int32)
            ref.assert_exact(buf, expected, f"rank {rank} from {src}")


def _mismatched_then_matched():
    """Rank 0 sends 5 elements where rank 1 expects 4; then a matching message goes through."""
    first: object
    if rf.rank() == 0:
        try:
            rf.send(np.arange(5, dtype=np.float32), 1)
            first = "sent"
        except rf.Error as exc:  # the sender may learn of the mismatch too; it must not hang
            first = exc
        rf.send(np.arange(100, 104, dtype=np.float32), 1)
        return first, None
    buf = np.zeros(4, dtype=np.float32)
    try:
        rf.recv(buf, 0)
        first = "received"
    except rf.Error as exc:
        first = exc
    second = rf.recv(np.zeros(4, dtype=np.float32), 0)
    return first, second


def test_send_recv_size_mismatch(pools):
    results = pools.call(2, _mismatched_then_matched)
    (sender_first, _), (receiver_first, second) = results
    assert isinstance(receiver_first, rf.MismatchError), (
        f"rank 1: recv of a 5-element message into 4 elements gave {receiver_first!r}"
    )
    message = str(receiver_first)
    assert "rank 1" in message and "recv" in message.lower(), message
    assert ("5" in message and "4" in message) or ("20" in message and "16" in message), (
        f"the message does not give both sizes: {message}"
    )
    assert sender_first == "sent" or isinstance(sender_first, rf.Error), sender_first
    ref.assert_exact(second, np.arange(100, 104, dtype=np.float32), "rank 1: message after")
