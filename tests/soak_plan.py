"""The soak's schedule, inputs and numpy references (issue 6).

One seeded schedule of collectives, the same on every rank and in the parent: a list of
`Step`s cut into batches. Each step names a collective, dtype, op, per-rank shapes (0 to 8 MiB
per rank, mostly small with a heavy tail), root, alltoall splits, scaling, and whether it is
named, unnamed (auto-numbered, so it keeps its place relative to the other unnamed steps) or
blocking. Any rank can rebuild any rank's input of any step from the step alone, so each rank
checks its own results against numpy without moving data to the parent.

Inputs are raw bytes of a seeded generator. Copy collectives move arbitrary bit patterns (NaN
payloads, infinities, -0.0), compared bit for bit. Reductions mostly take values for which
they are exact in any order (the bounds of `tests.reference.exact_input`, reached by shifting
the raw integers): integers use their full range and wrap; float Sum/Average take small
integers, Product tiny ones; compared by value. Some float allreduces take random values
instead, compared bit for bit with the order the README promises (`ordered_reduce`).
Nothing here imports ringflow.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from tests import reference as ref

MIB = 1 << 20
MAX_BYTES = 8 * MIB
"""Largest input of one step on one rank (every member of a grouped step together)."""
MAX_BATCH = 24
"""Most steps per batch (submitted together, then synchronized together)."""
BATCH_BYTES = 24 * MIB
"""Most input bytes per rank per batch: bounds the memory a batch holds at once."""
NAME_POOL = 160
"""Step i is named ``soak.{i % NAME_POOL}``: names come back with new shapes and dtypes (the
response cache must notice) or, for `REPLAY` of the steps, with the same ones (cache hits)."""
REPLAY = 0.25
SEQUENCED = 0.08
"""Fraction of steps that are unnamed async, and again of those that are blocking."""

KIND_WEIGHTS = {
    "allreduce": 30,
    "grouped_allreduce": 10,
    "broadcast": 12,
    "allgather": 12,
    "reducescatter": 12,
    "alltoall": 12,
    "barrier": 3,
}
REDUCING = ("allreduce", "grouped_allreduce", "reducescatter")
SCALED = ("allreduce", "grouped_allreduce", "reducescatter")  # float dtypes only
ORDERED = ("allreduce", "grouped_allreduce")
"""Kinds whose float reduction order the README promises (one per element, fused or not)."""
IN_PLACE = ("allreduce", "grouped_allreduce", "broadcast")
"""Kinds with an in-place form (allreduce_async_, grouped_allreduce_async_, broadcast_async_)."""
FLOAT_SUM_SHIFT = {"float16": 0, "bfloat16": 2, "float32": 11, "float64": 23}
"""Right shift of the raw int8/int8/int32/int64 that gives a float Sum/Average input: bounds
128, 32, 2**20, 2**40 as in `reference.exact_input` (sums of 4, times 2, stay exact)."""
MAX_RANKS = 8
"""Exactness holds up to 8 ranks: from 5, reduction inputs shift one bit further
(`Step.narrow`), so sums and products of 8 stay within what 4 reach without it."""


@dataclass(frozen=True)
class Step:
    """One collective. ``rows[m][r]`` is the first dimension of member m on rank r."""

    index: int
    kind: str
    dtype: str = "uint8"
    op: str = "Sum"
    rows: tuple[tuple[int, ...], ...] = ()
    trailing: tuple[int, ...] = ()
    root: int = 0
    splits: tuple[tuple[int, ...], ...] | None = None
    """alltoall: ``splits[r]`` are rank r's send counts; None sends even blocks."""
    scale: tuple[float, float] = (1.0, 1.0)
    in_place: bool = False
    random: bool = False
    """Float Sum/Average/Product of allreduce forms on random values in [0.5, 1.5): checked
    bit for bit against `ordered_reduce`, the reduction order the README promises."""
    name: str | None = None
    blocking: bool = False
    data_seed: int = 0
    narrow: int = 0
    """Extra right shift of exact reduction inputs (1 for more than 4 ranks, see MAX_RANKS)."""

    @property
    def sequenced(self) -> bool:
        """Whether every rank must issue it in schedule order (unnamed or blocking)."""
        return self.name is None or self.blocking

    def input_bytes(self, rank: int) -> int:
        row = math.prod(self.trailing) * ref.dtype(self.dtype).itemsize
        return sum(rows[rank] for rows in self.rows) * row


# -- schedule -----------------------------------------------------------------------------------


def _nbytes(gen: np.random.Generator) -> int:
    """Input bytes of one step: 0 or one element often, mostly under 4 KiB, a heavy tail."""
    u = gen.random()
    bands = ((0.70, 2, 4096), (0.95, 4096, 256 << 10), (0.99, 256 << 10, 2 * MIB))
    if u < 0.04:
        return 0
    if u < 0.08:
        return 1  # one element, whatever its size
    for top, low, high in bands:
        if u < top:
            return int(math.exp(gen.uniform(math.log(low), math.log(high))))
    return int(gen.integers(2 * MIB, MAX_BYTES - 64 * 1024, endpoint=True))


