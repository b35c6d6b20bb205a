"""Bad input and disagreement between ranks: an error on every rank, naming who and what.

Each scenario runs with one "odd" rank. Invalid input there (non-contiguous array, unsupported
dtype, root out of range, bad splits) gives that rank rf.InvalidArgumentError and every other
rank rf.MismatchError saying that the odd rank passed invalid input. Valid but different input
(dtype, shape, op, root) gives rf.MismatchError on every rank. Then every rank runs a correct
allreduce: a user error must not poison the communicator. Never a hang (harness deadline).
"""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from tests import harness

# world size and odd rank
WORLDS = [(2, 1), (3, 0), (3, 2)]


@pytest.fixture(scope="module")
def bad_pools():
    """A pool of its own, so that a core bug here cannot spill into the other modules."""
    pools = harness.Pools()
    yield pools
    pools.close()


def _f32(count):
    return np.arange(count, dtype=np.float32)


def _noncontiguous(count):
    return np.arange(2 * count, dtype=np.float32)[::2]


# -- scenarios: (rank, n, odd, name) -> None; run on every rank -----------------------------------


def allreduce_noncontiguous(rank, n, odd, name):
    rf.allreduce(_noncontiguous(10) if rank == odd else _f32(10), op=rf.Sum, name=name)


def allreduce_inplace_noncontiguous(rank, n, odd, name):
    rf.allreduce_(_noncontiguous(10) if rank == odd else _f32(10), op=rf.Sum, name=name)


def broadcast_noncontiguous(rank, n, odd, name):
    rf.broadcast(_noncontiguous(6) if rank == odd else _f32(6), 0, name=name)


def allgather_noncontiguous(rank, n, odd, name):
    rf.allgather(_noncontiguous(6) if rank == odd else _f32(6), name=name)


def reducescatter_noncontiguous(rank, n, odd, name):
    rf.reducescatter(_noncontiguous(6) if rank == odd else _f32(6), op=rf.Sum, name=name)


def alltoall_noncontiguous(rank, n, odd, name):
    rf.alltoall(_noncontiguous(2 * n) if rank == odd else _f32(2 * n), name=name)


def allreduce_complex64(rank, n, odd, name):
    x = np.zeros(4, dtype=np.complex64 if rank == odd else np.float32)
    rf.allreduce(x, op=rf.Sum, name=name)


def allreduce_uint32(rank, n, odd, name):
    x = np.zeros(4, dtype=np.uint32 if rank == odd else np.int32)
    rf.allreduce(x, op=rf.Sum, name=name)


def broadcast_uint16(rank, n, odd, name):
    rf.broadcast(np.zeros(4, dtype=np.uint16 if rank == odd else np.int32), 0, name=name)


def allgather_object(rank, n, odd, name):
    x = np.array([None, 1], dtype=object) if rank == odd else np.zeros(2, dtype=np.int64)
    rf.allgather(x, name=name)


def broadcast_root_too_big(rank, n, odd, name):
    rf.broadcast(_f32(4), n if rank == odd else 0, name=name)


def broadcast_root_negative(rank, n, odd, name):
    rf.broadcast(_f32(4), -1 if rank == odd else 0, name=name)


def alltoall_splits_wrong_length(rank, n, odd, name):
    splits = [2] * (n + 1) if rank == odd else [2] * n
    rf.alltoall(_f32(2 * n), splits=splits, name=name)


def alltoall_splits_wrong_sum(rank, n, odd, name):
    splits = [2] * (n - 1) + [3] if rank == odd else [2] * n
    rf.alltoall(_f32(2 * n), splits=splits, name=name)


def alltoall_splits_negative(rank, n, odd, name):
    splits = [-1] + [2] * (n - 2) + [5] if rank == odd else [2] * n  # sums to 2n
    rf.alltoall(_f32(2 * n), splits=splits, name=name)


def alltoall_indivisible(rank, n, odd, name):
    rf.alltoall(_f32(2 * n + 1) if rank == odd else _f32(2 * n), name=name)


INVALID = {
    "allreduce": [allreduce_noncontiguous, allreduce_complex64, allreduce_uint32],
    "allreduce_": [allreduce_inplace_noncontiguous],
    "broadcast": [
        broadcast_noncontiguous,
        broadcast_uint16,
        broadcast_root_too_big,
        broadcast_root_negative,
    ],
    "allgather": [allgather_noncontiguous, allgather_object],
    "reducescatter": [reducescatter_noncontiguous],
    "alltoall": [
        alltoall_noncontiguous,
        alltoall_splits_wrong_length,
        alltoall_splits_wrong_sum,
        alltoall_splits_negative,
        alltoall_indivisible,
    ],
}


