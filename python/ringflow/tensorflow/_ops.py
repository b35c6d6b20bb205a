"""The collectives as numpy kernels (arrays in, arrays out) over the core, for
`_tensors.call` to run eagerly or inside a graph. Each is one submission to the engine; results
we allocate are 64-byte aligned so they become tensors without a copy.

uint16, which the core lacks, travels as int16 bits for copies and as int32 for reductions
(wrapping back to uint16 like a uint16 sum; Average is exact where a uint16 sum would overflow).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ringflow import _arrays, _core
from ringflow._collectives import _check_splits
from ringflow._handles import Handle, finish, synchronize
from ringflow._state import auto_name, engine
from ringflow.tensorflow._tensors import aligned_empty

_K = _core.OpKind
_NONE: list[int] = []
_U16 = np.dtype(np.uint16)


def _wire(a: np.ndarray, reduce: bool) -> np.ndarray:
    if a.dtype == _U16:
        return a.astype(np.int32) if reduce else a.view(np.int16)
    return a


def _unwire(w: Any, dtype: np.dtype) -> Any:
    if dtype == _U16 and isinstance(w, np.ndarray):
        return w.astype(_U16) if w.dtype == np.int32 else w.view(_U16)
    return w


def _describe(arrays, base, grouped, reduce):
    """[(wire array or EMPTY, descriptor)] for the inputs, named as Horovod's groups are."""
    return [
        _arrays.describe(_wire(np.asarray(a), reduce), f"{base}.{i}" if grouped else base)
        for i, a in enumerate(arrays)
    ]


def _submit(
    kind,
    tensors,
    outs,
    op=_core.ReduceOp.Average,
    root=0,
    pre=1.0,
    post=1.0,
    ps=0,
    splits=_NONE,
    group="",
    sync=True,
):
    return engine().submit(
        kind, tensors, outs, op, root, 0, float(pre), float(post), ps, splits, [], group, sync
    )


def set_geometry(ps: int) -> tuple[int, int]:
    """(this rank's index in the set, the set's size)."""
    eng = engine()
    ranks = eng.process_set_ranks(ps)
    return (ranks.index(eng.rank) if eng.rank in ranks else 0), len(ranks)


def _scale_int(x: np.ndarray, factor: float) -> np.ndarray:
    """The core's integer scaling: multiply in float64, truncate toward zero."""
    if factor == 1.0:
        return x
    return np.trunc(x.astype(np.float64) * factor).astype(x.dtype)


def _scaled(op, pre, post) -> bool:
    return op == _core.ReduceOp.Average or pre != 1.0 or post != 1.0


def _u16_apart(collective, arrays, op, pre, post, ps, base, world) -> list:
    """A reduction with scaling (Average, prescale, postscale) where uint16 arrays take part:
    those reduce one by one as wrapped uint16 sums (as the core sums integers), scaled here
    as the core scales integers; the others as one group."""
    average = op == _core.ReduceOp.Average
    results: list = [None] * len(arrays)
    for i, a in enumerate(arrays):
        if a.dtype == _U16:
            (total,) = collective(
                [_scale_int(a, pre)],
                _core.ReduceOp.Sum if average else op,
                1.0,
                1.0,
                ps,
                f"{base}.{i}",
                False,
            )
            results[i] = _scale_int(total, post / world if average else post)
    rest = [i for i, a in enumerate(arrays) if a.dtype != _U16]
    if rest:
        done = collective([arrays[i] for i in rest], op, pre, post, ps, f"{base}.rest", True)
        for i, r in zip(rest, done):
            results[i] = r
    return results


def allreduce(arrays, op, pre, post, ps, name, grouped, sync=True):
    """New reduced arrays (a list), or a Handle whose synchronize gives that list."""
    base = auto_name("allreduce", name, ps)
    arrays = [np.asarray(a) for a in arrays]
    if _scaled(op, pre, post) and any(a.dtype == _U16 for a in arrays):
        results = _u16_apart(allreduce, arrays, op, pre, post, ps, base, set_geometry(ps)[1])
        return results if sync else Handle([], (), lambda _: results)
    described = _describe(arrays, base, grouped, True)
    outs = [None if w is _arrays.EMPTY else aligned_empty(w.shape, w.dtype) for w, _ in described]
    dtypes = [np.asarray(a).dtype for a in arrays]
    handles = _submit(
        _K.allreduce,
        [t for _, t in described],
        outs,
        op,
        0,
        pre,
        post,
        ps,
        group=base if grouped else "",
        sync=sync,
    )
    return finish(
        handles,
        sync,
        (arrays, described, outs),
        lambda _: [_unwire(o, d) for o, d in zip(outs, dtypes)],
    )


