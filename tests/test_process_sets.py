"""Process sets: collectives over a subset of the ranks, exact, concurrently, with clear errors.

Sets are added and removed by every rank of the job inside each rank function (the pools are
persistent), in a try/finally so that a failing check does not leave sets behind. Every request
is named: ranks make different numbers of calls, so auto names would not agree.
"""

from __future__ import annotations

import secrets

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref

N = 4
STEPS = 6


@pytest.fixture(scope="module")
def ps_pools():
    """A pool of its own: sets left behind by a failure, or auto-name counters that advance
    on a set's members only, cannot reach the other modules."""
    pools = harness.Pools()
    yield pools
    pools.close()


def _x(seed, tag, rank, size=9, dtype_name="int32"):
    return ref.exact_input(ref.seed_of(seed, tag), rank, (size,), dtype_name, "Sum")


def _set_rank(ps):
    try:
        return ps.rank()
    except ValueError as error:  # Horovod's, on a rank outside the set
        return str(error)


def _describe(ps):
    return {
        "ranks": list(ps.ranks),
        "id": ps.process_set_id,
        "size": ps.size(),
        "rank": _set_rank(ps),
        "included": ps.included(),
    }


def check_description(rank, got, ranks, context):
    assert got["ranks"] == ranks, f"rank {rank}, {context}: ranks {got['ranks']}"
    assert got["size"] == len(ranks), f"rank {rank}, {context}: size() {got['size']}"
    outside = "Process is not part of provided process set."
    want_rank = ranks.index(rank) if rank in ranks else outside
    assert got["rank"] == want_rank, f"rank {rank}, {context}: rank() {got['rank']}"
    assert got["included"] is (rank in ranks), f"rank {rank}, {context}: included()"
    assert isinstance(got["id"], int) and got["id"] != 0, f"rank {rank}, {context}: id {got['id']}"


def _describe_global():
    return _describe(rf.global_process_set)


def test_global_process_set(ps_pools):
    for rank, got in enumerate(ps_pools.call(N, _describe_global)):
        assert got["id"] == 0, f"rank {rank}: global_process_set.process_set_id {got['id']}"
        assert got["ranks"] == list(range(N)), f"rank {rank}: global ranks {got['ranks']}"
        assert got["size"] == N and got["rank"] == rank and got["included"] is True, got


# -- disjoint sets --------------------------------------------------------------------------------


def _disjoint(seed, token):
    """[0, 1] and [2, 3]: first set a works while set b's ranks are out of ringflow (waiting on
    the store), then the other way round, then both at once with async requests."""
    rank = rf.rank()
    store = harness.rank_store()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    try:
        described = {"a": _describe(a), "b": _describe(b)}
        mine, tag = (a, "a") if rank < 2 else (b, "b")
        out = {}
        for phase, working in (("alone", "a"), ("alone", "b")):
            if tag == working:
                for step in range(STEPS):
                    name = f"{tag}.{phase}.{step}"
                    out[name] = rf.allreduce(
                        _x(seed, name, rank), op=rf.Sum, name=name, process_set=mine
                    )
                if mine.rank() == 0:
                    store.set(f"{token}/{working}-done", b"1")
            else:
                store.get(f"{token}/{working}-done", timeout_s=30.0)
        gen = ref.rng(seed, rank)
        handles = {}
        for step in gen.permutation(4 * STEPS):
            name = f"{tag}.both.{step}"
            handles[name] = rf.allreduce_async(
                _x(seed, name, rank), op=rf.Sum, name=name, process_set=mine
            )
        for name, handle in handles.items():
            out[name] = rf.synchronize(handle)
        out["global"] = rf.allreduce(_x(seed, "global", rank), op=rf.Sum, name="ps.global")
    finally:
        rf.remove_process_set(b)
        rf.remove_process_set(a)
    return described, out


