"""Horovod's collectives on CPU torch tensors, with its names, arguments and defaults.

Forms: ``op`` returns a new tensor and is differentiable; ``op_`` works in place and returns its
input; ``op_async`` / ``op_async_`` return a handle for `synchronize` (which returns what the
blocking form would) and `poll`; ``grouped_op`` runs several tensors as one fused operation.

Semantics: ``op`` defaults to Average; ops are Horovod's integers (see `ringflow._reduce_ops`, which also
has Horovod's errors for Adasum and for ops reducescatter does not take); the legacy
``average=True/False`` means Average/Sum and cannot be combined with ``op``. ``root_rank`` is a rank of the job. ``process_set`` takes a
`ringflow.ProcessSet`. Every rank (of the set) calls every collective in the same order; errors
(including a CUDA tensor on any rank) raise `ringflow.Error` subclasses on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import ringflow as _rf
from ringflow._handles import Handle, poll, synchronize
from ringflow._process_sets import ProcessSet, global_process_set
from ringflow._reduce_ops import (
    Adasum,
    Average,
    Max,
    Min,
    Product,
    Sum,
    allreduce_op,
    reducescatter_op,
)
from ringflow.torch import _autograd, _ops
from ringflow.torch.compression import Compression

__all__ = [
    "Adasum",
    "Average",
    "Max",
    "Min",
    "ProcessSet",
    "Product",
    "Sum",
    "allgather",
    "allgather_async",
    "allreduce",
    "allreduce_",
    "allreduce_async",
    "allreduce_async_",
    "alltoall",
    "alltoall_async",
    "barrier",
    "broadcast",
    "broadcast_",
    "broadcast_async",
    "broadcast_async_",
    "global_process_set",
    "grouped_allgather",
    "grouped_allgather_async",
    "grouped_allreduce",
    "grouped_allreduce_",
    "grouped_allreduce_async",
    "grouped_allreduce_async_",
    "grouped_reducescatter",
    "grouped_reducescatter_async",
    "join",
    "poll",
    "reducescatter",
    "reducescatter_async",
    "sparse_allreduce_async",
    "synchronize",
]

_GLOBAL = global_process_set
_op = allreduce_op


# -- allreduce -------------------------------------------------------------------------------


def allreduce(
    tensor,
    average=None,
    name=None,
    compression=Compression.none,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> torch.Tensor:
    """Reduce tensor over the ranks into a new tensor (differentiable).

    A sparse COO tensor goes through `sparse_allreduce_async` (Average/Sum only). compression
    casts floating-point tensors for the transfer (e.g. ``Compression.fp16``).
    """
    op = _op(op, average)
    if isinstance(tensor, torch.Tensor) and tensor.is_sparse:
        if compression is not Compression.none or (prescale_factor, postscale_factor) != (1, 1):
            raise ValueError(
                "allreduce of a sparse tensor takes no compression, prescale_factor or "
                "postscale_factor (its indices and values are allgathered)"
            )
        return sparse_allreduce_async(tensor, name, op, process_set)()
    compressed, ctx = compression.compress(tensor)
    (out,) = _autograd.allreduce(
        [compressed], op, name, prescale_factor, postscale_factor, process_set, grouped=False
    )
    return compression.decompress(out, ctx)


def allreduce_async(
    tensor,
    average=None,
    name=None,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> Handle:
    """Start an allreduce into a new tensor; `synchronize` returns it."""
    op = _op(op, average)
    if isinstance(tensor, torch.Tensor) and tensor.is_sparse:
        return sparse_allreduce_async(tensor, name, op, process_set)
    return _ops.allreduce(
        [tensor],
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=False,
        sync=False,
    )


def allreduce_(
    tensor,
    average=None,
    name=None,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> torch.Tensor:
    """Reduce tensor over the ranks in place; returns tensor (not differentiable)."""
    op = _op(op, average)
    return _ops.allreduce(
        [tensor], op, name, prescale_factor, postscale_factor, process_set, in_place=True, sync=True
    )


def allreduce_async_(
    tensor,
    average=None,
    name=None,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> Handle:
    """Start an in-place allreduce; `synchronize` returns tensor."""
    op = _op(op, average)
    return _ops.allreduce(
        [tensor],
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=True,
        sync=False,
    )


def grouped_allreduce(
    tensors: Sequence[torch.Tensor],
    average=None,
    name=None,
    compression=Compression.none,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> list[torch.Tensor]:
    """Allreduce several tensors as one fused operation into new tensors (differentiable)."""
    op = _op(op, average)
    pairs = [compression.compress(t) for t in tensors]
    outs = _autograd.allreduce(
        [c for c, _ in pairs],
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        grouped=True,
    )
    return [compression.decompress(o, ctx) for o, (_, ctx) in zip(outs, pairs)]


def grouped_allreduce_async(
    tensors,
    average=None,
    name=None,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> Handle:
    op = _op(op, average)
    return _ops.allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=False,
        sync=False,
        grouped=True,
    )


def grouped_allreduce_(
    tensors,
    average=None,
    name=None,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> list[torch.Tensor]:
    op = _op(op, average)
    return _ops.allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=True,
        sync=True,
        grouped=True,
    )


def grouped_allreduce_async_(
    tensors,
    average=None,
    name=None,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
) -> Handle:
    op = _op(op, average)
    return _ops.allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=True,
        sync=False,
        grouped=True,
    )


def sparse_allreduce_async(tensor, name=None, op=Average, process_set=_GLOBAL) -> Handle:
    """Allreduce a sparse COO tensor by allgathering every rank's indices and values. Returns,
    as Horovod does, a callable: ``handle()`` gives the uncoalesced sparse result (Average
    divides the values); it is also a `Handle` (`synchronize`, `poll`)."""
    return _ops.sparse_allreduce(tensor, name, _op(op, None), process_set, sync=False)


# -- allgather -------------------------------------------------------------------------------


def allgather(tensor, name=None, process_set=_GLOBAL) -> torch.Tensor:
    """Concatenate every rank's tensor along dimension 0, in rank order (differentiable).
    The first dimension may differ between ranks."""
    return _autograd.allgather([tensor], name, process_set, grouped=False)[0]


def allgather_async(tensor, name=None, process_set=_GLOBAL) -> Handle:
    return _ops.allgather([tensor], name, process_set, sync=False)


def grouped_allgather(tensors, name=None, process_set=_GLOBAL) -> list[torch.Tensor]:
    return _autograd.allgather(list(tensors), name, process_set, grouped=True)


def grouped_allgather_async(tensors, name=None, process_set=_GLOBAL) -> Handle:
    return _ops.allgather(list(tensors), name, process_set, sync=False, grouped=True)


# -- broadcast -------------------------------------------------------------------------------


def broadcast(tensor, root_rank, name=None, process_set=_GLOBAL) -> torch.Tensor:
    """A new tensor holding root_rank's tensor, on every rank (differentiable)."""
    return _autograd.broadcast(tensor, root_rank, name, process_set)