def allgather(arrays, ps, name, grouped):
    base = auto_name("allgather", name, ps)
    described = _describe(arrays, base, grouped, False)
    handles = _submit(
        _K.allgather,
        [t for _, t in described],
        [None] * len(arrays),
        ps=ps,
        group=base if grouped else "",
    )
    return finish(
        handles,
        True,
        (arrays, described),
        lambda hs: [
            _unwire(_arrays.result_of(h, w), np.asarray(a).dtype)
            for h, (w, _), a in zip(hs, described, arrays)
        ],
    )


def broadcast(array, root_rank, ps, name):
    name = auto_name("broadcast", name, ps)
    array = np.asarray(array)
    wire = _wire(array, False)
    if _arrays.dtype_of(wire.dtype) is not None and wire.flags.c_contiguous:
        copy = aligned_empty(wire.shape, wire.dtype)  # broadcast into an aligned copy
        copy[...] = wire
        wire = copy
    w, tensor = _arrays.describe(wire, name, writable=True)
    handles = _submit(_K.broadcast, [tensor], [None], root=int(root_rank), ps=ps)
    return finish(handles, True, (w,), lambda _: [_unwire(w, array.dtype)])


def reducescatter(arrays, op, pre, post, ps, name, grouped):
    me, world = set_geometry(ps)
    base = auto_name("reducescatter", name, ps)
    arrays = [np.asarray(a) for a in arrays]
    if _scaled(op, pre, post) and any(a.dtype == _U16 for a in arrays):
        return _u16_apart(reducescatter, arrays, op, pre, post, ps, base, world)
    described = _describe(arrays, base, grouped, True)
    outs = []
    for w, _ in described:
        if w is _arrays.EMPTY:
            outs.append(None)
            continue
        rows = w.shape[0] if w.ndim else 0
        mine = rows // world + (1 if me < rows % world else 0)
        outs.append(aligned_empty((mine, *w.shape[1:]), w.dtype))
    dtypes = [np.asarray(a).dtype for a in arrays]
    handles = _submit(
        _K.reducescatter,
        [t for _, t in described],
        outs,
        op,
        pre=pre,
        post=post,
        ps=ps,
        group=base if grouped else "",
    )
    return finish(
        handles,
        True,
        (arrays, described, outs),
        lambda _: [_unwire(o, d) for o, d in zip(outs, dtypes)],
    )


def alltoall(array, splits, ps, name):
    """[received rows, received splits (int32)]."""
    array = np.asarray(array)
    _, world = set_geometry(ps)
    name = auto_name("alltoall", name, ps)
    wire, tensor = _arrays.describe(_wire(array, False), name)
    rows = wire.shape[0] if wire.ndim else 0
    send, reason = _check_splits(splits, rows, world)
    if reason and wire is not _arrays.EMPTY:  # tell every rank, like any other invalid input
        wire = _arrays.EMPTY
        tensor = _core.Tensor(wire, _core.DType.uint8, name, reason)
        send = [0] * world
    elif sum(send) < rows:  # as Horovod: the rows after the splits are not sent
        wire, tensor = _arrays.describe(wire[: sum(send)], name)
    handles = _submit(_K.alltoall, [tensor], [None], ps=ps, splits=send)

    def result(hs):
        out = _unwire(_arrays.result_of(hs[0], wire), array.dtype)
        return [out, np.asarray(hs[0].received_splits, dtype=np.int32)]

    return finish(handles, True, (array, wire), result)


# -- enqueue / sync: the gradient tape's overlapped allreduces inside a graph ---------------

_pending: dict[int, Handle] = {}
_keys = itertools.count(1)


def enqueue(arrays, op, pre, post, ps, name, grouped) -> int:
    """Start an allreduce without waiting; returns a key for `take`."""
    key = next(_keys)
    _pending[key] = allreduce(list(arrays), op, pre, post, ps, name, grouped, sync=False)
    return key


def take(key: int) -> list:
    """Wait for the allreduce started under key; its results."""
    return synchronize(_pending.pop(int(key)))
