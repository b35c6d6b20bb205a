"""The direct shared-memory allreduce (issue 13): ranks of one host reduce their slice of each
piece straight from every peer's collective area (collectives/shm_direct_allreduce.cc).

Every dtype x op x size (0, 1, odd, not divisible by N, larger than the whole area: many
pieces) at N = 2, 3, 4 against a numpy fold in the documented order (chunk c of the ring's
chunks from rank c onwards), bit for bit, on random floats where the order shows; the same
requests with the ring forced give the same bits; fused and unfused give the same bits; and a
rank SIGKILLed mid-collective makes every survivor raise within 5 s, leaving /dev/shm as it was.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref
from tests.shm_kill import sigkill_during_loop
from tests.test_failure_reports import _loop_until_error
from tests.test_shm_transport import _shm_segments

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host")

SLOT_BYTES = 4096
AREA_BYTES = 3 * SLOT_BYTES
"""A tiny area (three 4 KiB slots), so that modest sizes already take many pieces."""
BASE_ENV = {
    "RINGFLOW_TRANSPORT": "shm",
    "RINGFLOW_SHM_AREA_BYTES": str(AREA_BYTES),
    "RINGFLOW_CYCLE_TIME": "5",
}
ENVS = {
    "direct": {
        **BASE_ENV,
        "RINGFLOW_ALLREDUCE_ALGORITHM": "direct",
        "RINGFLOW_ALLGATHER_ALGORITHM": "direct",
        "RINGFLOW_BROADCAST_ALGORITHM": "direct",
    },
    "ring": {**BASE_ENV, "RINGFLOW_ALLREDUCE_ALGORITHM": "ring"},
}
DTYPES = [d for d in ref.DTYPES if d != "bool"]
LARGE = AREA_BYTES + 5
"""Elements: more than the whole area for every dtype (4 pieces of uint8, 24 of float64)."""


def _sizes(n):
    return [0, 1, 7, 10 * n + 1, LARGE]


def _input(dtype_name, op, size, rank):
    """Full-range integers (Sum and Product wrap); random floats in [0.5, 1.5) for the ops
    that round, so a change of reduction order shows in the bits; normal ones for Min/Max."""
    seed = ref.seed_of("direct", dtype_name, op, size)
    dt = ref.dtype(dtype_name)
    if ref.is_float(dt) and op not in ("Min", "Max"):
        return ref.positive_input(seed, rank, (size,), dtype_name)
    return ref.exact_input(seed, rank, (size,), dtype_name, op)


def ring_order(inputs, op):
    """The documented float order: element i of chunk c (even_blocks(count, N)) is
    x_{c+N-1} op (... op (x_{c+1} op x_c)), each step rounded to the dtype (float16 and
    bfloat16 through float32); Average then scales by 1/N in the accumulation type."""
    n, count, dt = len(inputs), inputs[0].size, inputs[0].dtype
    acc = ref.acc_dtype(dt) if ref.is_float(dt) else dt
    out = np.empty(count, dtype=dt)
    bounds = np.cumsum([0] + [count // n + (1 if c < count % n else 0) for c in range(n)])
    for c in range(n):
        part = slice(bounds[c], bounds[c + 1])
        total = inputs[c][part]
        for k in range(1, n):
            step = ref._combine(inputs[(c + k) % n][part].astype(acc), total.astype(acc), op)
            total = step.astype(dt)
        out[part] = total
    return ref.scale(out, ref.finishing_factor(op, 1.0, n))


# -- rank functions -------------------------------------------------------------------------------


def _matrix(n_sizes, dtypes):
    me = rf.rank()
    before = rf.engine_stats()["direct_allreduces"]
    out = {}
    for dtype_name in dtypes:
        for op in ref.OPS:
            for size in n_sizes:
                x = _input(dtype_name, op, size, me)
                out[dtype_name, op, size] = rf.allreduce(
                    x, op=getattr(rf, op), name=f"m.{dtype_name}.{op}.{size}"
                )
    return out, rf.engine_stats()["direct_allreduces"] - before


def _fused_and_unfused(n_sizes):
    """The same float tensors in one grouped (fused) call, then one call each."""
    me = rf.rank()
    tensors = [_input("float32", "Sum", size, me) for size in n_sizes]
    tensors += [_input("float16", "Sum", size, me + 1) for size in n_sizes]
    before = rf.engine_stats()["fused_ops"]
    fused = rf.grouped_allreduce(tensors, op=rf.Sum, name="fused")
    did_fuse = rf.engine_stats()["fused_ops"] > before
    alone = [rf.allreduce(t, op=rf.Sum, name=f"alone.{i}") for i, t in enumerate(tensors)]
    return fused, alone, did_fuse


def _sets_interleaved(sizes):
    """Allreduces on the world and on overlapping process sets, one after another: each pair's
    counters must stay in step whichever set used the areas last."""
    me = rf.rank()
    sets = [rf.add_process_set([0, 2]), rf.add_process_set([1, 2, 3]), None]
    before = rf.engine_stats()["direct_allreduces"]
    out = []
    for round_ in range(2):
        for i, ps in enumerate(sets):
            if ps is not None and me not in ps.ranks:
                continue
            for size in sizes:
                x = _input("float32", "Sum", size, me + 10 * i + round_)
                kwargs = {} if ps is None else {"process_set": ps}
                out.append(rf.allreduce(x, op=rf.Sum, name=f"s{i}.{size}.{round_}", **kwargs))
    return out, rf.engine_stats()["direct_allreduces"] - before


def _auto_choice(counts):
    """How many of these float32 allreduces the automatic choice ran directly."""
    before = rf.engine_stats()["direct_allreduces"]
    for count in counts:
        rf.allreduce(np.ones(count, dtype=np.float32), op=rf.Sum, name=f"auto.{count}")
    return rf.engine_stats()["direct_allreduces"] - before


def _gathers(rows_of, dtypes):
    """Allgathers whose first dimension differs by rank (some 0, some beyond the area) and
    broadcasts from every root, on 3-column rows."""
    me, n = rf.rank(), rf.size()
    before = rf.engine_stats()["direct_gathers"]
    out = {}
    for dtype_name in dtypes:
        for rows in rows_of:
            mine = ref.bit_patterns(
                ref.seed_of("ag", dtype_name, rows), me, (rows[me], 3), dtype_name
            )
            out["ag", dtype_name, rows] = rf.allgather(mine, name=f"ag.{dtype_name}.{rows}")
            for root in range(n):
                x = ref.bit_patterns(
                    ref.seed_of("bc", dtype_name, rows), me, (rows[0], 3), dtype_name
                )
                out["bc", dtype_name, rows, root] = rf.broadcast(x, root, name=f"bc.{rows}.{root}")
    return out, rf.engine_stats()["direct_gathers"] - before


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jobs():
    started = {}

    def get(kind, n):
        if (kind, n) not in started:
            started[kind, n] = harness.Job(n, env=ENVS[kind]).start()
        return started[kind, n]

    yield get
    for job in started.values():
        job.close()


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_dtype_and_op_exact_and_equal_to_the_ring(jobs, n):
    sizes = _sizes(n)
    direct = jobs("direct", n).call(_matrix, sizes, DTYPES)
    # Integers are exact in any order: the ring is compared on the floats.
    ring = jobs("ring", n).call(_matrix, sizes, ref.FLOAT_DTYPES)
    nonempty = len(DTYPES) * len(ref.OPS) * (len(sizes) - 1)
    for rank in range(n):
        assert direct[rank][1] == nonempty, f"rank {rank}: {direct[rank][1]} direct allreduces"
        assert ring[rank][1] == 0, f"rank {rank}: the forced ring went direct"
    for dtype_name in DTYPES:
        for op in ref.OPS:
            for size in sizes:
                key = (dtype_name, op, size)
                context = f"n {n}, {dtype_name} {op}, {size} elements"
                inputs = [_input(dtype_name, op, size, r) for r in range(n)]
                expected = ring_order(inputs, op)
                for rank in range(n):
                    got = direct[rank][0][key]
                    ref.assert_bits_equal(got, expected, f"direct, rank {rank}, {context}")
                    if dtype_name in ref.FLOAT_DTYPES:
                        ring_got = ring[rank][0][key]
                        ref.assert_bits_equal(ring_got, got, f"ring, rank {rank}, {context}")


@pytest.mark.parametrize("n", [3, 4])
def test_fused_equals_unfused(jobs, n):
    results = jobs("direct", n).call(_fused_and_unfused, [1, 7, 10 * n + 1, LARGE, 3 * LARGE])
    for rank, (fused, alone, did_fuse) in enumerate(results):
        assert did_fuse, f"rank {rank}: the grouped call was not fused"
        for i, (a, b) in enumerate(zip(fused, alone)):
            ref.assert_bits_equal(a, b, f"rank {rank}, tensor {i}: fused differs from alone")
            ref.assert_bits_equal(a, results[0][0][i], f"rank {rank}, tensor {i} vs rank 0")


@pytest.mark.parametrize("n", [2, 4])
def test_sigkill_mid_collective(make_job, n):
    """Ranks loop over 800 KB allreduces (50 pieces of the tiny area); one is SIGKILLed."""
    job = make_job(n, env=ENVS["direct"], rank_timeout=10.0)
    job.start()
    sigkill_during_loop(job, n - 1, _loop_until_error, min_step=3, deadline=40)


def test_process_sets_share_the_areas(jobs):
    """World, {0, 2} and {1, 2, 3} in turn (twice): exact, and every one of them direct."""
    n, sizes = 4, [7, LARGE]
    results = jobs("direct", n).call(_sets_interleaved, sizes)
    members = [[0, 2], [1, 2, 3], list(range(n))]
    for rank, (got, direct) in enumerate(results):
        expected = []
        for round_ in range(2):
            for i, ranks in enumerate(members):
                if rank not in ranks:
                    continue
                for size in sizes:
                    inputs = [_input("float32", "Sum", size, r + 10 * i + round_) for r in ranks]
                    expected.append(ring_order(inputs, "Sum"))
        assert direct == len(expected), f"rank {rank}: {direct} of {len(expected)} direct"
        for j, (a, b) in enumerate(zip(got, expected)):
            ref.assert_bits_equal(a, b, f"rank {rank}, allreduce {j}")


def test_auto_choice(make_job):
    """Default settings at N = 3: Bruck's sizes stay Bruck, above them the allreduce is direct."""
    job = make_job(3, env={"RINGFLOW_TRANSPORT": "shm"}).start()
    threshold = 65536 // 4 // 2  # Bruck's largest float32 count at N = 3
    assert job.call(_auto_choice, [1, threshold, threshold + 1, 300_001]) == [2, 2, 2]


