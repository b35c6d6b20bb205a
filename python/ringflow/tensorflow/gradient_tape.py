"""Horovod's `DistributedGradientTape` and `PartialDistributedGradientTape`: a
``tf.GradientTape`` whose ``gradient`` returns the gradients averaged over the ranks."""

from __future__ import annotations

import tensorflow as tf

from ringflow._process_sets import global_process_set
from ringflow._reduce_ops import Average
from ringflow.tensorflow._grad_reduce import check_options, reduce_gradients
from ringflow.tensorflow.compression import Compression

__all__ = ["DistributedGradientTape", "PartialDistributedGradientTape"]


def _key(variable):
    """A hashable identity for tf.Variable (its ref) and keras.Variable (the object)."""
    return variable.ref() if hasattr(variable, "ref") else id(variable)


class _DistributedGradientTape(tf.GradientTape):
    def _setup(self, compression, sparse_as_dense, op, predivide, groups, process_set, scale_local):
        self._rf = dict(
            compression=compression,
            sparse_as_dense=sparse_as_dense,
            op=op,
            gradient_predivide_factor=predivide,
            groups=groups,
            process_set=process_set,
        )
        self._local_sources = set()
        self.process_set = process_set
        self.scale_local_gradients = scale_local

    def register_local_source(self, source):
        """Keep source's gradient local (not averaged over the ranks)."""
        self._local_sources.add(_key(source))

    def gradient(self, target, sources, output_gradients=None, use_generic_names=False, **kwargs):
        grads = super().gradient(target, sources, output_gradients, **kwargs)
        flat = tf.nest.flatten(sources)
        flat_grads = tf.nest.flatten(grads, expand_composites=False)
        local = [_key(v) in self._local_sources for v in flat]
        shared = [i for i, is_local in enumerate(local) if not is_local]
        reduced = reduce_gradients(
            [flat_grads[i] for i in shared], [flat[i] for i in shared], **self._rf
        )
        out = list(flat_grads)
        for i, g in zip(shared, reduced):
            out[i] = g
        if self.scale_local_gradients and any(local):
            size = len(self.process_set.ranks)  # Horovod's: local gradients divided by size
            for i, is_local in enumerate(local):
                if is_local and out[i] is not None:
                    out[i] = out[i] / tf.cast(size, out[i].dtype)
        return tf.nest.pack_sequence_as(sources, out)


_classes: dict = {}


def DistributedGradientTape(
    gradtape,
    device_dense="",
    device_sparse="",
    compression=Compression.none,
    sparse_as_dense=False,
    op=Average,
    gradient_predivide_factor=1.0,
    num_groups=0,
    groups=None,
    process_set=global_process_set,
    scale_local_gradients=True,
):
    """Wrap a recorded tape: ``gradient`` averages (op) each gradient over the ranks. Each
    gradient's allreduce is enqueued without waiting, in reverse variable order, and the step
    waits once. groups: an int (that many contiguous groups, each one fused allreduce) or a
    list of lists of variables; gradient_predivide_factor f scales by 1/f before the sum and
    f/size after it (op must be Average)."""
    groups = check_options(op, gradient_predivide_factor, num_groups, groups)
    base = type(gradtape)
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(base.__name__, (_DistributedGradientTape, base), {})
    tape = cls.__new__(cls)
    tape.__dict__.update(gradtape.__dict__)  # the recorded tape, persistent flag, watches
    tape._setup(
        compression,
        sparse_as_dense,
        op,
        gradient_predivide_factor,
        groups,
        process_set,
        scale_local_gradients,
    )
    return tape


def PartialDistributedGradientTape(
    gradtape,
    device_dense="",
    device_sparse="",
    compression=Compression.none,
    sparse_as_dense=False,
    op=Average,
    gradient_predivide_factor=1.0,
    num_groups=0,
    groups=None,
    process_set=global_process_set,
    local_layers=None,
    scale_local_gradients=True,
):
    """A `DistributedGradientTape` that keeps the gradients of local_layers' trainable
    weights local (divided by the set size when scale_local_gradients, as Horovod does)."""
    tape = DistributedGradientTape(
        gradtape,
        device_dense,
        device_sparse,
        compression,
        sparse_as_dense,
        op,
        gradient_predivide_factor,
        num_groups,
        groups,
        process_set,
        scale_local_gradients,
    )
    if local_layers is None:
        local_layers = []
    elif not isinstance(local_layers, (list, tuple)):
        local_layers = [local_layers]
    for layer in local_layers:
        for var in layer.trainable_weights:
            tape.register_local_source(var)
    return tape
