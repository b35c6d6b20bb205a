"""Async and grouped collectives (the engine): exact against numpy in any submission order.

Every rank submits a few hundred NAMED tensors -- every async collective and grouped form, every
dtype, sizes 0, 1, odd, not divisible by N and one large -- in an order of its own (seeded with
its rank), plus unnamed ones in the same relative order and one blocking call somewhere in the
middle, then synchronizes them in another order of its own. Inputs come from (seed, rank) alone,
so the parent rebuilds every rank's input and checks every result exactly.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests import reference as ref

DTYPES = (*ref.INT_DTYPES, *ref.FLOAT_DTYPES)  # bool is covered by the per-collective modules

SINGLE_KINDS = (
    "allreduce",
    "allreduce_",
    "broadcast",
    "broadcast_",
    "allgather",
    "reducescatter",
    "alltoall",
)
GROUPED_KINDS = (
    "grouped_allreduce",
    "grouped_allreduce_",
    "grouped_allgather",
    "grouped_reducescatter",
)
KINDS = SINGLE_KINDS + GROUPED_KINDS
REDUCING = {
    "allreduce",
    "allreduce_",
    "reducescatter",
    "grouped_allreduce",
    "grouped_allreduce_",
    "grouped_reducescatter",
}
SCALED = {"allreduce", "allreduce_", "grouped_allreduce", "grouped_allreduce_"}
IN_PLACE = {"allreduce_", "broadcast_", "grouped_allreduce_"}
RAGGED = {"allgather", "alltoall", "grouped_allgather"}  # first dimension may differ by rank

REPEATS = 3
"""Specs per (kind, dtype): 11 kinds x 8 dtypes x 3 = 264 named requests, plus the large ones."""
UNNAMED = 8


@dataclass(frozen=True)
class Spec:
    """One named request. ``rows[m][r]`` is the first dimension of member m on rank r (one
    member for the single forms)."""

    name: str
    kind: str
    dtype: str
    rows: tuple[tuple[int, ...], ...]
    trailing: tuple[int, ...] = ()
    op: str = "Sum"
    root: int = 0
    prescale: float = 1.0
    postscale: float = 1.0
    splits: bool = True  # alltoall: explicit splits (else None: even split)
    seed: int = 0

    def shape(self, member: int, rank: int) -> tuple[int, ...]:
        return (self.rows[member][rank], *self.trailing)

    def input(self, member: int, rank: int) -> np.ndarray:
        seed = ref.seed_of(self.seed, member)
        if self.kind in REDUCING:
            return ref.exact_input(seed, rank, self.shape(member, rank), self.dtype, self.op)
        return ref.bit_patterns(seed, rank, self.shape(member, rank), self.dtype)

    def send_splits(self, rank: int, n: int) -> list[int]:
        rows = self.rows[0][rank]
        if not self.splits:
            return [rows // n] * n
        return ref.alltoall_splits(self.seed, rank, n, rows)


def sizes(n: int) -> list[int]:
    """0, 1, odd, not divisible by n."""
    return [0, 1, 7, n + 1, 2 * n + 1, 33]


def make_specs(n: int, seed: int) -> list[Spec]:
    specs = []
    size_list = sizes(n)
    for rep in range(REPEATS):
        for k, kind in enumerate(KINDS):
            for d, dtype_name in enumerate(DTYPES):
                i = len(specs)
                size = size_list[(rep + k + d) % len(size_list)]
                members = 3 if kind in GROUPED_KINDS else 1
                rows = []
                for m in range(members):
                    if kind in RAGGED:
                        per_rank = [size + m + (r * (i + 1)) % 3 for r in range(n)]
                    else:
                        per_rank = [size + m] * n
                    rows.append(per_rank)
                op = ref.OPS[i % len(ref.OPS)] if kind in REDUCING else "Sum"
                prescale = postscale = 1.0
                if kind in SCALED and dtype_name in ref.FLOAT_DTYPES and rep == 1:
                    prescale, postscale = (0.5, 4.0) if op != "Product" else (1.0, 0.5)
                splits = True
                if kind == "alltoall" and rep == 0:  # splits=None: an even split
                    splits = False
                    rows = [[n * size] * n]
                specs.append(
                    Spec(
                        name=f"t.{i}.{kind}.{dtype_name}",
                        kind=kind,
                        dtype=dtype_name,
                        rows=tuple(tuple(r) for r in rows),
                        trailing=(2,) if (i % 5 == 0 and kind != "alltoall") else (),
                        op=op,
                        root=i % n,
                        prescale=prescale,
                        postscale=postscale,
                        splits=splits,
                        seed=ref.seed_of("async", n, seed, i),
                    )
                )
    large = ref.LARGE
    specs.append(
        Spec("big.allreduce", "allreduce", "float32", ((large,) * n,), seed=ref.seed_of(seed, 1))
    )
    ragged = tuple(large // n + r for r in range(n))
    specs.append(Spec("big.allgather", "allgather", "int8", (ragged,), seed=ref.seed_of(seed, 2)))
    return specs


# -- rank functions -------------------------------------------------------------------------------


def _submit(spec: Spec, xs: list[np.ndarray], n: int) -> rf.Handle:
    op = getattr(rf, spec.op)
    kind, name = spec.kind, spec.name
    scale = {"prescale_factor": spec.prescale, "postscale_factor": spec.postscale}
    if kind == "allreduce":
        return rf.allreduce_async(xs[0], op=op, name=name, **scale)
    if kind == "allreduce_":
        return rf.allreduce_async_(xs[0], op=op, name=name, **scale)
    if kind == "broadcast":
        return rf.broadcast_async(xs[0], spec.root, name=name)
    if kind == "broadcast_":
        return rf.broadcast_async_(xs[0], spec.root, name=name)
    if kind == "allgather":
        return rf.allgather_async(xs[0], name=name)
    if kind == "reducescatter":
        return rf.reducescatter_async(xs[0], op=op, name=name)
    if kind == "alltoall":
        splits = spec.send_splits(rf.rank(), n) if spec.splits else None
        return rf.alltoall_async(xs[0], splits=splits, name=name)
    if kind == "grouped_allreduce":
        return rf.grouped_allreduce_async(xs, op=op, name=name, **scale)
    if kind == "grouped_allreduce_":
        return rf.grouped_allreduce_async_(xs, op=op, name=name, **scale)
    if kind == "grouped_allgather":
        return rf.grouped_allgather_async(xs, name=name)
    if kind == "grouped_reducescatter":
        return rf.grouped_reducescatter_async(xs, op=op, name=name)
    raise AssertionError(kind)


def _unnamed_input(seed: int, j: int, rank: int) -> np.ndarray:
    return ref.exact_input(ref.seed_of(seed, "unnamed", j), rank, (j + 1,), "int64", "Sum")


def _blocking_input(rank: int) -> np.ndarray:
    return np.arange(5, dtype=np.int32) * (rank + 1)


def _async_mix(seed: int, specs: list[Spec]) -> dict:
    """Submit everything in this rank's own order, synchronize in another; report per name
    (outputs, received splits, identity kept, inputs untouched, problems)."""
    rank, n = rf.rank(), rf.size()
    gen = ref.rng(seed, 1000 + rank)
    order = [("named", i) for i in gen.permutation(len(specs))]
    # Unnamed requests keep their relative order (their auto names count), anywhere in between;
    # the blocking call sits at a position of this rank's own.
    slots = sorted(gen.choice(len(order) + UNNAMED, size=UNNAMED, replace=False).tolist())
    for j, slot in enumerate(slots):
        order.insert(slot, ("unnamed", j))
    order.insert(int(gen.integers(0, len(order) + 1)), ("blocking", 0))

    inputs: dict[str, list[np.ndarray]] = {}
    originals: dict[str, list[np.ndarray]] = {}
    handles: dict[str, rf.Handle] = {}
    problems: list[str] = []
    blocking = None
    for what, i in order:
        if what == "named":
            spec = specs[i]
            xs = [spec.input(m, rank) for m in range(len(spec.rows))]
            inputs[spec.name] = xs
            originals[spec.name] = [x.copy() for x in xs]
            handles[spec.name] = _submit(spec, xs, n)
        elif what == "unnamed":
            x = _unnamed_input(seed, i, rank)
            inputs[f"unnamed.{i}"] = [x]
            originals[f"unnamed.{i}"] = [x.copy()]
            handles[f"unnamed.{i}"] = rf.allreduce_async(x, op=rf.Sum)
        else:
            blocking = rf.allreduce(_blocking_input(rank), op=rf.Sum, name=f"mid.blocking.{seed}")
    for name, handle in handles.items():
        if not isinstance(handle, rf.Handle):
            problems.append(f"{name}: submit returned {type(handle).__name__}, not rf.Handle")

    by_name = {spec.name: spec for spec in specs}
    names = list(handles)
    results = {}
    for index in gen.permutation(len(names)):
        name = names[index]
        handle = handles[name]
        out = rf.synchronize(handle)
        polled = rf.poll(handle)
        if not (isinstance(polled, bool) and polled):
            problems.append(f"{name}: poll() after synchronize returned {polled!r}")
        kind = by_name[name].kind if name in by_name else "allreduce"
        xs = inputs[name]
        recv = None
        if kind == "alltoall":
            out, recv = out
        outs = list(out) if kind.startswith("grouped") else [out]
        if kind in IN_PLACE:
            kept = len(outs) == len(xs) and all(o is x for o, x in zip(outs, xs))
            untouched = True
        else:
            kept = not any(np.shares_memory(o, x) for o, x in zip(outs, xs))
            untouched = all(
                np.array_equal(ref.bits(x), ref.bits(orig)) for x, orig in zip(xs, originals[name])
            )
        results[name] = (outs, recv, kept, untouched)
    return {"results": results, "blocking": blocking, "problems": problems}


# -- checks ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _all_inputs(spec: Spec, member: int, n: int) -> list[np.ndarray]:
    return [spec.input(member, r) for r in range(n)]


def expected_outputs(spec: Spec, n: int, rank: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    kind = spec.kind
    outs = []
    recv = None
    for m in range(len(spec.rows)):
        inputs = _all_inputs(spec, m, n)
        if kind in ("allreduce", "allreduce_", "grouped_allreduce", "grouped_allreduce_"):
            outs.append(ref.allreduce_exact(inputs, spec.op, spec.prescale, spec.postscale))
        elif kind in ("reducescatter", "grouped_reducescatter"):
            full = ref.allreduce_exact(inputs, spec.op)
            outs.append(ref.reducescatter_block(full, n, rank))
        elif kind in ("broadcast", "broadcast_"):
            outs.append(inputs[spec.root])
        elif kind in ("allgather", "grouped_allgather"):
            outs.append(np.concatenate(inputs, axis=0))
        elif kind == "alltoall":
            splits = [spec.send_splits(r, n) for r in range(n)]
            out, recv = ref.alltoall_expected(inputs, splits, rank)
            outs.append(out)
        else:
            raise AssertionError(kind)
    return outs, recv


def check_mix(results: list[dict], specs: list[Spec], seed: int, n: int) -> None:
    for rank, answer in enumerate(results):
        assert not answer["problems"], f"rank {rank}: " + "\n".join(answer["problems"][:20])
        want = np.sum([_blocking_input(r) for r in range(n)], axis=0, dtype=np.int32)
        ref.assert_exact(answer["blocking"], want, f"rank {rank}: the blocking allreduce")
        got = answer["results"]
        names = {spec.name for spec in specs} | {f"unnamed.{j}" for j in range(UNNAMED)}
        assert set(got) == names, f"rank {rank}: results for {sorted(set(got) ^ names)[:10]}"
        for spec in specs:
            outs, recv, kept, untouched = got[spec.name]
            context = f"rank {rank}, n {n}, {spec}"
            if spec.kind in IN_PLACE:
                assert kept, f"{context}: synchronize did not give back the argument itself"
            else:
                assert kept, f"{context}: an output shares memory with its input"
                assert untouched, f"{context}: the input was modified"
            want_outs, want_recv = expected_outputs(spec, n, rank)
            assert len(outs) == len(want_outs), f"{context}: {len(outs)} outputs"
            for m, (out, expected) in enumerate(zip(outs, want_outs)):
                if spec.kind in REDUCING:
                    ref.assert_exact(out, expected, f"{context}, member {m}")
                else:
                    ref.assert_bits_equal(out, expected, f"{context}, member {m}")
            if spec.kind == "alltoall":
                ref.assert_exact(np.asarray(recv), want_recv, f"{context}: received splits")
        for j in range(UNNAMED):
            outs, _, _, untouched = got[f"unnamed.{j}"]
            inputs = [_unnamed_input(seed, j, r) for r in range(n)]
            expected = ref.allreduce_exact(inputs, "Sum")
            ref.assert_exact(outs[0], expected, f"rank {rank}, unnamed allreduce {j}")
            assert untouched, f"rank {rank}, unnamed allreduce {j} modified its input"


@pytest.mark.parametrize("n", [2, 3, 4])
def test_async_mix_any_order(pools, n):
    seed = ref.seed_of("async mix", n)
    specs = make_specs(n, seed)
    assert len(specs) >= 200
    results = pools.call(n, _async_mix, seed, specs, deadline=90)
    check_mix(results, specs, seed, n)


# -- grouped synchronous forms ---------------------------------------------------------------------


def _scales(dtype_name):
    """Power-of-two factors; integers (full range) only halve, so that nothing overflows."""
    return (0.5, 1.0) if dtype_name in ref.INT_DTYPES else (2.0, 0.5)


def _grouped_blocking(seed, n_members, dtype_name, op):
    rank = rf.rank()
    shapes = [(m * 3 + 1,) for m in range(n_members)] + [(0,)]

    def inputs(tag):
        return [
            ref.exact_input(ref.seed_of(seed, tag, m), rank, s, dtype_name, op)
            for m, s in enumerate(shapes)
        ]

    reduced = rf.grouped_allreduce(inputs("ar"), op=getattr(rf, op), name="grp.ar")
    in_place = inputs("ar_")
    returned = rf.grouped_allreduce_(in_place, op=getattr(rf, op), name="grp.ar_")
    kept = len(returned) == len(in_place) and all(a is b for a, b in zip(returned, in_place))
    gathered = rf.grouped_allgather(inputs("ag"), name="grp.ag")
    scattered = rf.grouped_reducescatter(inputs("rs"), op=getattr(rf, op), name="grp.rs")
    pre, post = _scales(dtype_name)
    scaled = rf.grouped_allreduce(
        inputs("sc"), op=getattr(rf, op), prescale_factor=pre, postscale_factor=post
    )
    return reduced, list(returned), kept, gathered, scattered, scaled


@pytest.mark.parametrize(("dtype_name", "op"), [("int32", "Sum"), ("float16", "Average")])
@pytest.mark.parametrize("n", [2, 3])
def test_grouped_blocking(pools, n, dtype_name, op):
    seed = ref.seed_of("grouped", n, dtype_name, op)
    members = 4
    results = pools.call(n, _grouped_blocking, seed, members, dtype_name, op)
    shapes = [(m * 3 + 1,) for m in range(members)] + [(0,)]

    def all_inputs(tag, m):
        return [
            ref.exact_input(ref.seed_of(seed, tag, m), r, shapes[m], dtype_name, op)
            for r in range(n)
        ]

    for rank, (reduced, in_place, kept, gathered, scattered, scaled) in enumerate(results):
        context = f"rank {rank}, n {n}, {dtype_name}, {op}"
        assert kept, f"{context}: grouped_allreduce_ did not give back the arrays themselves"
        for name, got in [("reduced", reduced), ("in place", in_place), ("gathered", gathered)]:
            assert len(got) == len(shapes), f"{context}: {name}: {len(got)} outputs"
        for m in range(len(shapes)):
            ref.assert_exact(
                reduced[m], ref.allreduce_exact(all_inputs("ar", m), op), f"{context}, ar {m}"
            )
            ref.assert_exact(
                in_place[m], ref.allreduce_exact(all_inputs("ar_", m), op), f"{context}, ar_ {m}"
            )
            ref.assert_bits_equal(
                gathered[m], np.concatenate(all_inputs("ag", m)), f"{context}, allgather {m}"
            )
            full = ref.allreduce_exact(all_inputs("rs", m), op)
            ref.assert_exact(
                scattered[m], ref.reducescatter_block(full, n, rank), f"{context}, rs {m}"
            )
            want = ref.allreduce_exact(all_inputs("sc", m), op, *_scales(dtype_name))
            ref.assert_exact(scaled[m], want, f"{context}, scaled {m}")


# -- handles --------------------------------------------------------------------------------------


def _poll_false_until_peer_submits(token):
    """Rank 0 submits and polls before rank 1 can have submitted (rank 1 waits for rank 0's
    word in the store): poll must say False. Then rank 1 submits; rank 0 polls until True
    without calling synchronize (the engine progresses by itself), within a deadline."""
    rank = rf.rank()
    store = harness.rank_store()
    x = np.full(6, rank + 1, dtype=np.float64)
    if rank == 0:
        handle = rf.allreduce_async(x, op=rf.Sum, name="poll.late")
        early = [rf.poll(handle) for _ in range(3)]
        store.set(f"{token}/polled", b"1")
        end = time.monotonic() + 30.0
        polls = 0
        while not rf.poll(handle):
            if time.monotonic() > end:
                return early, None, polls, "poll() never became True within 30 s"
            polls += 1
            time.sleep(0.001)  # back off in a poll loop: synchronisation is the poll itself
        return early, rf.synchronize(handle), polls, None
    store.get(f"{token}/polled", timeout_s=30.0)
    handle = rf.allreduce_async(x, op=rf.Sum, name="poll.late")
    return None, rf.synchronize(handle), 0, None


def test_poll(pools):
    n = 2
    results = pools.call(n, _poll_false_until_peer_submits, secrets.token_hex(8), deadline=60)
    expected = np.full(6, 3.0)
    early, out, _, problem = results[0]
    assert early == [False, False, False], f"rank 0: poll() before rank 1 submitted: {early}"
    assert problem is None, f"rank 0: {problem}"
    for rank, (_, out, _, _) in enumerate(results):
        ref.assert_exact(out, expected, f"rank {rank}")


def _synchronize_twice():
    rank = rf.rank()
    x = np.arange(10, dtype=np.int64) * (rank + 1)
    handle = rf.allreduce_async(x, op=rf.Sum, name="twice")
    first = rf.synchronize(handle)
    try:
        second = ("value", rf.synchronize(handle))
    except rf.Error as exc:  # the contract leaves a second synchronize open: a value or rf.Error
        second = ("error", repr(exc))
    polled = rf.poll(handle)
    after = rf.allreduce(np.full(3, rank, dtype=np.int32), op=rf.Sum, name="twice.after")
    return first, second, polled, after


def test_synchronize_twice(pools):
    """A second synchronize of a finished handle gives the same result or an rf.Error -- never
    a hang, a crash or another exception -- and the job goes on."""
    n = 3
    results = pools.call(n, _synchronize_twice)
    expected = np.arange(10, dtype=np.int64) * sum(range(1, n + 1))
    for rank, (first, second, polled, after) in enumerate(results):
        ref.assert_exact(first, expected, f"rank {rank}: first synchronize")
        if second[0] == "value":
            ref.assert_exact(second[1], expected, f"rank {rank}: second synchronize")
        assert polled is True, f"rank {rank}: poll() of a finished handle: {polled!r}"
        ref.assert_exact(after, np.full(3, sum(range(n)), dtype=np.int32), f"rank {rank}: after")


DUPLICATES = ("allreduce", "allreduce_", "broadcast", "allgather", "reducescatter", "alltoall")


def _duplicate_pending_name(token):
    """Each rank submits "dup.<rank>" first and tries every kind again under that name while it
    is certainly pending: the other ranks submit it only after every rank reported (store)."""
    rank, n = rf.rank(), rf.size()
    store = harness.rank_store()
    xs = {k: np.full(4, 10 * k + rank, dtype=np.int32) for k in range(n)}
    handles = {rank: rf.allreduce_async(xs[rank], op=rf.Sum, name=f"dup.{rank}")}
    outcomes = {}
    for kind in DUPLICATES:
        y = np.zeros(2 * n, dtype=np.int32)
        name = f"dup.{rank}"
        try:
            if kind == "allreduce":
                rf.allreduce_async(y, op=rf.Sum, name=name)
            elif kind == "allreduce_":
                rf.allreduce_async_(y, op=rf.Sum, name=name)
            elif kind == "broadcast":
                rf.broadcast_async(y, 0, name=name)
            elif kind == "allgather":
                rf.allgather_async(y, name=name)
            elif kind == "reducescatter":
                rf.reducescatter_async(y, op=rf.Sum, name=name)
            else:
                rf.alltoall_async(y, name=name)
            outcomes[kind] = None
        except Exception as exc:
            outcomes[kind] = exc
    store.set(f"{token}/checked/{rank}", b"1")
    for r in range(n):
        store.get(f"{token}/checked/{r}", timeout_s=30.0)
    for k in range(n):
        if k != rank:
            handles[k] = rf.allreduce_async(xs[k], op=rf.Sum, name=f"dup.{k}")
    reduced = {k: rf.synchronize(h) for k, h in handles.items()}
    # Completed, so the name is free again (on every rank).
    again = rf.synchronize(rf.allreduce_async(xs[0], op=rf.Sum, name="dup.0"))
    return outcomes, reduced, again


def test_duplicate_pending_name(make_job):
    """Two pending requests with one name on one rank: the second submit raises
    InvalidArgumentError naming the tensor; the first completes exactly; the name is free
    again once it completed. Own job: a wrongly accepted duplicate would stay pending."""
    n = 3
    job = make_job(n).start()
    results = job.call(_duplicate_pending_name, secrets.token_hex(8), deadline=60)
    for rank, (outcomes, reduced, again) in enumerate(results):
        for kind, error in outcomes.items():
            context = f"rank {rank}: a second pending 'dup.{rank}' submitted by {kind}_async"
            assert error is not None, f"{context} was accepted"
            result = harness.RankResult(rank, error=error)
            harness.assert_raised(result, rf.InvalidArgumentError, f"dup.{rank}")
        for k in range(n):
            want = np.full(4, sum(10 * k + r for r in range(n)), dtype=np.int32)
            ref.assert_exact(reduced[k], want, f"rank {rank}: dup.{k}")
        want = np.full(4, sum(range(n)), dtype=np.int32)
        ref.assert_exact(again, want, f"rank {rank}: 'dup.0' submitted again after it completed")


def _reuse_name(form, count):
    """The same name again right after each synchronize (or blocking call) returned: the
    previous request is finished, so the name is free. Returns (iterations done, error)."""
    rank = rf.rank()
    for i in range(count):
        x = np.full(4, rank + i, dtype=np.int64)
        try:
            if form == "async":
                out = rf.synchronize(rf.allreduce_async(x, op=rf.Sum, name="reused"))
            else:
                out = rf.allreduce(x, op=rf.Sum, name="reused")
        except rf.Error as exc:
            return i, repr(exc)
        if not np.array_equal(out, np.full(4, 1 + 2 * i, dtype=np.int64)):
            return i, f"wrong result {out}"
    return count, None


@pytest.mark.parametrize("form", ["async", "blocking"])
def test_name_free_once_synchronized(make_job, form):
    """Own job with a short RINGFLOW_TIMEOUT: a rank that wrongly refuses the name leaves its
    peer waiting until the stall shutdown."""
    count = 300
    job = make_job(2, rank_timeout=5).start()
    results = job.run(_reuse_name, form, count, deadline=60)
    for result in results:
        assert result.ok, result.describe()
        done, error = result.value
        assert error is None, f"rank {result.rank}: {form} reuse {done} of 'reused': {error}"
        assert done == count