def allreduce_dtype(rank, n, odd, name):
    x = np.zeros(4, dtype=np.int32 if rank == odd else np.float32)
    rf.allreduce(x, op=rf.Sum, name=name)


def allreduce_shape(rank, n, odd, name):
    rf.allreduce(np.zeros(5 if rank == odd else 4, dtype=np.float32), op=rf.Sum, name=name)


def allreduce_shape_transposed(rank, n, odd, name):
    x = np.zeros((3, 2) if rank == odd else (2, 3), dtype=np.float32)
    rf.allreduce(x, op=rf.Sum, name=name)


def allreduce_op(rank, n, odd, name):
    rf.allreduce(_f32(4), op=rf.Max if rank == odd else rf.Sum, name=name)


def broadcast_root(rank, n, odd, name):
    rf.broadcast(_f32(4), (odd + 1) % n if rank == odd else odd, name=name)


def broadcast_dtype(rank, n, odd, name):
    rf.broadcast(np.zeros(4, dtype=np.float64 if rank == odd else np.float32), 0, name=name)


def allgather_trailing_shape(rank, n, odd, name):
    rf.allgather(np.zeros((2, 4 if rank == odd else 3), dtype=np.float32), name=name)


def allgather_dtype(rank, n, odd, name):
    rf.allgather(np.zeros(3, dtype=np.int8 if rank == odd else np.uint8), name=name)


def reducescatter_shape(rank, n, odd, name):
    rf.reducescatter(np.zeros(7 if rank == odd else 6, dtype=np.int32), op=rf.Sum, name=name)


def reducescatter_op(rank, n, odd, name):
    rf.reducescatter(_f32(6), op=rf.Min if rank == odd else rf.Max, name=name)


def alltoall_dtype(rank, n, odd, name):
    rf.alltoall(np.zeros(2 * n, dtype=np.int64 if rank == odd else np.float64), name=name)


def alltoall_trailing_shape(rank, n, odd, name):
    rf.alltoall(np.zeros((2 * n, 2 if rank == odd else 1), dtype=np.float32), name=name)


# scenario -> fragments every rank's message must contain (besides the name and the odd rank)
MISMATCH = {
    allreduce_dtype: ["int32", "float32"],
    allreduce_shape: ["shape"],
    allreduce_shape_transposed: ["shape"],
    allreduce_op: ["sum", "max"],
    broadcast_root: ["root"],
    broadcast_dtype: ["float64", "float32"],
    allgather_trailing_shape: ["shape"],
    allgather_dtype: ["int8", "uint8"],
    reducescatter_shape: ["shape"],
    reducescatter_op: ["min", "max"],
    alltoall_dtype: ["int64", "float64"],
    alltoall_trailing_shape: ["shape"],
}


def _run_scenario(scenario, odd, name):
    """Run the scenario, then a correct allreduce; return (error or None, allreduce or error)."""
    rank, n = rf.rank(), rf.size()
    try:
        scenario(rank, n, odd, name)
        first = None
    except Exception as exc:
        first = exc
    try:
        after = rf.allreduce(np.full(3, rank + 1, dtype=np.int64), op=rf.Sum, name=name + ".after")
    except Exception as exc:
        after = exc
    return first, after


