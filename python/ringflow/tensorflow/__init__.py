"""Horovod's TensorFlow API on ringflow: ``import ringflow.tensorflow as hvd`` runs Horovod TF2
scripts, with no TensorFlow build (pure Python over ringflow's core, any TF 2.16-2.21).

Eager calls go straight to the core; inside ``tf.function`` the collectives run as stateful
``tf.numpy_function`` ops in program order (``jit_compile=True`` is refused when traced). CPU
tensors. Errors: a ringflow error raised as the TensorFlow error Horovod's op raises
(``tf.errors.FailedPreconditionError`` for mismatches, ``InvalidArgumentError`` for bad input,
``UnknownError`` otherwise) that is also the `ringflow.Error` subclass (Horovod's
``HorovodInternalError``); inside a graph, TensorFlow's ``tf.numpy_function`` error with
ringflow's message.
"""

from __future__ import annotations

try:
    import tensorflow as _tf
except ImportError as _error:  # pragma: no cover - exercised by test_tensorflow_import
    raise ImportError(
        "ringflow.tensorflow needs TensorFlow: pip install 'ringflow[tensorflow]'"
    ) from _error

import ringflow as _rf
from ringflow import (
    Error,
    InvalidArgumentError,
    MismatchError,
    PeerFailureError,
    ProcessSet,
    TimeoutError,
    add_process_set,
    cross_rank,
    cross_size,
    global_process_set,
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
from ringflow.tensorflow.compression import Compression
from ringflow.tensorflow.functions import allgather_object, broadcast_object, broadcast_variables
from ringflow.tensorflow.gradient_tape import (
    DistributedGradientTape,
    PartialDistributedGradientTape,
)
from ringflow.tensorflow.mpi_ops import (
    Adasum,
    Average,
    Max,
    Min,
    Product,
    Sum,
    allgather,
    allreduce,
    alltoall,
    broadcast,
    broadcast_,
    grouped_allgather,
    grouped_allreduce,
    grouped_reducescatter,
    join,
    reducescatter,
)

HorovodInternalError = Error
"""Horovod's name for a failed collective: every ringflow error."""


def init(comm=None, process_sets=None) -> None:
    """Horovod's init: join the launcher's job; process_sets are registered right after."""
    if comm is not None:
        raise InvalidArgumentError(
            "ringflow.tensorflow.init(comm=...) is not supported: every process of the launched "
            "job joins; pass process_sets= or use add_process_set() for sub-groups"
        )
    _rf.init()
    if process_sets is not None and process_sets != "dynamic":
        for process_set in process_sets:
            add_process_set(process_set)


def mpi_built() -> bool:
    return False


def mpi_enabled() -> bool:
    return False


def gloo_built() -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built() -> int:
    return 0


def cuda_built() -> bool:
    return _rf.cuda_built()


def rocm_built() -> bool:
    return False


def size_op(process_set_id=0, name=None):
    """The set's size as a tensor (Horovod's op form)."""
    from ringflow._state import engine

    return _tf.constant(len(engine().process_set_ranks(process_set_id)), _tf.int32)


def rank_op(name=None):
    return _tf.constant(rank(), _tf.int32)


def local_rank_op(name=None):
    return _tf.constant(local_rank(), _tf.int32)


def local_size_op(name=None):
    return _tf.constant(local_size(), _tf.int32)


__version__ = _rf.__version__

__all__ = [
    "Adasum",
    "Average",
    "Compression",
    "DistributedGradientTape",
    "Error",
    "HorovodInternalError",
    "InvalidArgumentError",
    "Max",
    "Min",
    "MismatchError",
    "PartialDistributedGradientTape",
    "PeerFailureError",
    "ProcessSet",
    "Product",
    "Sum",
    "TimeoutError",
    "add_process_set",
    "allgather",
    "allgather_object",
    "allreduce",
    "alltoall",
    "broadcast",
    "broadcast_",
    "broadcast_object",
    "broadcast_variables",
    "cross_rank",
    "cross_size",
    "cuda_built",
    "global_process_set",
    "gloo_built",
    "gloo_enabled",
    "grouped_allgather",
    "grouped_allreduce",
    "grouped_reducescatter",
    "init",
    "is_initialized",
    "join",
    "local_rank",
    "local_rank_op",
    "local_size",
    "local_size_op",
    "mpi_built",
    "mpi_enabled",
    "nccl_built",
    "rank",
    "rank_op",
    "reducescatter",
    "remove_process_set",
    "rocm_built",
    "shutdown",
    "size",
    "size_op",
    "start_timeline",
    "stop_timeline",
]