def broadcast_(tensor, root_rank, name=None, process_set=_GLOBAL) -> torch.Tensor:
    """Overwrite tensor with root_rank's; returns tensor."""
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=True, sync=True)


def broadcast_async(tensor, root_rank, name=None, process_set=_GLOBAL) -> Handle:
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=False, sync=False)


def broadcast_async_(tensor, root_rank, name=None, process_set=_GLOBAL) -> Handle:
    return _ops.broadcast(tensor, root_rank, name, process_set, in_place=True, sync=False)


# -- alltoall --------------------------------------------------------------------------------


def alltoall(tensor, splits=None, name=None, process_set=_GLOBAL):
    """Send splits[i] rows of tensor to rank i (differentiable); rows received come back in rank
    order. Without splits: the output (dimension 0 divided evenly); with splits, like Horovod:
    (output, received splits as an int32 tensor)."""
    out, received = _autograd.alltoall(tensor, splits, name, process_set)
    return out if splits is None else (out, received)


def alltoall_async(tensor, splits=None, name=None, process_set=_GLOBAL) -> Handle:
    """`synchronize` returns (output, received splits)."""
    return _ops.alltoall(tensor, splits, name, process_set, sync=False)


# -- reducescatter ---------------------------------------------------------------------------


def reducescatter(
    tensor,
    name=None,
    compression=Compression.none,
    op=Average,
    process_set=_GLOBAL,
    prescale_factor=1.0,
    postscale_factor=1.0,
) -> torch.Tensor:
    """Reduce tensor over the ranks; this rank's block of dimension 0 (differentiable).
    Blocks as torch.tensor_split makes them: the first (rows % size) ranks get one more row."""
    op = reducescatter_op(op)
    compressed, ctx = compression.compress(tensor)
    (out,) = _autograd.reducescatter(
        [compressed], op, name, prescale_factor, postscale_factor, process_set, grouped=False
    )
    return compression.decompress(out, ctx)


def reducescatter_async(
    tensor, name=None, op=Average, process_set=_GLOBAL, prescale_factor=1.0, postscale_factor=1.0
) -> Handle:
    return _ops.reducescatter(
        [tensor],
        reducescatter_op(op),
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        sync=False,
    )


def grouped_reducescatter(
    tensors,
    name=None,
    compression=Compression.none,
    op=Average,
    process_set=_GLOBAL,
    prescale_factor=1.0,
    postscale_factor=1.0,
) -> list[torch.Tensor]:
    op = reducescatter_op(op)
    pairs = [compression.compress(t) for t in tensors]
    outs = _autograd.reducescatter(
        [c for c, _ in pairs],
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        grouped=True,
    )
    return [compression.decompress(o, ctx) for o, (_, ctx) in zip(outs, pairs)]


def grouped_reducescatter_async(
    tensors, name=None, op=Average, process_set=_GLOBAL, prescale_factor=1.0, postscale_factor=1.0
) -> Handle:
    return _ops.reducescatter(
        list(tensors),
        reducescatter_op(op),
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        sync=False,
        grouped=True,
    )


# -- synchronisation -------------------------------------------------------------------------


def barrier(process_set: ProcessSet = _GLOBAL) -> None:
    """Return once every rank (of process_set) has called barrier()."""
    _rf.barrier(process_set=process_set)


def join(device: int = -1) -> int:
    """This rank has no more batches: it stands in for the others' collectives (zeros for
    allreduce; Average still divides by the set's size, as in Horovod) until every rank has
    joined; returns the rank that joined last. device is Horovod's and ignored (CPU only)."""
    del device
    return _rf.join()