def test_disjoint_sets_run_concurrently(ps_pools):
    """A set's collectives complete while the other set's ranks make no ringflow call (a
    global step would hang until the harness deadline), and both sets run at once."""
    seed = ref.seed_of("disjoint")
    results = ps_pools.call(N, _disjoint, seed, secrets.token_hex(8), deadline=60)
    sets = {"a": [0, 1], "b": [2, 3]}
    ids = set()
    for rank, (described, out) in enumerate(results):
        check_description(rank, described["a"], sets["a"], "set a")
        check_description(rank, described["b"], sets["b"], "set b")
        ids.add((described["a"]["id"], described["b"]["id"]))
        tag = "a" if rank < 2 else "b"
        names = [f"{tag}.alone.{s}" for s in range(STEPS)]
        names += [f"{tag}.both.{s}" for s in range(4 * STEPS)]
        for name in names:
            want = ref.allreduce_exact([_x(seed, name, r) for r in sets[tag]], "Sum")
            ref.assert_exact(out[name], want, f"rank {rank}: {name}")
        want = ref.allreduce_exact([_x(seed, "global", r) for r in range(N)], "Sum")
        ref.assert_exact(out["global"], want, f"rank {rank}: global allreduce")
    assert len(ids) == 1, f"ranks disagree on the process set ids: {ids}"
    (id_a, id_b) = ids.pop()
    assert id_a != id_b, f"two sets share the id {id_a}"


# -- overlapping sets, every reducing collective ---------------------------------------------------

OVERLAPPING = {"lo": [0, 1, 2], "hi": [1, 2, 3], "ends": [0, 3], "solo": [2]}


def _rows(seed, tag, set_rank):
    return 2 + (ref.seed_of(seed, tag, set_rank) % 4)


def _overlapping(seed):
    """Async allreduce, allgather, reducescatter, broadcast (root: the set's last member),
    alltoall and a grouped allreduce on every set this rank is in, in this rank's own order; then blocking ones; then every set is removed."""
    rank = rf.rank()
    sets = {tag: rf.add_process_set(ranks) for tag, ranks in OVERLAPPING.items()}
    try:
        described = {tag: _describe(ps) for tag, ps in sets.items()}
        requests = []
        for tag, ps in sets.items():
            if ps.included():
                requests += [(tag, kind) for kind in ("ar", "ag", "rs", "grp", "bc", "a2a")]
        gen = ref.rng(seed, rank)
        handles = {}
        for index in gen.permutation(len(requests)):
            tag, kind = requests[index]
            ps, name = sets[tag], f"ov.{tag}.{kind}"
            if kind == "ar":
                x = _x(seed, name, rank, 11, "float32")
                handles[name] = rf.allreduce_async(x, op=rf.Sum, name=name, process_set=ps)
            elif kind == "ag":
                x = _x(seed, name, rank, _rows(seed, name, ps.rank()), "int8")
                handles[name] = rf.allgather_async(x, name=name, process_set=ps)
            elif kind == "rs":
                x = _x(seed, name, rank, 7, "int64")
                handles[name] = rf.reducescatter_async(x, op=rf.Sum, name=name, process_set=ps)
            elif kind == "a2a":  # no splits: an even split over the set's members
                x = _x(seed, name, rank, 2 * ps.size(), "int32")
                handles[name] = rf.alltoall_async(x, name=name, process_set=ps)
            elif kind == "bc":  # root_rank is a rank of the job (Horovod): the set's last member
                x = _x(seed, name, rank, 5, "float64")
                root = ps.ranks[-1]
                handles[name] = rf.broadcast_async(x, root, name=name, process_set=ps)
            else:
                xs = [_x(seed, f"{name}.{m}", rank, 3 + m) for m in range(3)]
                handles[name] = rf.grouped_allreduce_async(xs, op=rf.Sum, name=name, process_set=ps)
        out = {name: rf.synchronize(handle) for name, handle in handles.items()}
        for tag, ps in sets.items():
            if ps.included():
                name = f"ov.{tag}.blocking"
                x = _x(seed, name, rank, 7, "int64")
                out[name] = rf.reducescatter(x, op=rf.Sum, name=name, process_set=ps)
    finally:
        for ps in sets.values():
            rf.remove_process_set(ps)
    return described, out