def _dtype_op(gen: np.random.Generator, kind: str) -> tuple[str, str]:
    dtype_name = str(gen.choice(ref.DTYPES))
    if kind not in REDUCING:
        return dtype_name, "Sum"
    ops = ("Min", "Max") if dtype_name == "bool" else ref.OPS
    return dtype_name, str(gen.choice(ops))


def _random_splits(gen: np.random.Generator, rows: int, n: int) -> tuple[int, ...]:
    weights = gen.random(n) * (gen.random(n) > 0.25)  # some destinations get nothing
    if weights.sum() == 0:
        weights[int(gen.integers(n))] = 1.0
    return tuple(int(c) for c in gen.multinomial(rows, weights / weights.sum()))


def _new_step(gen: np.random.Generator, index: int, n: int, kind: str, nbytes: int) -> Step:
    dtype_name, op = _dtype_op(gen, kind)
    itemsize = ref.dtype(dtype_name).itemsize
    count = 1 if nbytes == 1 else nbytes // itemsize
    trailing: tuple[int, ...] = ()
    if count > 4 and gen.random() < 0.3:
        trailing = (int(gen.integers(2, 6)),)
    per_row = math.prod(trailing)
    rows = count // per_row
    fields: dict = {"root": int(gen.integers(n))}
    if kind == "grouped_allreduce":
        cuts = np.sort(gen.integers(0, rows + 1, size=int(gen.integers(1, 4))))
        sizes = np.diff(np.concatenate(([0], cuts, [rows])))
        fields["rows"] = tuple((int(s),) * n for s in sizes)
    elif kind == "allgather":  # first dimensions differ by rank, some may be 0
        low = max(0, rows - 3)
        fields["rows"] = ((*(int(gen.integers(low, rows + 1)) for _ in range(n)),),)
    elif kind == "alltoall":
        per_rank = [int(gen.integers(max(0, rows - 3), rows + 1)) for _ in range(n)]
        if gen.random() < 0.2:  # splits=None: even blocks
            per_rank = [rows - rows % n] * n
        else:
            fields["splits"] = tuple(_random_splits(gen, r, n) for r in per_rank)
        fields["rows"] = (tuple(per_rank),)
    else:
        if kind == "reducescatter" and gen.random() < 0.15:
            rows = int(gen.integers(0, 2 * n + 2))  # fewer rows than ranks, 0, N +- 1
        fields["rows"] = ((rows,) * n,)
    if dtype_name in ref.FLOAT_DTYPES and op not in ("Min", "Max") and kind in ORDERED:
        fields["random"] = bool(gen.random() < 0.4)
    scalable = kind in SCALED and dtype_name in ref.FLOAT_DTYPES and not fields.get("random")
    if scalable and gen.random() < 0.15:
        fields["scale"] = (1.0, 0.5) if op == "Product" else (0.5, 4.0)
    return Step(
        index,
        kind,
        dtype_name,
        op,
        trailing=trailing,
        in_place=kind in IN_PLACE and bool(gen.random() < 0.3),
        **fields,
    )


def _flavour(gen: np.random.Generator, step: Step, seed: int) -> Step:
    """Name (or not), blocking (or not), and this step's own data seed."""
    u = gen.random()
    name = None if u < SEQUENCED else f"soak.{step.index % NAME_POOL}"
    blocking = SEQUENCED <= u < 2 * SEQUENCED
    data_seed = ref.seed_of("soak data", seed, step.index)
    return dataclasses.replace(step, name=name, blocking=blocking, data_seed=data_seed)


def _narrow(n: int) -> int:
    assert 1 <= n <= MAX_RANKS, f"the soak's inputs are exact for 1 to {MAX_RANKS} ranks, not {n}"
    return 0 if n <= 4 else 1


@functools.lru_cache(maxsize=4)
def schedule(seed: int, n: int, n_ops: int) -> tuple[tuple[Step, ...], ...]:
    """Batches of steps, ``n_ops`` steps in all; the first steps are one of each collective at
    the largest size, so that the warm-up reaches the memory high-water mark."""
    gen = np.random.default_rng([seed, n, n_ops])
    kinds = list(KIND_WEIGHTS)
    weights = np.array(list(KIND_WEIGHTS.values()), dtype=np.float64)
    first = [kind for kind in kinds if kind != "barrier"]
    steps: list[Step] = []
    for index in range(n_ops):
        previous = steps[index - NAME_POOL] if index >= NAME_POOL else None
        if previous is not None and previous.name is not None and gen.random() < REPLAY:
            step = dataclasses.replace(previous, index=index)  # same name, same shapes
        elif index < len(first):
            step = _new_step(gen, index, n, first[index], MAX_BYTES - 64 * 1024)
        else:
            kind = str(gen.choice(kinds, p=weights / weights.sum()))
            step = (
                Step(index, kind)
                if kind == "barrier"
                else _new_step(gen, index, n, kind, _nbytes(gen))
            )
        if step.kind == "barrier":
            steps.append(Step(index, "barrier", blocking=True))  # unnamed, blocking
        else:
            steps.append(dataclasses.replace(_flavour(gen, step, seed), narrow=_narrow(n)))
    batches: list[tuple[Step, ...]] = []
    current: list[Step] = []
    target = int(gen.integers(1, MAX_BATCH + 1))
    for step in steps:
        held = sum(max(s.input_bytes(r) for r in range(n)) for s in current)
        if current and (
            len(current) >= target
            or held + max(step.input_bytes(r) for r in range(n)) > BATCH_BYTES
        ):
            batches.append(tuple(current))
            current, target = [], int(gen.integers(1, MAX_BATCH + 1))
        current.append(step)
    if current:
        batches.append(tuple(current))
    return tuple(batches)