def _transports_sum_and_direct():
    x = _input("int64", "Sum", 300_001, rf.rank())
    before = rf.engine_stats()["direct_allreduces"]
    total = rf.allreduce(x, op=rf.Sum, name="no.area")
    return rf.peer_transports(), total, rf.engine_stats()["direct_allreduces"] - before


def test_no_room_for_the_area(make_job):
    """An area larger than /dev/shm: the segment is made without one (a warning), the pairs
    still share memory, and allreduce goes around the rings, exact."""
    free = os.statvfs("/dev/shm")
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    env = {**ENVS["direct"], "RINGFLOW_SHM_AREA_BYTES": str(too_big)}
    job = make_job(3, env=env).start()
    expected = ring_order([_input("int64", "Sum", 300_001, r) for r in range(3)], "Sum")
    for rank, (kinds, total, direct) in enumerate(job.call(_transports_sum_and_direct)):
        assert kinds == ["self" if r == rank else "shm" for r in range(3)], kinds
        assert direct == 0, f"rank {rank} went direct without an area"
        ref.assert_bits_equal(total, expected, f"rank {rank}")
    assert "no room for the" in job.log_tail(0)
    assert _shm_segments([job.pid(r) for r in range(3)]) == []


@pytest.mark.parametrize("n", [2, 3, 4])
def test_allgather_and_broadcast(jobs, n):
    """Forced direct (also at N = 2): bit patterns (NaNs, -0.0) copied exactly."""
    big = AREA_BYTES // 3 + 5  # rows of 3 elements: beyond the area for every dtype
    rows_of = [tuple([0] * n), tuple(range(1, n + 1)), tuple([big] + [0] * (n - 2) + [7])]
    dtypes = ["uint8", "float16", "float64"]
    results = jobs("direct", n).call(_gathers, rows_of, dtypes)
    for rank, (got, direct) in enumerate(results):
        assert direct > 0, f"rank {rank}: no allgather or broadcast went direct"
        for dtype_name in dtypes:
            for rows in rows_of:
                blocks = [
                    ref.bit_patterns(
                        ref.seed_of("ag", dtype_name, rows), r, (rows[r], 3), dtype_name
                    )
                    for r in range(n)
                ]
                context = f"rank {rank}, {dtype_name}, rows {rows}"
                ref.assert_bits_equal(got["ag", dtype_name, rows], np.concatenate(blocks), context)
                for root in range(n):
                    sent = ref.bit_patterns(
                        ref.seed_of("bc", dtype_name, rows), root, (rows[0], 3), dtype_name
                    )
                    ref.assert_bits_equal(got["bc", dtype_name, rows, root], sent, context)