def test_overlapping_sets(ps_pools):
    seed = ref.seed_of("overlapping")
    results = ps_pools.call(N, _overlapping, seed, deadline=60)
    for rank, (described, out) in enumerate(results):
        for tag, members in OVERLAPPING.items():
            check_description(rank, described[tag], members, f"set {tag}")
            kinds = ("ar", "ag", "rs", "grp", "bc", "a2a", "blocking")
            expected_names = {f"ov.{tag}.{k}" for k in kinds}
            if rank not in members:
                assert not expected_names & set(out), f"rank {rank}: results for set {tag}"
                continue
            me = members.index(rank)
            context = f"rank {rank}, set {tag} {members}"

            name = f"ov.{tag}.ar"
            want = ref.allreduce_exact([_x(seed, name, r, 11, "float32") for r in members], "Sum")
            ref.assert_exact(out[name], want, f"{context}: allreduce")

            name = f"ov.{tag}.ag"
            parts = [_x(seed, name, r, _rows(seed, name, i), "int8") for i, r in enumerate(members)]
            ref.assert_bits_equal(out[name], np.concatenate(parts), f"{context}: allgather")

            for name in (f"ov.{tag}.rs", f"ov.{tag}.blocking"):
                full = ref.allreduce_exact([_x(seed, name, r, 7, "int64") for r in members], "Sum")
                want = ref.reducescatter_block(full, len(members), me)
                ref.assert_exact(out[name], want, f"{context}: reducescatter {name}")

            name = f"ov.{tag}.bc"
            want = _x(seed, name, members[-1], 5, "float64")
            ref.assert_bits_equal(out[name], want, f"{context}: broadcast from set rank last")

            name = f"ov.{tag}.a2a"
            size = len(members)
            inputs = [_x(seed, name, r, 2 * size, "int32") for r in members]
            want, want_recv = ref.alltoall_expected(inputs, [[2] * size] * size, me)
            out_a2a, recv = out[name]
            ref.assert_exact(out_a2a, want, f"{context}: alltoall")
            ref.assert_exact(np.asarray(recv), want_recv, f"{context}: alltoall received splits")

            name = f"ov.{tag}.grp"
            assert len(out[name]) == 3, f"{context}: grouped allreduce gave {len(out[name])}"
            for m in range(3):
                inputs = [_x(seed, f"{name}.{m}", r, 3 + m) for r in members]
                ref.assert_exact(out[name][m], ref.allreduce_exact(inputs, "Sum"), context)
    ids = {tuple(described[tag]["id"] for tag in OVERLAPPING) for described, _ in results}
    assert len(ids) == 1, f"ranks disagree on the process set ids: {ids}"
    (id_tuple,) = ids
    assert len(set(id_tuple)) == len(id_tuple), f"ids repeat: {id_tuple}"


# -- barrier --------------------------------------------------------------------------------------


def _barrier_on_set(token):
    """Members of [1, 3] pass a named and an unnamed barrier on the set, then rank 1 tells the
    others through the store; ranks 0 and 2 make no ringflow call until then."""
    rank = rf.rank()
    store = harness.rank_store()
    ps = rf.add_process_set([1, 3])
    error = None
    try:
        if ps.included():
            try:
                rf.barrier(name="set.barrier", process_set=ps)
                rf.barrier(process_set=ps)
            except Exception as exc:  # reported by the test; the others must not wait for it
                error = exc
            finally:
                if ps.rank() == 0:
                    store.set(f"{token}/barriers-passed", b"1")
        else:
            store.get(f"{token}/barriers-passed", timeout_s=30.0)
    finally:
        rf.remove_process_set(ps)
    after = rf.allreduce(np.full(2, rank, dtype=np.int32), op=rf.Sum, name="barrier.after")
    return error, after


def test_barrier_on_set(ps_pools):
    results = ps_pools.call(N, _barrier_on_set, secrets.token_hex(8), deadline=60)
    for rank, (error, after) in enumerate(results):
        assert error is None, f"rank {rank}: barrier on set [1, 3]: {error!r}"
        ref.assert_exact(after, np.full(2, sum(range(N)), dtype=np.int32), f"rank {rank}")


