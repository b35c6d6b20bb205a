"""Horovod's Keras API for Keras 3 on ringflow: ``import ringflow.keras as hvd`` (also
``ringflow.tensorflow.keras``).

`DistributedOptimizer` wraps any Keras 3 optimizer: a subclass of its class with the same name
whose ``apply`` averages the gradients over the ranks first (overlapped: one non-blocking
allreduce per gradient, one wait per step; see `ringflow.tensorflow._grad_reduce`). Models
saved with it load back through `load_model`, which wraps the loaded optimizer again with its
state (iterations, slots) kept. The TensorFlow backend is the target; under the torch backend
use `ringflow.torch`; JAX is not supported (its jit cannot call ringflow).
"""

from __future__ import annotations

try:
    import keras as _keras
    import tensorflow as _tf
except ImportError as _error:  # pragma: no cover - exercised by test_tensorflow_import
    raise ImportError(
        "ringflow.keras needs Keras 3 and TensorFlow: pip install 'ringflow[keras,tensorflow]'"
    ) from _error

from ringflow.keras import callbacks
from ringflow.tensorflow import (
    Adasum,
    Average,
    Compression,
    Error,
    HorovodInternalError,
    Max,
    Min,
    ProcessSet,
    Product,
    Sum,
    add_process_set,
    allgather_object,
    broadcast_object,
    broadcast_variables,
    cross_rank,
    cross_size,
    global_process_set,
    init,
    is_initialized,
    local_rank,
    local_size,
    rank,
    remove_process_set,
    shutdown,
    size,
    start_timeline,
    stop_timeline,
)
from ringflow.tensorflow import mpi_ops as _ops
from ringflow.tensorflow._grad_reduce import check_options, reduce_gradients

__all__ = [
    "Adasum",
    "Average",
    "Compression",
    "DistributedOptimizer",
    "Error",
    "HorovodInternalError",
    "Max",
    "Min",
    "ProcessSet",
    "Product",
    "Sum",
    "add_process_set",
    "allgather",
    "allgather_object",
    "allreduce",
    "broadcast",
    "broadcast_object",
    "broadcast_variables",
    "callbacks",
    "cross_rank",
    "cross_size",
    "global_process_set",
    "init",
    "is_initialized",
    "load_model",
    "local_rank",
    "local_size",
    "rank",
    "reducescatter",
    "remove_process_set",
    "shutdown",
    "size",
    "start_timeline",
    "stop_timeline",
]


class _DistributedOptimizer:
    """Mixed in before the user's optimizer class: gradients are averaged, then applied."""

    def _ringflow_setup(self, **options) -> None:
        self._ringflow = options

    def apply(self, grads, trainable_variables=None):
        options = getattr(self, "_ringflow", None)
        if options is not None:
            variables = (
                trainable_variables
                if trainable_variables is not None
                else self._trainable_variables
            )
            grads = reduce_gradients(list(grads), list(variables), **options)
        return super().apply(grads, trainable_variables)


_classes: dict = {}


def _distributed_class(base: type) -> type:
    if issubclass(base, _DistributedOptimizer):
        return base
    cls = _classes.get(base)
    if cls is None:
        # Same name and module as the user's class: a saved model records the plain optimizer,
        # which load_model wraps again.
        cls = type(base.__name__, (_DistributedOptimizer, base), {"__module__": base.__module__})
        _classes[base] = cls
    return cls


def DistributedOptimizer(
    optimizer,
    name=None,
    device_dense="",
    device_sparse="",
    compression=Compression.none,
    sparse_as_dense=False,
    gradient_predivide_factor=1.0,
    op=Average,
    backward_passes_per_step=1,
    average_aggregated_gradients=False,
    num_groups=0,
    groups=None,
    process_set=global_process_set,
    scale_local_gradients=True,
):
    """A new optimizer like ``optimizer`` (built from its config, as Horovod does) whose
    ``apply`` averages (op) the gradients over the ranks first. backward_passes_per_step > 1:
    use Keras 3's own ``gradient_accumulation_steps`` on the optimizer instead."""
    if backward_passes_per_step != 1:
        raise ValueError(
            "ringflow.keras.DistributedOptimizer(backward_passes_per_step > 1) is not supported "
            "with Keras 3: pass gradient_accumulation_steps to the Keras optimizer instead"
        )
    groups = check_options(op, gradient_predivide_factor, num_groups, groups)
    cls = _distributed_class(type(optimizer))
    config = optimizer.get_config()
    if name is not None:
        config["name"] = name
    wrapped = cls.from_config(config)
    wrapped._ringflow_setup(
        op=op,
        gradient_predivide_factor=gradient_predivide_factor,
        compression=compression,
        sparse_as_dense=sparse_as_dense,
        groups=groups,
        process_set=process_set,
    )
    return wrapped


def load_model(filepath, custom_optimizers=None, custom_objects=None, compression=Compression.none):
    """Load a model saved by ``model.save`` (``.keras``) with its optimizer wrapped as a
    `DistributedOptimizer` again, its state (iterations, slot variables) kept."""
    objects = dict(custom_objects or {})
    for opt_cls in custom_optimizers or []:
        objects[opt_cls.__name__] = opt_cls
    model = _keras.models.load_model(filepath, custom_objects=objects or None)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not isinstance(optimizer, _DistributedOptimizer):
        optimizer.__class__ = _distributed_class(type(optimizer))
        optimizer._ringflow_setup(
            op=Average,
            gradient_predivide_factor=1.0,
            compression=compression,
            sparse_as_dense=False,
            groups=None,
            process_set=global_process_set,
        )
    return model


# -- value-level collectives (Horovod's horovod.keras functions) ----------------------------


def allreduce(
    value,
    name=None,
    average=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    op=None,
    compression=Compression.none,
):
    """value (a tensor, array or number) reduced over the ranks, as a tensor."""
    return _ops.allreduce(
        _tf.constant(value) if not isinstance(value, _tf.Tensor) else value,
        average=average,
        compression=compression,
        op=op,
        prescale_factor=prescale_factor,
        postscale_factor=postscale_factor,
        name=name,
    )


def allgather(value, name=None):
    """Every rank's value concatenated along the first dimension, as a tensor."""
    return _ops.allgather(_tf.convert_to_tensor(value), name=name)


def broadcast(value, root_rank, name=None):
    """root_rank's value on every rank, as a tensor."""
    return _ops.broadcast(_tf.convert_to_tensor(value), root_rank, name=name)


def reducescatter(value, name=None, op=Average):
    """This rank's block of the reduced value, as a tensor."""
    return _ops.reducescatter(_tf.convert_to_tensor(value), name=name, op=op)
