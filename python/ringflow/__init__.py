"""ringflow: collective communication for Python, with a C++17 core.

Horovod's names, so existing scripts port by changing one import::

    import ringflow as rf
    rf.init()
    total = rf.allreduce(np.ones(4, np.float32), op=rf.Sum)

Every collective must be called by every rank, in the same order. Arrays are numpy arrays or
anything numpy can view without copying (buffer protocol, CPU DLPack).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import numpy as np

from ringflow import _arrays, _core, _environment
from ringflow._core import (
    Error,
    InvalidArgumentError,
    MismatchError,
    PeerFailureError,
    ReduceOp,
    TimeoutError,  # also a subclass of the built-in TimeoutError
)

__all__ = [
    "Average",
    "Error",
    "InvalidArgumentError",
    "Max",
    "Min",
    "MismatchError",
    "PeerFailureError",
    "Product",
    "ReduceOp",
    "Sum",
    "TimeoutError",
    "allgather",
    "allreduce",
    "allreduce_",
    "alltoall",
    "barrier",
    "broadcast",
    "broadcast_",
    "cross_rank",
    "cross_size",
    "cuda_built",
    "init",
    "is_initialized",
    "local_rank",
    "local_size",
    "rank",
    "recv",
    "reducescatter",
    "send",
    "shutdown",
    "size",
]

__version__ = "0.1.0"

Sum = ReduceOp.Sum
Average = ReduceOp.Average
Min = ReduceOp.Min
Max = ReduceOp.Max
Product = ReduceOp.Product


class _State:
    """This process' ringflow: the core runtime and the counters that name unnamed tensors."""

    def __init__(self) -> None:
        self.runtime: _core.Runtime | None = None
        self.generation = 0  # how many times init() ran; namespaces the store keys
        self.unnamed: defaultdict[str, itertools.count] = defaultdict(lambda: itertools.count())


_state = _State()


def init() -> None:
    """Join the job described by the environment (``ringflow run``, torchrun, Open MPI, Slurm).

    Without any launcher variables this process is a job of one. Calling it again while
    initialised does nothing; after `shutdown` it joins a new job.
    """
    if _state.runtime is not None:
        return
    try:
        config = _environment.detect()
    except ValueError as error:  # a malformed launcher environment: say so as a ringflow error
        raise InvalidArgumentError(f"ringflow.init(): {error}") from error
    generation = _state.generation
    _state.generation += 1
    _state.unnamed.clear()
    _state.runtime = _core.Runtime(
        rank=config.rank,
        size=config.size,
        local_rank=-1 if config.local_rank is None else config.local_rank,
        local_size=-1 if config.local_size is None else config.local_size,
        store_host=config.store_addr,
        store_port=config.store_port,
        host_store=not config.store_external,
        secret=config.secret,
        job_id=config.job_id,
        generation=generation,
        timeout_s=config.timeout_s,
    )


def shutdown() -> None:
    """Leave the job: close every connection. Safe to call when not initialised."""
    runtime, _state.runtime = _state.runtime, None
    if runtime is not None:
        # Closed now, not when the last reference goes: a saved exception's traceback may keep
        # the object alive, and its ports open, past a following init().
        runtime.close()


def is_initialized() -> bool:
    """Whether `init` has run (and `shutdown` has not since)."""
    return _state.runtime is not None


def _runtime() -> _core.Runtime:
    if _state.runtime is None:
        raise Error("ringflow has not been initialized; call ringflow.init() first")
    return _state.runtime


def rank() -> int:
    """This process' rank in the job, 0 … size() - 1."""
    return _runtime().rank


def size() -> int:
    """Number of processes in the job."""
    return _runtime().size


def local_rank() -> int:
    """Rank among the processes on this host."""
    return _runtime().local_rank


def local_size() -> int:
    """Number of processes on this host."""
    return _runtime().local_size


def cross_rank() -> int:
    """Rank among the processes with the same local rank (one per host)."""
    return _runtime().cross_rank


def cross_size() -> int:
    """Number of processes with this local rank: the number of hosts, when all are alike."""
    return _runtime().cross_size


def cuda_built() -> bool:
    """Whether this build of ringflow contains its CUDA parts."""
    return bool(_core.cuda_built())


def _name(kind: str, name: str | None) -> str:
    # Deterministic across ranks as long as every rank calls collectives in the same order.
    return name if name is not None else f"{kind}.noname.{next(_state.unnamed[kind])}"


