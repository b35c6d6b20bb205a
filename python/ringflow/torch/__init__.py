"""Horovod's PyTorch API on ringflow: ``import ringflow.torch as hvd`` runs Horovod scripts.

Pure Python over ringflow's core (tensors reach it through numpy views of their memory), so one
wheel serves every torch version. CPU tensors only for now: a CUDA tensor raises
`ringflow.InvalidArgumentError` on every rank of the collective.

Exceptions: every ringflow failure is a `ringflow.Error`, which is also Horovod's
``HorovodInternalError`` (Horovod raises that for any failed collective, bad input included).
``HostsUpdatedInterrupt`` exists for ``except`` clauses; ringflow has no elastic mode and never
raises it.
"""

from __future__ import annotations

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
    stop_timeline,
)
from ringflow.torch.compression import Compression
from ringflow.torch.functions import (
    allgather_object,
    broadcast_object,
    broadcast_optimizer_state,
    broadcast_parameters,
)
from ringflow.torch.mpi_ops import (
    Adasum,
    Average,
    Max,
    Min,
    Product,
    Sum,
    allgather,
    allgather_async,
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    alltoall,
    alltoall_async,
    barrier,
    broadcast,
    broadcast_,
    broadcast_async,
    broadcast_async_,
    grouped_allgather,
    grouped_allgather_async,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
    grouped_reducescatter,
    grouped_reducescatter_async,
    join,
    poll,
    reducescatter,
    reducescatter_async,
    sparse_allreduce_async,
    synchronize,
)
from ringflow.torch.optimizer import DistributedOptimizer
from ringflow.torch.sync_batch_norm import SyncBatchNorm


def init(comm=None, process_sets=None) -> None:
    """Horovod's init. comm: None, or a list of ranks (not supported: ringflow's job is the
    launcher's whole job; use process sets). process_sets: ProcessSets to register on every rank
    right after joining, or "dynamic" (sets are added later; ringflow always allows that)."""
    if comm is not None:
        raise InvalidArgumentError(
            "ringflow.torch.init(comm=...) is not supported: every process of the launched job "
            "joins; pass process_sets= or use add_process_set() for sub-groups"
        )
    _rf.init()
    if process_sets is not None and process_sets != "dynamic":
        for process_set in process_sets:
            add_process_set(process_set)


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    """Horovod's start_timeline: a Chrome trace of this rank's operations (rank r > 0 writes
    "<stem>.rank<r><ext>"). mark_cycles is accepted; ringflow marks negotiation rounds anyway."""
    _rf.start_timeline(file_path)


HorovodInternalError = Error
"""Horovod's name for a failed collective: every ringflow error."""


class HostsUpdatedInterrupt(RuntimeError):
    """Horovod's elastic-mode signal that hosts changed; never raised by ringflow."""

    def __init__(self, skip_sync: bool = False) -> None:
        super().__init__("hosts updated")
        self.skip_sync = skip_sync


# -- capabilities: ringflow has its own TCP transport, no MPI, Gloo, NCCL, CCL, DDL or ROCm ---


def mpi_built() -> bool:
    return False


def mpi_enabled() -> bool:
    return False


def mpi_threads_supported() -> bool:
    """Raises ValueError, as Horovod does when MPI is not enabled (ringflow has no MPI)."""
    raise ValueError("Horovod MPI is not enabled; Please make sure it's installed and enabled.")


def gloo_built() -> bool:
    return False


def gloo_enabled() -> bool:
    return False


def nccl_built() -> int:
    """0: Horovod returns NCCL's version number, 0 when built without it."""
    return 0


def ddl_built() -> bool:
    return False


def ccl_built() -> bool:
    return False


def rocm_built() -> bool:
    return False


def cuda_built() -> bool:
    """Whether ringflow was built with CUDA, so that its collectives take CUDA tensors."""
    return _rf.cuda_built()


def sparse_as_dense(tensor):
    """A sparse tensor as a dense one (others unchanged): what ``sparse_as_dense=True`` does to
    gradients before their allreduce."""
    return tensor.to_dense() if tensor.is_sparse else tensor


__version__ = _rf.__version__

__all__ = [
    "Adasum",
    "Average",
    "Compression",
    "DistributedOptimizer",
    "Error",
    "HorovodInternalError",
    "HostsUpdatedInterrupt",
    "InvalidArgumentError",
    "Max",
    "Min",
    "MismatchError",
    "PeerFailureError",
    "ProcessSet",
    "Product",
    "Sum",
    "SyncBatchNorm",
    "TimeoutError",
    "add_process_set",
    "allgather",
    "allgather_async",
    "allgather_object",
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
    "broadcast_object",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "ccl_built",
    "cross_rank",
    "cross_size",
    "cuda_built",
    "ddl_built",
    "global_process_set",
    "gloo_built",
    "gloo_enabled",
    "grouped_allgather",
    "grouped_allgather_async",
    "grouped_allreduce",
    "grouped_allreduce_",
    "grouped_allreduce_async",
    "grouped_allreduce_async_",
    "grouped_reducescatter",
    "grouped_reducescatter_async",
    "init",
    "is_initialized",
    "join",
    "local_rank",
    "local_size",
    "mpi_built",
    "mpi_enabled",
    "mpi_threads_supported",
    "nccl_built",
    "poll",
    "rank",
    "reducescatter",
    "reducescatter_async",
    "remove_process_set",
    "rocm_built",
    "shutdown",
    "size",
    "sparse_allreduce_async",
    "sparse_as_dense",
    "start_timeline",
    "stop_timeline",
    "synchronize",
]
