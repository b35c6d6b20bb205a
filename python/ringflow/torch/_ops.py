"""Every collective on torch tensors, as one submission to the engine: blocking (sync=True, the
calling thread drives the engine) or a `ringflow.Handle` whose `synchronize` returns tensors.

Not differentiable: `_autograd` wraps these. Inputs are made contiguous (a copy only when they
are not); an in-place operation on a non-contiguous tensor works on a contiguous copy and copies
the result back when it completes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ringflow import _core
from ringflow._collectives import _check_splits
from ringflow._handles import finish
from ringflow._process_sets import set_id
from ringflow._state import auto_name, engine
from ringflow.torch import _tensors

_K = _core.OpKind
_NONE: list[int] = []
Average = _core.ReduceOp.Average


class _Input:
    """One tensor on its way to the core: the contiguous tensor it reads, its descriptor."""

    __slots__ = ("array", "core", "original", "tensor")

    def __init__(self, t: Any, name: str) -> None:
        self.original = t
        reason = _tensors.problem(t)
        if reason:
            self.tensor = None
            self.array, self.core = _tensors.EMPTY, _tensors.invalid(name, reason)
        else:
            self.tensor = t.detach().contiguous()
            self.array, self.core = _tensors.described(self.tensor, name)

    def write_back(self) -> None:
        """After an in-place operation: copy the result into a non-contiguous original."""
        if self.tensor is not None and self.tensor.data_ptr() != self.original.data_ptr():
            with torch.no_grad():
                self.original.copy_(self.tensor)


def _inputs(tensors: list, base: str, grouped: bool) -> list[_Input]:
    return [_Input(t, f"{base}.{i}" if grouped else base) for i, t in enumerate(tensors)]


def _submit(
    kind,
    inputs,
    outs,
    op=Average,
    root=0,
    pre=1.0,
    post=1.0,
    ps=0,
    splits=_NONE,
    group="",
    sync=False,
) -> list[_core.Handle]:
    cores = [i.core for i in inputs]
    return engine().submit(
        kind, cores, outs, op, root, 0, float(pre), float(post), ps, splits, [], group, sync
    )


def _empty_like(i: _Input, shape=None) -> tuple[torch.Tensor | None, Any]:
    """A new contiguous output for input i (None for an invalid input) and its numpy view."""
    if i.tensor is None:
        return None, None
    out = torch.empty(
        i.tensor.shape if shape is None else shape, dtype=i.tensor.dtype, device=i.tensor.device
    )
    return out, _tensors.view(out)


# -- allreduce -------------------------------------------------------------------------------


def allreduce(tensors, op, name, pre, post, process_set, *, in_place, sync, grouped=False):
    ps = set_id(process_set)
    base = auto_name("allreduce", name, ps)
    inputs = _inputs(tensors, base, grouped)
    if in_place:
        outs = [i.array for i in inputs]
        results = [i.tensor for i in inputs]
    else:
        results, outs = map(list, zip(*(_empty_like(i) for i in inputs))) if inputs else ([], [])
    handles = _submit(
        _K.allreduce, inputs, outs, op, 0, pre, post, ps, group=base if grouped else "", sync=sync
    )

    def result(_):
        if in_place:
            for i in inputs:
                i.write_back()
            done = [i.original for i in inputs]
        else:
            done = results
        return done if grouped else done[0]

    return finish(handles, sync, (inputs, results), result)


# -- broadcast -------------------------------------------------------------------------------


def broadcast(t, root_rank, name, process_set, *, in_place, sync):
    ps = set_id(process_set)
    name = auto_name("broadcast", name, ps)
    (i,) = _inputs([t], name, False)
    if not in_place and i.tensor is not None:  # broadcast into a copy: t stays as it was
        i.tensor = i.tensor.clone()
        i.array, i.core = _tensors.described(i.tensor, name)
    handles = _submit(_K.broadcast, [i], [None], root=int(root_rank), ps=ps, sync=sync)

    def result(_):
        if not in_place:
            return i.tensor
        i.write_back()
        return i.original

    return finish(handles, sync, (i,), result)


# -- allgather -------------------------------------------------------------------------------


def allgather(tensors, name, process_set, *, sync, grouped=False):
    ps = set_id(process_set)
    base = auto_name("allgather", name, ps)
    inputs = _inputs(tensors, base, grouped)
    handles = _submit(
        _K.allgather, inputs, [None] * len(inputs), ps=ps, group=base if grouped else "", sync=sync
    )

    def result(hs):
        outs = [
            _tensors.from_numpy(
                h.take_output(_tensors.numpy_dtype(i.tensor.dtype)), i.tensor.dtype, i.tensor.device
            )
            for h, i in zip(hs, inputs)
        ]
        return outs if grouped else outs[0]

    return finish(handles, sync, (inputs,), result)


# -- reducescatter ---------------------------------------------------------------------------


def block_rows(rows: int, ps: int) -> tuple[int, int]:
    """(first row, row count) of this rank's reducescatter block: np.array_split's blocks."""
    eng = engine()
    ranks = eng.process_set_ranks(ps)
    world = len(ranks)
    me = ranks.index(eng.rank) if eng.rank in ranks else 0
    small, extra = divmod(rows, world)
    return me * small + min(me, extra), small + (1 if me < extra else 0)


def reducescatter(tensors, op, name, pre, post, process_set, *, sync, grouped=False):
    ps = set_id(process_set)
    base = auto_name("reducescatter", name, ps)
    inputs = _inputs(tensors, base, grouped)
    results, outs = [], []
    for i in inputs:
        shape = None
        if i.tensor is not None and i.tensor.dim():
            shape = (block_rows(i.tensor.shape[0], ps)[1], *i.tensor.shape[1:])
        out, array = _empty_like(i, shape)
        results.append(out)
        outs.append(array)
    handles = _submit(
        _K.reducescatter,
        inputs,
        outs,
        op,
        pre=pre,
        post=post,
        ps=ps,
        group=base if grouped else "",
        sync=sync,
    )

    def result(_):
        return results if grouped else results[0]

    return finish(handles, sync, (inputs, results), result)


# -- alltoall --------------------------------------------------------------------------------


def alltoall(t, splits, name, process_set, *, sync):
    """Returns (output, received splits as int32, Horovod's splits dtype)."""
    ps = set_id(process_set)
    world = len(engine().process_set_ranks(ps))
    name = auto_name("alltoall", name, ps)
    (i,) = _inputs([t], name, False)
    send = [0] * world
    if i.tensor is not None:
        if isinstance(splits, torch.Tensor):
            splits = splits.tolist()
        rows = i.tensor.shape[0] if i.tensor.dim() else 0
        send, reason = _check_splits(splits, rows, world)
        if reason:  # tell every rank, like any other invalid input
            i.tensor, i.array, i.core = None, _tensors.EMPTY, _tensors.invalid(name, reason)
            send = [0] * world
        elif sum(send) < rows:  # as Horovod: the rows after the splits are not sent
            i.tensor = i.tensor[: sum(send)]
            i.array, i.core = _tensors.described(i.tensor, name)
    handles = _submit(_K.alltoall, [i], [None], ps=ps, splits=send, sync=sync)

    def result(hs):
        dtype = i.tensor.dtype
        host = hs[0].take_output(_tensors.numpy_dtype(dtype))
        out = _tensors.from_numpy(host, dtype, i.tensor.device)
        received = torch.from_numpy(np.asarray(hs[0].received_splits, dtype=np.int32))
        return out, received

    return finish(handles, sync, (i,), result)


# -- sparse allreduce ------------------------------------------------------------------------


def sparse_allreduce(t: torch.Tensor, name, op, process_set, *, sync):
    """Allreduce of a sparse COO tensor as Horovod does it: allgather the indices and the values
    of every rank; the result is uncoalesced (duplicate indices add up when used)."""
    if op not in (Average, _core.ReduceOp.Sum):
        raise _core.InvalidArgumentError(
            f"sparse allreduce supports Average and Sum, not {op.name}"
        )
    if t.layout != torch.sparse_coo:
        raise _core.InvalidArgumentError(
            f"sparse allreduce needs a sparse COO tensor, got {t.layout}"
        )
    ps = set_id(process_set)
    base = auto_name("sparse_allreduce", name, ps)
    indices = t._indices().transpose(0, 1).contiguous()  # rows: one per non-zero
    values = t._values().contiguous()
    inputs = [_Input(indices, f"{base}.indices"), _Input(values, f"{base}.values")]
    handles = _submit(_K.allgather, inputs, [None, None], ps=ps, sync=sync)
    size = len(engine().process_set_ranks(ps))

    def result(hs):
        idx = _tensors.from_numpy(hs[0].take_output(np.dtype(np.int64)), torch.int64, t.device)
        vals = _tensors.from_numpy(
            hs[1].take_output(_tensors.numpy_dtype(values.dtype)), values.dtype, t.device
        )
        if op == Average:
            vals = vals / size
        return torch.sparse_coo_tensor(idx.transpose(0, 1), vals, t.shape, check_invariants=False)

    return finish(handles, sync, (inputs, t), result)