def check_usable_after(results, n):
    expected = np.full(3, n * (n + 1) // 2, dtype=np.int64)
    for rank, (_, after) in enumerate(results):
        assert isinstance(after, np.ndarray), f"rank {rank}: allreduce after the error: {after!r}"
        np.testing.assert_array_equal(after, expected, err_msg=f"rank {rank}: after the error")


def _as_results(values):
    return [harness.RankResult(rank, error=first) for rank, (first, _) in enumerate(values)]


INVALID_CASES = [(op, scenario) for op, scenarios in INVALID.items() for scenario in scenarios]


@pytest.mark.parametrize(
    ("opname", "scenario"), INVALID_CASES, ids=[s.__name__ for _, s in INVALID_CASES]
)
@pytest.mark.parametrize(("n", "odd"), WORLDS, ids=[f"n{n}-odd{o}" for n, o in WORLDS])
def test_invalid_input_on_one_rank(bad_pools, n, odd, opname, scenario):
    name = f"bad.{scenario.__name__}"
    values = bad_pools.call(n, _run_scenario, scenario, odd, name)
    for result in _as_results(values):
        if result.rank == odd:
            harness.assert_raised(result, rf.InvalidArgumentError, f"rank {odd}", opname, name)
            assert isinstance(result.error, ValueError), result.describe()
        else:
            harness.assert_raised(
                result, rf.MismatchError, f"rank {result.rank}", f"rank {odd}", name
            )
    check_usable_after(values, n)


@pytest.mark.parametrize("scenario", list(MISMATCH), ids=[s.__name__ for s in MISMATCH])
@pytest.mark.parametrize(("n", "odd"), WORLDS, ids=[f"n{n}-odd{o}" for n, o in WORLDS])
def test_mismatch_between_ranks(bad_pools, n, odd, scenario):
    name = f"mismatch.{scenario.__name__}"
    values = bad_pools.call(n, _run_scenario, scenario, odd, name)
    for result in _as_results(values):
        harness.assert_raised(
            result,
            rf.MismatchError,
            f"rank {result.rank}",
            f"rank {odd}",
            name,
            *MISMATCH[scenario],
        )
    check_usable_after(values, n)


# -- invalid input on every rank ------------------------------------------------------------------


def all_complex(rank, n, odd, name):
    rf.allreduce(np.zeros(4, dtype=np.complex128), op=rf.Sum, name=name)


def all_bool_sum(rank, n, odd, name):
    rf.allreduce(np.ones(4, dtype=np.bool_), op=rf.Sum, name=name)


def all_bool_average(rank, n, odd, name):
    rf.allreduce(np.ones(4, dtype=np.bool_), op=rf.Average, name=name)


def all_bool_product(rank, n, odd, name):
    rf.allreduce(np.ones(4, dtype=np.bool_), op=rf.Product, name=name)


def all_bool_reducescatter_sum(rank, n, odd, name):
    rf.reducescatter(np.ones(4, dtype=np.bool_), op=rf.Sum, name=name)


def all_root_out_of_range(rank, n, odd, name):
    rf.broadcast(_f32(3), n, name=name)


def all_noncontiguous(rank, n, odd, name):
    rf.allgather(_noncontiguous(3), name=name)


EVERY_RANK = {
    all_complex: "allreduce",
    all_bool_sum: "allreduce",
    all_bool_average: "allreduce",
    all_bool_product: "allreduce",
    all_bool_reducescatter_sum: "reducescatter",
    all_root_out_of_range: "broadcast",
    all_noncontiguous: "allgather",
}


@pytest.mark.parametrize("scenario", list(EVERY_RANK), ids=[s.__name__ for s in EVERY_RANK])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_invalid_input_on_every_rank(bad_pools, n, scenario):
    name = f"allbad.{scenario.__name__}"
    values = bad_pools.call(n, _run_scenario, scenario, 0, name)
    for result in _as_results(values):
        harness.assert_raised(
            result, rf.InvalidArgumentError, f"rank {result.rank}", EVERY_RANK[scenario], name
        )
    check_usable_after(values, n)


# -- point to point: only the caller is involved --------------------------------------------------


def send_out_of_range(rank, n, odd, name):
    if rank == odd:
        rf.send(_f32(3), n)


def send_negative(rank, n, odd, name):
    if rank == odd:
        rf.send(_f32(3), -1)


def recv_out_of_range(rank, n, odd, name):
    if rank == odd:
        rf.recv(_f32(3), n + 3)


def send_noncontiguous(rank, n, odd, name):
    if rank == odd:
        rf.send(_noncontiguous(3), (odd + 1) % n)


def recv_unsupported_dtype(rank, n, odd, name):
    if rank == odd:
        rf.recv(np.zeros(3, dtype=np.complex64), (odd + 1) % n)


P2P = {
    send_out_of_range: "send",
    send_negative: "send",
    recv_out_of_range: "recv",
    send_noncontiguous: "send",
    recv_unsupported_dtype: "recv",
}


@pytest.mark.parametrize("scenario", list(P2P), ids=[s.__name__ for s in P2P])
def test_point_to_point_invalid(bad_pools, scenario):
    n, odd = 3, 1
    values = bad_pools.call(n, _run_scenario, scenario, odd, "p2p")
    for result in _as_results(values):
        if result.rank == odd:
            harness.assert_raised(result, rf.InvalidArgumentError, f"rank {odd}", P2P[scenario])
        else:
            assert result.error is None, result.describe()
    check_usable_after(values, n)
