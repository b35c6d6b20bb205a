"""Reducescatter and alltoall through the collective areas (issue 13): each rank reduces its own
block straight from its peers' slots (collectives/shm_direct_reduce_scatter.cc), and alltoall
copies every rank's rows out of the senders' slots (collectives/shm_direct_alltoall.cc).

Every dtype x op x size (0, 1, odd, not divisible by N, larger than the whole area: many pieces)
at N = 2, 3, 4 against a numpy fold in ring_reduce_scatter's documented order, bit for bit; the
ring forced gives the same bits; prescale/postscale; alltoall with uneven splits (one peer
getting no rows) equal to pairwise exchange; fused, async and process-set paths; and a rank
SIGKILLed mid-collective makes every survivor raise within 5 s, leaving /dev/shm as it was.
One job per (algorithm, N) serves every case, so the file stays short on 2 cores.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref
from tests.shm_kill import sigkill_during_loop
from tests.test_failures import DEAD_PEER_S

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
        "RINGFLOW_REDUCESCATTER_ALGORITHM": "direct",
        "RINGFLOW_ALLTOALL_ALGORITHM": "direct",
    },
    "ring": {
        **BASE_ENV,
        "RINGFLOW_REDUCESCATTER_ALGORITHM": "ring",
        "RINGFLOW_ALLTOALL_ALGORITHM": "pairwise",
    },
}
COLS = 3
BIG = AREA_BYTES // COLS + 5
"""Rows of 3 elements: more than the whole area for every dtype."""
DTYPES = [d for d in ref.DTYPES if d != "bool"]
SCALED = [
    ("float32", "Sum", 0.5, 3.0),
    ("float16", "Average", 3.0, 0.25),
    ("int32", "Sum", 2.0, 1.5),
]
"""(dtype, op, prescale, postscale) cases."""


def _rows(n):
    return [0, 1, 7, 10 * n + 1, BIG]


def _input(dtype_name, op, rows, rank, tag="rs"):
    """Full-range integers (Sum and Product wrap); random floats in [0.5, 1.5) for the ops that
    round, so a change of reduction order shows in the bits; normal ones for Min/Max."""
    seed = ref.seed_of(tag, dtype_name, op, rows)
    dt = ref.dtype(dtype_name)
    if ref.is_float(dt) and op not in ("Min", "Max"):
        return ref.positive_input(seed, rank, (rows, COLS), dtype_name)
    return ref.exact_input(seed, rank, (rows, COLS), dtype_name, op)


def scatter_order(inputs, op, prescale=1.0, postscale=1.0):
    """The documented float order of ring_reduce_scatter: block c (np.array_split's rows) is
    x_{c+N} op (... op (x_{c+2} op x_{c+1})), each step rounded to the dtype (float16 and
    bfloat16 through float32); then scaled by postscale (and 1/N for Average). Every block."""
    n, dt = len(inputs), inputs[0].dtype
    acc = ref.acc_dtype(dt) if ref.is_float(dt) else dt
    inputs = [ref.scale(x, prescale) for x in inputs]
    blocks = []
    for c in range(n):
        parts = [np.array_split(x, n, axis=0)[c] for x in inputs]
        total = parts[(c + 1) % n]
        for k in range(2, n + 1):
            total = ref._combine(parts[(c + k) % n].astype(acc), total.astype(acc), op).astype(dt)
        blocks.append(ref.scale(total, ref.finishing_factor(op, postscale, n)))
    return blocks


# -- rank functions -------------------------------------------------------------------------------


def _direct_count():
    return rf.engine_stats()["direct_gathers"]


def _matrix(rows_list, dtypes, a2a_dtypes):
    """Every reducescatter case, the scaled ones, then alltoalls with uneven splits."""
    me, n = rf.rank(), rf.size()
    before = _direct_count()
    out = {}
    for dtype_name in dtypes:
        for op in ref.OPS:
            for rows in rows_list:
                x = _input(dtype_name, op, rows, me)
                out[dtype_name, op, rows] = rf.reducescatter(
                    x, op=getattr(rf, op), name=f"rs.{dtype_name}.{op}.{rows}"
                )
    for dtype_name, op, pre, post in SCALED:
        x = _input(dtype_name, op, BIG, me, "scaled")
        out["scaled", dtype_name] = rf.reducescatter(
            x,
            op=getattr(rf, op),
            prescale_factor=pre,
            postscale_factor=post,
            name=f"sc.{dtype_name}",
        )
    for dtype_name in a2a_dtypes:
        for rows in rows_list:
            x = ref.bit_patterns(ref.seed_of("a2a", dtype_name, rows), me, (rows, COLS), dtype_name)
            splits = ref.alltoall_splits(ref.seed_of("a2a", rows), me, n, rows)
            out["a2a", dtype_name, rows] = rf.alltoall(x, splits, name=f"a2a.{dtype_name}.{rows}")
    return out, _direct_count() - before


def _fused_and_async(rows_list):
    """The same float tensors as one grouped (fused) reducescatter, one call each, and async
    calls in flight together (reducescatters and alltoalls), all direct."""
    me, n = rf.rank(), rf.size()
    tensors = [_input("float32", "Sum", rows, me) for rows in rows_list]
    tensors += [_input("bfloat16", "Average", rows, me) for rows in rows_list]
    before_fused = rf.engine_stats()["fused_ops"]
    fused = rf.grouped_reducescatter(tensors, op=rf.Sum, name="fused")
    did_fuse = rf.engine_stats()["fused_ops"] > before_fused
    alone = [rf.reducescatter(t, op=rf.Sum, name=f"alone.{i}") for i, t in enumerate(tensors)]
    handles = [
        rf.reducescatter_async(t, op=rf.Sum, name=f"async.{i}") for i, t in enumerate(tensors)
    ]
    a2a_in = [
        ref.bit_patterns(ref.seed_of("a2a.async", "float32", rows), me, (rows, COLS), "float32")
        for rows in rows_list
    ]
    a2a = [
        rf.alltoall_async(
            x, ref.alltoall_splits(ref.seed_of("a2a.async", rows), me, n, rows), name=f"aa.{rows}"
        )
        for x, rows in zip(a2a_in, rows_list)
    ]
    in_flight = [rf.synchronize(h) for h in handles]
    exchanged = [rf.synchronize(h) for h in a2a]
    # Prescaled, the fused bucket is packed and scaled first (not gathered from the tensors).
    scaled = rf.grouped_reducescatter(tensors, op=rf.Sum, prescale_factor=0.5, name="fused.sc")
    scaled_alone = [
        rf.reducescatter(t, op=rf.Sum, prescale_factor=0.5, name=f"sc.{i}")
        for i, t in enumerate(tensors)
    ]
    return fused, alone, in_flight, exchanged, did_fuse, list(zip(scaled, scaled_alone))


def _sets_interleaved(rows_list):
    """Reducescatters, alltoalls and allreduces on the world and on overlapping process sets,
    one after another: each pair's counters must stay in step whichever set used the areas."""
    me = rf.rank()
    sets = [rf.add_process_set([0, 2]), rf.add_process_set([1, 2, 3]), None]
    before = _direct_count()
    out = []
    for round_ in range(2):
        for i, ps in enumerate(sets):
            if ps is not None and me not in ps.ranks:
                continue
            kwargs = {} if ps is None else {"process_set": ps}
            size = rf.size() if ps is None else len(ps.ranks)
            index = me if ps is None else ps.ranks.index(me)
            for rows in rows_list:
                x = _input("float32", "Sum", rows, me + 10 * i + round_, "sets")
                out.append(rf.reducescatter(x, op=rf.Sum, name=f"s{i}.{rows}.{round_}", **kwargs))
                splits = ref.alltoall_splits(ref.seed_of("sets", rows), index, size, rows)
                out.append(rf.alltoall(x, splits, name=f"a{i}.{rows}.{round_}", **kwargs)[0])
                out.append(rf.allreduce(x, op=rf.Sum, name=f"r{i}.{rows}.{round_}", **kwargs))
    return out, _direct_count() - before


def _loop_until_error(victim, kind):
    """Reducescatter or alltoall 200 000 float32 until it raises; the victim announces (through
    the store) that the loop runs. Returns (steps, the error, seconds from the last success)."""
    n = rf.size()
    x = np.ones((200_000 // COLS, COLS), dtype=np.float32)
    splits = [x.shape[0] // n] * n
    last_ok = time.monotonic()
    for step in range(1_000_000):
        if step == 3 and rf.rank() == victim:
            harness.rank_store().set("test/looping", b"1")
        try:
            if kind == "reducescatter":
                rf.reducescatter(x, op=rf.Sum, name="hang.rs")
            else:
                rf.alltoall(x, splits, name="hang.a2a")
        except rf.Error as exc:
            return step, exc, time.monotonic() - last_ok
        last_ok = time.monotonic()
    raise AssertionError("the loop never failed")


def _auto_choice(rows_list):
    """How many float32 reducescatters and alltoalls of these rows the automatic choice ran
    directly (4096-column rows)."""
    n = rf.size()
    before = _direct_count()
    for rows in rows_list:
        x = np.ones((rows, 4096), dtype=np.float32)
        rf.reducescatter(x, op=rf.Sum, name=f"auto.rs.{rows}")
    scattered = _direct_count() - before
    for rows in rows_list:
        x = np.ones((rows * n, 4096), dtype=np.float32)
        rf.alltoall(x, [rows] * n, name=f"auto.a2a.{rows}")
    return scattered, _direct_count() - before - scattered


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


def _expected_alltoall(dtype_name, rows, n, rank, tag="a2a"):
    inputs = [
        ref.bit_patterns(ref.seed_of(tag, dtype_name, rows), r, (rows, COLS), dtype_name)
        for r in range(n)
    ]
    splits = [ref.alltoall_splits(ref.seed_of(tag, rows), r, n, rows) for r in range(n)]
    return ref.alltoall_expected(inputs, splits, rank)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_every_dtype_and_op_exact_and_equal_to_the_ring(jobs, n):
    rows_list = _rows(n)
    a2a_dtypes = ["uint8", "float16", "float64"]
    direct = jobs("direct", n).call(_matrix, rows_list, DTYPES, a2a_dtypes)
    ring = jobs("ring", n).call(_matrix, rows_list, ref.FLOAT_DTYPES, a2a_dtypes[:1])
    nonempty = len(DTYPES) * len(ref.OPS) * (len(rows_list) - 1) + len(SCALED)
    for rank in range(n):
        assert direct[rank][1] >= nonempty, f"rank {rank}: {direct[rank][1]} went direct"
        assert ring[rank][1] == 0, f"rank {rank}: the forced ring went direct"
    for dtype_name in DTYPES:
        for op in ref.OPS:
            for rows in rows_list:
                key = (dtype_name, op, rows)
                inputs = [_input(dtype_name, op, rows, r) for r in range(n)]
                expected = scatter_order(inputs, op)
                for rank in range(n):
                    context = f"n {n}, rank {rank}, {dtype_name} {op}, {rows} rows"
                    got = direct[rank][0][key]
                    ref.assert_bits_equal(got, expected[rank], f"direct, {context}")
                    if dtype_name in ref.FLOAT_DTYPES:
                        ref.assert_bits_equal(ring[rank][0][key], got, f"ring, {context}")
    for dtype_name, op, pre, post in SCALED:
        inputs = [_input(dtype_name, op, BIG, r, "scaled") for r in range(n)]
        expected = scatter_order(inputs, op, pre, post)
        for rank in range(n):
            got = direct[rank][0]["scaled", dtype_name]
            ref.assert_bits_equal(got, expected[rank], f"scaled {dtype_name}, rank {rank}")
    for dtype_name in a2a_dtypes:
        for rows in rows_list:
            for rank in range(n):
                rows_got, splits_got = direct[rank][0]["a2a", dtype_name, rows]
                rows_want, splits_want = _expected_alltoall(dtype_name, rows, n, rank)
                context = f"alltoall n {n}, rank {rank}, {dtype_name}, {rows} rows"
                ref.assert_bits_equal(rows_got, rows_want, context)
                np.testing.assert_array_equal(splits_got, splits_want, err_msg=context)
                if dtype_name == a2a_dtypes[0]:
                    ref.assert_bits_equal(
                        ring[rank][0]["a2a", dtype_name, rows][0], rows_got, context
                    )


@pytest.mark.parametrize("n", [3])
def test_fused_async_equal_unfused(jobs, n):
    rows_list = [1, 7, 10 * n + 1, BIG]
    results = jobs("direct", n).call(_fused_and_async, rows_list)
    for rank, (fused, alone, in_flight, exchanged, did_fuse, scaled) in enumerate(results):
        assert did_fuse, f"rank {rank}: the grouped call was not fused"
        for i, (a, b) in enumerate(scaled):
            ref.assert_bits_equal(a, b, f"rank {rank}, tensor {i}: prescaled fused differs")
        for i, (a, b, c) in enumerate(zip(fused, alone, in_flight)):
            ref.assert_bits_equal(a, b, f"rank {rank}, tensor {i}: fused differs from alone")
            ref.assert_bits_equal(c, b, f"rank {rank}, tensor {i}: async differs from alone")
        for rows, (got, splits) in zip(rows_list, exchanged):
            want, want_splits = _expected_alltoall("float32", rows, n, rank, "a2a.async")
            ref.assert_bits_equal(got, want, f"rank {rank}, async alltoall of {rows} rows")
            np.testing.assert_array_equal(splits, want_splits)
    for i in range(len(rows_list)):
        inputs = [_input("float32", "Sum", rows_list[i], r) for r in range(n)]
        expected = scatter_order(inputs, "Sum")
        for rank in range(n):
            ref.assert_bits_equal(results[rank][1][i], expected[rank], f"rank {rank}, tensor {i}")


def test_process_sets_share_the_areas(jobs):
    """World, {0, 2} and {1, 2, 3} in turn (twice), mixed with allreduces: exact, all direct."""
    n, rows_list = 4, [7, BIG]
    results = jobs("direct", n).call(_sets_interleaved, rows_list)
    members = [[0, 2], [1, 2, 3], list(range(n))]
    for rank, (got, direct) in enumerate(results):
        expected = []
        for round_ in range(2):
            for i, ranks in enumerate(members):
                if rank not in ranks:
                    continue
                index = ranks.index(rank)
                for rows in rows_list:
                    inputs = [
                        _input("float32", "Sum", rows, r + 10 * i + round_, "sets") for r in ranks
                    ]
                    expected.append(scatter_order(inputs, "Sum")[index])
                    splits = [
                        ref.alltoall_splits(ref.seed_of("sets", rows), j, len(ranks), rows)
                        for j in range(len(ranks))
                    ]
                    expected.append(ref.alltoall_expected(inputs, splits, index)[0])
                    expected.append(None)  # the allreduce: test_shm_direct checks its values
        scattered = sum(1 for e in expected if e is not None)
        assert direct >= scattered, f"rank {rank}: {direct} of {scattered} direct"
        for j, (a, b) in enumerate(zip(got, expected)):
            if b is not None:
                ref.assert_bits_equal(a, b, f"rank {rank}, collective {j}")


def test_auto_choice(make_job):
    """Default algorithms at N = 2: every reducescatter direct; alltoall direct from 256 KiB
    sent by rank 0 (rows of 16 KiB: 2 x 1 rows stay pairwise, 2 x 16 go direct)."""
    job = make_job(2, env=BASE_ENV).start()
    assert job.call(_auto_choice, [1, 16]) == [(2, 1), (2, 1)]


@pytest.mark.parametrize(("n", "kind"), [(4, "reducescatter"), (3, "alltoall")])
def test_sigkill_mid_collective(make_job, n, kind):
    """Ranks loop over 800 KB collectives (hundreds of pieces of the tiny area); one is killed:
    every survivor raises within 5 s naming it, and /dev/shm keeps nothing (tests/shm_kill.py)."""
    job = make_job(n, env=ENVS["direct"], rank_timeout=10.0).start()
    loop = functools.partial(_loop_until_error, kind=kind)
    results = sigkill_during_loop(job, n - 1, loop, min_step=3, deadline=40)
    for result in results:
        if result.rank != n - 1:
            assert result.value[2] < DEAD_PEER_S, result.describe()
