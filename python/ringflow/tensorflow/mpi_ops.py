"""Horovod 0.28.1's TensorFlow collectives on tf.Tensor, with its names, arguments and
gradients, eager and inside ``tf.function``.

Gradients (Horovod's registered ones): allreduce -> the same allreduce of the gradient (same op
and scale factors); allgather -> this rank's rows of the Average allreduce of the gradient;
broadcast -> the Average allreduce of the gradient, times 0 off the root; alltoall -> the
alltoall of the gradient back along the received splits; reducescatter -> the allgather of the
gradient, times the set size for Sum. ``device_dense``, ``device_sparse`` and
``ignore_name_scope`` are accepted and have no effect (CPU tensors; names are automatic).
"""

from __future__ import annotations

import tensorflow as tf

from ringflow import _core
from ringflow._process_sets import ProcessSet, global_process_set, set_id
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
from ringflow.tensorflow import _ops
from ringflow.tensorflow._tensors import call
from ringflow.tensorflow.compression import Compression

__all__ = [
    "Adasum",
    "Average",
    "Max",
    "Min",
    "ProcessSet",
    "Product",
    "Sum",
    "allgather",
    "allreduce",
    "alltoall",
    "broadcast",
    "broadcast_",
    "global_process_set",
    "grouped_allgather",
    "grouped_allreduce",
    "grouped_reducescatter",
    "join",
    "reducescatter",
]

_R = _core.ReduceOp
_GLOBAL = global_process_set


def _rows_shape(t: tf.Tensor) -> tf.TensorShape:
    """t's static shape with an unknown first dimension."""
    shape = t.shape
    return tf.TensorShape(None) if shape.rank is None else tf.TensorShape([None, *shape[1:]])


def _differentiable(forward, xs):
    """forward(*xs) under tf.custom_gradient when a floating input can carry a gradient, else
    the plain forward (no gradient bookkeeping to trace for integer and bool tensors)."""
    if not xs:
        return []
    if any(x.dtype.is_floating for x in xs):
        return tf.custom_gradient(forward)(*xs)
    return forward(*xs)[0]


def _zeros_if_none(grads, ys):
    return [tf.zeros_like(y) if g is None else g for g, y in zip(grads, ys)]


# -- allreduce -------------------------------------------------------------------------------


def _allreduce_dense(tensors, op, pre, post, ps, name, grouped):
    """Differentiable (grouped) allreduce of dense tensors: Horovod's gradient is the same
    allreduce of the output gradients."""
    ps_id = set_id(ps)

    def forward(*xs):
        ys = call(
            lambda *a: _ops.allreduce(a, op, pre, post, ps_id, name, grouped),
            list(xs),
            [x.dtype for x in xs],
            [x.shape for x in xs],
            "allreduce",
        )

        def grad(*dys):
            return _allreduce_dense(_zeros_if_none(dys, ys), op, pre, post, ps, None, grouped)

        return ys, grad

    return _differentiable(forward, list(tensors))


def _allreduce_sparse(t: tf.IndexedSlices, op, name, ps):
    """Horovod's IndexedSlices allreduce: allgather the values and the indices (Average
    divides the values by the set size); duplicate indices add up when used."""
    base = None if name is None else f"{name}"
    values = allgather(t.values, None if base is None else f"{base}.values", process_set=ps)
    indices = allgather(t.indices, None if base is None else f"{base}.indices", process_set=ps)
    if op == _R.Average:
        values = values / tf.cast(len(ps.ranks), values.dtype)
    return tf.IndexedSlices(values, indices, dense_shape=t.dense_shape)


def _sparse_adasum(op) -> None:
    if op == Adasum:
        raise NotImplementedError(
            "The Adasum reduction does not currently support sparse tensors. As a workaround "
            "please pass sparse_as_dense=True to DistributedOptimizer"
        )


