"""TensorFlow tensors <-> numpy arrays for the core, and the core's errors as TensorFlow's.

Eager inputs reach the core through a numpy view of the tensor's buffer (no copy); results come
back through DLPack when the array is 64-byte aligned (outputs we allocate are), else as a copy.
Inside a `tf.function` the ops run through ``tf.numpy_function`` (TensorFlow hands the kernel
numpy views and copies the results back). XLA cannot run Python, so ``jit_compile=True`` is
refused when the function is traced, on every rank alike, instead of failing (or hanging) later.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as _tf_ops
from tensorflow.python.ops import control_flow_util

from ringflow import _core

__all__ = ["aligned_empty", "call", "to_numpy", "to_tf", "translate"]

ALIGN = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (what
    TensorFlow's kernels expect, so DLPack hands it over without a copy)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def to_numpy(t: Any) -> np.ndarray:
    """An eager tensor (or anything convertible) as a numpy view of its buffer."""
    if not isinstance(t, tf.Tensor):
        t = tf.convert_to_tensor(t)
    return t._numpy()  # a view that keeps the tensor alive, as np.asarray(t) gives


def to_tf(array: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    """A core result as an eager tensor: DLPack (no copy) when aligned, else a copy."""
    if array.size and array.flags.c_contiguous and array.ctypes.data % ALIGN == 0:
        if dtype == tf.bfloat16:  # numpy's DLPack has no bfloat16: hand over the bits
            return tf.bitcast(
                tf.experimental.dlpack.from_dlpack(array.view(np.uint16).__dlpack__()), tf.bfloat16
            )
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.constant(array, dtype=dtype)


# ringflow's errors raised as the TensorFlow error a Horovod TF op raises for the same failure,
# and still as the ringflow error (so ``except hvd.HorovodInternalError`` catches every one).
def _both(rf_cls: type, tf_cls: type) -> type:
    def __init__(self, message: str) -> None:
        tf_cls.__init__(self, None, None, message)

    return type(rf_cls.__name__, (tf_cls, rf_cls), {"__init__": __init__, "__module__": __name__})


_ERRORS = [
    (_core.MismatchError, _both(_core.MismatchError, tf.errors.FailedPreconditionError)),
    (_core.InvalidArgumentError, _both(_core.InvalidArgumentError, tf.errors.InvalidArgumentError)),
    (_core.TimeoutError, _both(_core.TimeoutError, tf.errors.DeadlineExceededError)),
    (_core.PeerFailureError, _both(_core.PeerFailureError, tf.errors.UnavailableError)),
    (_core.Error, _both(_core.Error, tf.errors.UnknownError)),
]


def translate(error: BaseException) -> BaseException:
    """The TensorFlow-and-ringflow error for a ringflow error (others unchanged)."""
    for rf_cls, both in _ERRORS:
        if isinstance(error, rf_cls):
            return both(str(error))
    return error


def _check_graph(what: str) -> None:
    if control_flow_util.GraphOrParentsInXlaContext(_tf_ops.get_default_graph()):
        raise ValueError(
            f"ringflow.tensorflow.{what}: cannot run inside an XLA-compiled function "
            "(tf.function(jit_compile=True) or Keras jit_compile=True): ringflow's collectives "
            "run in Python, which XLA cannot compile; use jit_compile=False"
        )


def call(
    kernel: Callable[..., list],
    inputs: list,
    touts: list,
    shapes: list,
    what: str,
) -> list:
    """Run kernel (numpy arrays in, numpy arrays out) on tensors: directly when eager, else as
    one stateful ``tf.numpy_function`` op ordered after this graph's previous ringflow op (so
    every rank runs its collectives in program order), with the outputs' static shapes set."""
    if tf.executing_eagerly():
        try:
            outs = kernel(*[to_numpy(t) for t in inputs])
        except _core.Error as error:
            raise translate(error) from None
        return [to_tf(o, d) for o, d in zip(outs, touts)]
    _check_graph(what)
    graph = _tf_ops.get_default_graph()
    previous = getattr(graph, "_ringflow_last", None)
    deps = [previous] if previous is not None else []
    with tf.control_dependencies(deps):
        outs = tf.numpy_function(kernel, inputs, touts, stateful=True, name=f"ringflow_{what}")
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    graph._ringflow_last = outs[0].op
    for out, shape in zip(outs, shapes):
        out.set_shape(shape)
    return outs