# -- errors ---------------------------------------------------------------------------------------

OUTSIDE_CALLS = (
    "allreduce",
    "allreduce_",
    "allreduce_async",
    "allgather",
    "allgather_async",
    "reducescatter",
    "reducescatter_async",
    "broadcast",
    "grouped_allreduce",
    "barrier",
)


def _call_on(kind, ps, rank):
    x = np.full(4, rank, dtype=np.int32)
    if kind == "allreduce":
        return rf.allreduce(x, op=rf.Sum, name="out.ar", process_set=ps)
    if kind == "allreduce_":
        return rf.allreduce_(x, op=rf.Sum, name="out.ar_", process_set=ps)
    if kind == "allreduce_async":
        return rf.allreduce_async(x, op=rf.Sum, name="out.ara", process_set=ps)
    if kind == "allgather":
        return rf.allgather(x, name="out.ag", process_set=ps)
    if kind == "allgather_async":
        return rf.allgather_async(x, name="out.aga", process_set=ps)
    if kind == "reducescatter":
        return rf.reducescatter(x, op=rf.Sum, name="out.rs", process_set=ps)
    if kind == "reducescatter_async":
        return rf.reducescatter_async(x, op=rf.Sum, name="out.rsa", process_set=ps)
    if kind == "broadcast":
        return rf.broadcast(x, 0, name="out.bc", process_set=ps)
    if kind == "grouped_allreduce":
        return rf.grouped_allreduce([x, x], op=rf.Sum, name="out.grp", process_set=ps)
    if kind == "barrier":
        return rf.barrier(name="out.barrier", process_set=ps)
    raise AssertionError(kind)


def _outside_then_removed():
    """Ranks 2 and 3 call on set [0, 1] (each call must raise at once) while 0 and 1 run an
    allreduce on it; then every rank removes the set, and every rank's use of it must raise."""
    rank = rf.rank()
    ps = rf.add_process_set([0, 1])
    removed = False
    try:
        outside = {}
        inside = None
        if ps.included():
            x = np.full(5, rank + 1, dtype=np.int64)
            inside = rf.allreduce(x, op=rf.Sum, name="in.ar", process_set=ps)
        else:
            for kind in OUTSIDE_CALLS:
                try:
                    outside[kind] = ("returned", repr(_call_on(kind, ps, rank))[:200])
                except Exception as exc:
                    outside[kind] = ("raised", exc)
        rf.remove_process_set(ps)
        removed = True
        after_removal = {}
        for kind in ("allreduce", "allreduce_async", "allgather"):
            try:
                after_removal[kind] = ("returned", repr(_call_on(kind, ps, rank))[:200])
            except Exception as exc:
                after_removal[kind] = ("raised", exc)
        x = np.full(3, rank, dtype=np.int32)
        after = rf.allreduce(x, op=rf.Sum, name="ps.after")
    finally:
        if not removed:
            rf.remove_process_set(ps)
    return inside, outside, after_removal, after


def test_outside_rank_and_removed_set(ps_pools):
    results = ps_pools.call(N, _outside_then_removed, deadline=60)
    for rank, (inside, outside, after_removal, after) in enumerate(results):
        if rank < 2:
            ref.assert_exact(inside, np.full(5, 3, dtype=np.int64), f"rank {rank}: in the set")
        else:
            assert set(outside) == set(OUTSIDE_CALLS), outside
            for kind, (how, what) in outside.items():
                context = f"rank {rank} (not in [0, 1]) called {kind} on the set"
                assert how == "raised", f"{context}: it returned {what}"
                harness.assert_raised(harness.RankResult(rank, error=what), rf.InvalidArgumentError)
        for kind, (how, what) in after_removal.items():
            context = f"rank {rank}: {kind} on a removed process set"
            assert how == "raised", f"{context}: it returned {what}"
            assert isinstance(what, rf.Error), f"{context}: raised {what!r}, not an rf.Error"
        ref.assert_exact(after, np.full(3, sum(range(N)), dtype=np.int32), f"rank {rank}: after")