def allreduce(
    tensor,
    average=None,
    device_dense="",
    device_sparse="",
    compression=Compression.none,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    name=None,
    process_set=_GLOBAL,
    ignore_name_scope=False,
):
    """Reduce tensor over the ranks (default op Average). An IndexedSlices is allgathered
    (values and indices), as Horovod does; compression casts floating tensors for the wire."""
    if isinstance(tensor, tf.IndexedSlices):
        _sparse_adasum(op)
        return _allreduce_sparse(tensor, allreduce_op(op, average), name, process_set)
    op = allreduce_op(op, average)
    compressed, ctx = compression.compress(tf.convert_to_tensor(tensor))
    (out,) = _allreduce_dense(
        [compressed], op, prescale_factor, postscale_factor, process_set, name, False
    )
    return compression.decompress(out, ctx)


def grouped_allreduce(
    tensors,
    average=None,
    device_dense="",
    device_sparse="",
    compression=Compression.none,
    op=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set=_GLOBAL,
    ignore_name_scope=False,
):
    """Allreduce several tensors as one fused operation (IndexedSlices each on their own)."""
    if not tensors:
        return tensors
    if any(isinstance(t, tf.IndexedSlices) for t in tensors):
        _sparse_adasum(op)
    op = allreduce_op(op, average)
    dense = [i for i, t in enumerate(tensors) if not isinstance(t, tf.IndexedSlices)]
    pairs = [compression.compress(tf.convert_to_tensor(tensors[i])) for i in dense]
    reduced = _allreduce_dense(
        [c for c, _ in pairs], op, prescale_factor, postscale_factor, process_set, None, True
    )
    results = list(tensors)
    for i, out, (_, ctx) in zip(dense, reduced, pairs):
        results[i] = compression.decompress(out, ctx)
    for i, t in enumerate(tensors):
        if isinstance(t, tf.IndexedSlices):
            results[i] = _allreduce_sparse(t, op, None, process_set)
    return results


# -- allgather -------------------------------------------------------------------------------


def _allgather(tensors, name, ps, grouped):
    ps_id = set_id(ps)

    def forward(*xs):
        ys = call(
            lambda *a: _ops.allgather(a, ps_id, name, grouped),
            list(xs),
            [x.dtype for x in xs],
            [_rows_shape(x) for x in xs],
            "allgather",
        )

        def grad(*dys):
            # Horovod's: the Average allreduce of each gradient, then this rank's rows.
            dys = _zeros_if_none(dys, ys)
            reduced = [_allreduce_dense([d], _R.Average, 1.0, 1.0, ps, None, False)[0] for d in dys]
            counts = _allgather(
                [tf.reshape(tf.shape(x, out_type=tf.int64)[0], [1]) for x in xs], None, ps, True
            )
            me, world = _ops.set_geometry(ps_id)
            return [
                tf.split(r, tf.reshape(c, [world]), axis=0)[me] for r, c in zip(reduced, counts)
            ]

        return ys, grad

    return _differentiable(forward, list(tensors))


def allgather(tensor, name=None, ignore_name_scope=False, process_set=_GLOBAL):
    """Concatenate every rank's tensor along dimension 0, in rank order (the first dimension
    may differ between ranks)."""
    return _allgather([tf.convert_to_tensor(tensor)], name, process_set, False)[0]


def grouped_allgather(tensors, name=None, ignore_name_scope=False, process_set=_GLOBAL):
    return _allgather([tf.convert_to_tensor(t) for t in tensors], name, process_set, True)


# -- broadcast -------------------------------------------------------------------------------


def broadcast(tensor, root_rank, name=None, ignore_name_scope=False, process_set=_GLOBAL):
    """root_rank's tensor on every rank (root_rank is a rank of the job)."""
    ps_id = set_id(process_set)
    root_rank = int(root_rank)

    def forward(x):
        (y,) = call(
            lambda a: _ops.broadcast(a, root_rank, ps_id, name),
            [x],
            [x.dtype],
            [x.shape],
            "broadcast",
        )

        def grad(dy):
            dy = _zeros_if_none([dy], [y])[0]
            reduced = _allreduce_dense([dy], _R.Average, 1.0, 1.0, process_set, None, False)[0]
            return reduced if _core_rank() == root_rank else reduced * 0

        return y, grad

    return _differentiable(forward, [tf.convert_to_tensor(tensor)])


def _core_rank() -> int:
    from ringflow._state import engine

    return engine().rank