def allreduce_(
    x: Any,
    op: ReduceOp = Average,
    name: str | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> Any:
    """Reduce x over all ranks in place and return x itself.

    Average divides the sum by size(): floats in their type (float32 for 16-bit floats),
    integers rounding to nearest, ties to even. prescale_factor multiplies the input first,
    postscale_factor the result.
    """
    runtime = _runtime()
    array, tensor = _arrays.describe(x, _name("allreduce", name), writable=True)
    runtime.allreduce(tensor, array, op, float(prescale_factor), float(postscale_factor))
    return x


def allreduce(
    x: Any,
    op: ReduceOp = Average,
    name: str | None = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
) -> np.ndarray:
    """Reduce x over all ranks into a new array (see `allreduce_` for the semantics)."""
    runtime = _runtime()
    array, tensor = _arrays.describe(x, _name("allreduce", name))
    out = np.empty(array.shape, array.dtype)
    runtime.allreduce(tensor, out, op, float(prescale_factor), float(postscale_factor))
    return out


def broadcast_(x: Any, root_rank: int, name: str | None = None) -> Any:
    """Overwrite x on every rank with root_rank's x; returns x itself."""
    runtime = _runtime()
    _, tensor = _arrays.describe(x, _name("broadcast", name), writable=True)
    runtime.broadcast(tensor, root_rank)
    return x


def broadcast(x: Any, root_rank: int, name: str | None = None) -> np.ndarray:
    """A new array holding root_rank's x, on every rank."""
    runtime = _runtime()
    name = _name("broadcast", name)
    array, tensor = _arrays.describe(x, name)
    if array is not _arrays.EMPTY:  # usable: broadcast into a copy, x stays as it was
        array = array.copy()
        tensor = _core.Tensor(array, tensor.dtype, name)
    runtime.broadcast(tensor, root_rank)
    return array


def allgather(x: Any, name: str | None = None) -> np.ndarray:
    """Concatenate every rank's x along the first dimension, in rank order.

    The first dimension may differ between ranks; the others and the dtype must match.
    """
    runtime = _runtime()
    array, tensor = _arrays.describe(x, _name("allgather", name))
    first_dims = runtime.allgather_sizes(tensor)
    out = np.empty((sum(first_dims), *array.shape[1:]), dtype=array.dtype)
    runtime.allgather(tensor, first_dims, out)
    return out


def reducescatter(x: Any, op: ReduceOp = Average, name: str | None = None) -> np.ndarray:
    """Reduce x over all ranks and return this rank's block of the first dimension.

    Blocks are as `np.array_split` makes them: the first (rows % size) ranks get one more row.
    """
    runtime = _runtime()
    array, tensor = _arrays.describe(x, _name("reducescatter", name))
    rows = array.shape[0] if array.ndim else 0
    mine = rows // runtime.size + (1 if runtime.rank < rows % runtime.size else 0)
    out = np.empty((mine, *array.shape[1:]), dtype=array.dtype)
    runtime.reducescatter(tensor, out, op)
    return out


def _check_splits(splits: Any, rows: int, world: int) -> tuple[list[int], str]:
    if splits is None:
        if rows % world:
            return [0] * world, (
                f"first dimension {rows} is not divisible by {world} ranks; pass splits"
            )
        return [rows // world] * world, ""
    values = [int(s) for s in np.asarray(splits).reshape(-1)]
    if len(values) != world:
        return [0] * world, f"splits has {len(values)} entries, expected one per rank ({world})"
    if any(v < 0 for v in values) or sum(values) != rows:
        return [0] * world, (
            f"splits {values} must be non-negative and sum to the first dimension {rows}"
        )
    return values, ""


def alltoall(x: Any, splits: Any = None, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Send splits[i] rows of x to rank i; returns (rows received in rank order, received splits).

    Without splits, x's first dimension is divided evenly and must be divisible by size().
    """
    runtime = _runtime()
    name = _name("alltoall", name)
    array, tensor = _arrays.describe(x, name)
    rows = array.shape[0] if array.ndim else 0
    send_splits, reason = _check_splits(splits, rows, runtime.size)
    if reason:  # tell every rank, like any other invalid input
        array = _arrays.EMPTY
        tensor = _core.Tensor(array, _core.DType.uint8, name, reason)
    recv_splits = runtime.alltoall_sizes(tensor, send_splits)
    out = np.empty((sum(recv_splits), *array.shape[1:]), dtype=array.dtype)
    runtime.alltoall(tensor, send_splits, recv_splits, out)
    return out, np.asarray(recv_splits, dtype=np.int64)


def barrier() -> None:
    """Return once every rank has called barrier()."""
    _runtime().barrier()


def send(x: Any, dst: int, name: str | None = None) -> None:
    """Send x to rank dst, which must call recv with a buffer of the same size."""
    _runtime().send(_arrays.describe(x, name or "send")[1], dst)


def recv(x: Any, src: int, name: str | None = None) -> Any:
    """Receive a message from rank src into x (same byte size as sent); returns x."""
    _runtime().recv(_arrays.describe(x, name or "recv", writable=True)[1], src)
    return x