def rank_order(seed: int, batch_index: int, batch: tuple[Step, ...], rank: int) -> list[int]:
    """Positions in ``batch`` in this rank's own submission order: named async steps shuffled,
    sequenced steps in schedule order at slots of this rank's own."""
    gen = np.random.default_rng([seed, 7, batch_index, rank])
    free = [i for i, s in enumerate(batch) if not s.sequenced]
    fixed = [i for i, s in enumerate(batch) if s.sequenced]
    order = [free[j] for j in gen.permutation(len(free))]
    slots = sorted(gen.choice(len(batch), size=len(fixed), replace=False).tolist())
    for slot, i in zip(slots, fixed):
        order.insert(slot, i)
    return order


# -- inputs and references ------------------------------------------------------------------------


def step_input(step: Step, member: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s input of member ``member`` of ``step`` (see the module docstring)."""
    dt = ref.dtype(step.dtype)
    shape = (step.rows[member][rank], *step.trailing)
    count = math.prod(shape)
    gen = np.random.default_rng([step.data_seed, member, rank])
    raw = np.frombuffer(gen.bytes(count * dt.itemsize), dtype=f"i{dt.itemsize}")
    if dt == np.bool_:
        values = (raw & 1).view(np.bool_)
    elif step.random:
        values = (raw.view(np.uint16)[:count] / 65536 + 0.5).astype(dt)
    elif step.kind not in REDUCING or ref.is_int(dt):
        values = raw.view(dt)
        if dt == np.int64 and step.op == "Average":
            values = raw >> (13 + step.narrow)  # +-2**50: sums convert to float64 exactly
    elif step.op in ("Min", "Max"):
        values = (raw.view(np.int16)[:count] >> 4).astype(dt)  # finite, never -0.0
    elif step.op == "Product":
        shift = (5 if dt.itemsize == 2 else 3) + step.narrow
        values = (raw.view(np.int8)[:count] >> shift).astype(dt)
    else:
        wide = raw.view(np.int8)[:count] if dt.itemsize == 2 else raw
        values = (wide >> (FLOAT_SUM_SHIFT[step.dtype] + step.narrow)).astype(dt)
    return values.reshape(shape).copy()


def expected(step: Step, n: int, rank: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(outputs per member, received splits for alltoall) that ``rank`` must get."""
    if step.kind == "broadcast":
        return [step_input(step, 0, step.root)], None
    outs = []
    for member in range(len(step.rows)):
        inputs = [step_input(step, member, r) for r in range(n)]
        if step.kind == "allgather":
            outs.append(np.concatenate(inputs, axis=0))
        elif step.kind == "alltoall":
            splits = step.splits or [(rows // n,) * n for rows in step.rows[0]]
            out, received = ref.alltoall_expected(inputs, splits, rank)
            return [out], received
        elif step.random:
            outs.append(ordered_reduce(inputs, step.op))
        else:
            full = ref.allreduce_exact(inputs, step.op, *step.scale)
            outs.append(
                ref.reducescatter_block(full, n, rank) if step.kind == "reducescatter" else full
            )
    return outs, None


def ordered_reduce(inputs: list[np.ndarray], op: str) -> np.ndarray:
    """Float Sum/Average/Product in the README's order ("Float order"): the flattened array is
    cut into N nearly equal chunks (the first ``count % N`` one longer) and chunk c is reduced
    as ``x[c+N-1] + (... + (x[c+1] + x[c]))``, ranks modulo N, in the accumulation type,
    float16/bfloat16 rounded back after every step; Average multiplies the sum by 1/N rounded
    to the accumulation type (Horovod's)."""
    n, dt = len(inputs), inputs[0].dtype
    acc_type = ref.acc_dtype(dt)
    flat = [x.reshape(-1) for x in inputs]
    result = np.empty(flat[0].size, acc_type)
    lo = 0
    for c in range(n):
        hi = lo + flat[0].size // n + (c < flat[0].size % n)
        acc = flat[c][lo:hi].astype(acc_type)
        for k in range(1, n):
            x = flat[(c + k) % n][lo:hi].astype(acc_type)
            acc = x * acc if op == "Product" else x + acc
            if dt.itemsize == 2:
                acc = acc.astype(dt).astype(acc_type)
        result[lo:hi] = acc
        lo = hi
    if op == "Average":
        result = acc_type.type(1.0 / n) * result
    return result.astype(dt).reshape(inputs[0].shape)