def broadcast_(variables, root_rank, name=None, process_set=_GLOBAL):
    """Overwrite the variables with root_rank's values, in place; returns their new values."""
    values = [
        broadcast(v, root_rank, None if name is None else f"{name}.{i}", process_set=process_set)
        for i, v in enumerate(variables)
    ]
    for v, value in zip(variables, values):
        v.assign(value)
    return [v.read_value() if hasattr(v, "read_value") else v for v in variables]


# -- alltoall --------------------------------------------------------------------------------


def alltoall(tensor, splits=None, name=None, ignore_name_scope=False, process_set=_GLOBAL):
    """Send splits[i] rows of tensor to rank i; rows received come back in rank order. With
    splits, as Horovod: (output, received splits as int32); without, the output only."""
    ps_id = set_id(process_set)
    x = tf.convert_to_tensor(tensor)
    given = splits is not None
    split_tensor = (
        tf.cast(tf.reshape(tf.convert_to_tensor(splits), [-1]), tf.int64) if given else None
    )

    def forward(x):
        inputs = [x, split_tensor] if given else [x]
        out, received = call(
            lambda a, s=None: _ops.alltoall(a, s, ps_id, name),
            inputs,
            [x.dtype, tf.int32],
            [_rows_shape(x), tf.TensorShape([None])],
            "alltoall",
        )

        def grad(dy, _dsplits=None):
            dy = _zeros_if_none([dy], [out])[0]
            back, _ = alltoall(dy, splits=received, process_set=process_set)
            return back

        return (out, received), grad

    out, received = _differentiable(forward, [x])
    return (out, received) if given else out


# -- reducescatter ---------------------------------------------------------------------------


def _reducescatter(tensors, op, pre, post, ps, name, grouped):
    ps_id = set_id(ps)

    def forward(*xs):
        ys = call(
            lambda *a: _ops.reducescatter(a, op, pre, post, ps_id, name, grouped),
            list(xs),
            [x.dtype for x in xs],
            [_rows_shape(x) for x in xs],
            "reducescatter",
        )

        def grad(*dys):
            # Horovod's: the allgather of the gradient, times the set size for Sum (and the
            # scale factors, as ringflow.torch's).
            _, world = _ops.set_geometry(ps_id)
            factor = (world if op == _R.Sum else 1.0) * pre * post
            dys = [
                d if factor == 1 else d * tf.cast(factor, d.dtype) for d in _zeros_if_none(dys, ys)
            ]
            return [_allgather([d], None, ps, False)[0] for d in dys]

        return ys, grad

    return _differentiable(forward, list(tensors))


def reducescatter(
    tensor,
    device_dense="",
    compression=Compression.none,
    op=Average,
    name=None,
    process_set=_GLOBAL,
    ignore_name_scope=False,
    prescale_factor=1.0,
    postscale_factor=1.0,
):
    """Reduce tensor over the ranks and return this rank's block of dimension 0 (the first
    rows % size ranks get one more row)."""
    op = reducescatter_op(op)
    compressed, ctx = compression.compress(tf.convert_to_tensor(tensor))
    (out,) = _reducescatter(
        [compressed], op, prescale_factor, postscale_factor, process_set, name, False
    )
    return compression.decompress(out, ctx)


def grouped_reducescatter(
    tensors,
    device_dense="",
    compression=Compression.none,
    op=Average,
    process_set=_GLOBAL,
    ignore_name_scope=False,
    prescale_factor=1.0,
    postscale_factor=1.0,
):
    op = reducescatter_op(op)
    pairs = [compression.compress(tf.convert_to_tensor(t)) for t in tensors]
    outs = _reducescatter(
        [c for c, _ in pairs], op, prescale_factor, postscale_factor, process_set, None, True
    )
    return [compression.decompress(o, ctx) for o, (_, ctx) in zip(outs, pairs)]


# -- join ------------------------------------------------------------------------------------


def join():
    """This rank has no more data: it stands in for the others' collectives until every rank
    has joined. Returns the last rank to join (an int32 tensor, as Horovod's op does)."""
    import ringflow

    def kernel():
        import numpy as np

        return [np.asarray(ringflow.join(), np.int32)]

    return call(kernel, [], [tf.int32], [tf.TensorShape([])], "join")[0]
