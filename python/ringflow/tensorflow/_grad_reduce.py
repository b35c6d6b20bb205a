"""Averaging a step's gradients over the ranks, overlapped: one non-blocking allreduce enqueued
per gradient (or per group), in reverse variable order (the order backward produces them),
and one synchronisation for the step. Shared by `DistributedGradientTape` and the Keras
`DistributedOptimizer`.

Eager, the enqueues go straight to the engine. Inside a ``tf.function`` each enqueue is a
stateful op that depends only on its gradient (and the previous enqueue, for the order), so it
starts as soon as backward has produced that gradient; one sync op waits for all of them.
IndexedSlices gradients (without sparse_as_dense) are allgathered, as Horovod does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ringflow import _core
from ringflow._handles import synchronize
from ringflow._process_sets import set_id
from ringflow._reduce_ops import Adasum, allreduce_op
from ringflow.tensorflow import _ops
from ringflow.tensorflow._tensors import call, to_numpy, to_tf, translate
from ringflow.tensorflow.mpi_ops import _allreduce_sparse

__all__ = ["check_options", "reduce_gradients"]


def check_options(op, gradient_predivide_factor, num_groups, groups):
    """Horovod's argument checks; returns the groups to use."""
    import warnings

    if op == Adasum:
        raise NotImplementedError("Adasum is not supported by ringflow; use op=Average or op=Sum")
    if gradient_predivide_factor != 1.0 and allreduce_op(op, None) != _core.ReduceOp.Average:
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    if num_groups != 0:
        warnings.warn(
            "Parameter `num_groups` has been replaced by `groups` and will be removed in v0.23.0.",
            DeprecationWarning,
            stacklevel=1,
        )
        if groups is None:
            groups = num_groups
    if groups is not None and (
        isinstance(groups, bool)
        or not (isinstance(groups, list) or (isinstance(groups, int) and groups >= 0))
    ):
        raise ValueError(
            "groups should be a non-negative integer or a list of list of tf.Variable."
        )
    return groups


def _split(items: list, n: int) -> list[list]:
    d, r = divmod(len(items), n)
    return [items[i * d + min(i, r) : (i + 1) * d + min(i + 1, r)] for i in range(n)]


def _buckets(dense: list[int], variables, groups) -> list[list[int]]:
    """Gradient indices reduced together, in reverse variable order."""
    if isinstance(groups, int) and groups > 0:
        buckets = [b for b in _split(dense, groups) if b]
    elif isinstance(groups, list) and variables is not None:
        where = {v.ref() if hasattr(v, "ref") else id(v): i for i, v in enumerate(variables)}
        taken, buckets = set(), []
        for group in groups:
            members = [where.get(v.ref() if hasattr(v, "ref") else id(v)) for v in group]
            members = sorted(i for i in members if i is not None and i in dense)
            if members:
                buckets.append(members)
                taken.update(members)
        buckets += [[i] for i in dense if i not in taken]
    else:
        buckets = [[i] for i in dense]
    return sorted(buckets, key=max, reverse=True)


def reduce_gradients(
    grads,
    variables=None,
    op=None,
    gradient_predivide_factor=1.0,
    compression=None,
    sparse_as_dense=False,
    groups=None,
    process_set=None,
):
    """grads averaged (op) over the process set's ranks; None gradients stay None."""
    from ringflow._process_sets import global_process_set
    from ringflow.tensorflow.compression import Compression

    process_set = global_process_set if process_set is None else process_set
    compression = Compression.none if compression is None else compression
    rop = allreduce_op(op, None)
    pre, post = 1.0 / gradient_predivide_factor, gradient_predivide_factor
    grads = list(grads)
    if sparse_as_dense:
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    ps = set_id(process_set)
    if len(process_set.ranks) == 1:
        return grads  # Horovod's: nothing to reduce in a set of one
    results = list(grads)
    for i, g in enumerate(grads):
        if isinstance(g, tf.IndexedSlices):
            results[i] = _allreduce_sparse(g, rop, None, process_set)
    dense = [
        i for i, g in enumerate(grads) if g is not None and not isinstance(g, tf.IndexedSlices)
    ]
    if not dense:
        return results
    compressed = {}
    for i in dense:
        compressed[i] = compression.compress(tf.convert_to_tensor(grads[i]))
    buckets = _buckets(dense, variables, groups)
    if tf.executing_eagerly():
        reduced = _eager(buckets, compressed, rop, pre, post, ps)
    else:
        reduced = _graph(buckets, compressed, rop, pre, post, ps)
    for i in dense:
        results[i] = compression.decompress(reduced[i], compressed[i][1])
    return results


def _eager(buckets, compressed, op, pre, post, ps) -> dict:
    try:
        handles = [
            _ops.allreduce(
                [to_numpy(compressed[i][0]) for i in b],
                op,
                pre,
                post,
                ps,
                None,
                len(b) > 1,
                sync=False,
            )
            for b in buckets
        ]
        outs = [synchronize(h) for h in handles]
    except _core.Error as error:
        raise translate(error) from None
    reduced = {}
    for b, arrays in zip(buckets, outs):
        for i, a in zip(b, arrays):
            reduced[i] = to_tf(a, compressed[i][0].dtype)
    return reduced


def _graph(buckets, compressed, op, pre, post, ps) -> dict:
    keys = []
    for b in buckets:
        grouped = len(b) > 1

        def enqueue(*arrays, grouped=grouped):
            return [np.asarray(_ops.enqueue(arrays, op, pre, post, ps, None, grouped), np.int64)]

        keys += call(
            enqueue, [compressed[i][0] for i in b], [tf.int64], [tf.TensorShape([])], "enqueue"
        )
    order = [i for b in buckets for i in b]

    def sync(*ks):
        return [a for k in ks for a in _ops.take(k)]

    outs = call(
        sync,
        keys,
        [compressed[i][0].dtype for i in order],
        [compressed[i][0].shape for i in order],
        "synchronize",
    )
    return dict(zip(order, outs))
