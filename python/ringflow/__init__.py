"""ringflow: collective communication for Python, with a C++17 core.

Horovod's names, so existing scripts port by changing one import::

    import ringflow as rf
    rf.init()
    total = rf.allreduce(np.ones(4, np.float32), op=rf.Sum)

Every collective must be called by every rank, in the same order. Arrays are numpy arrays or
anything numpy can view without copying (buffer protocol, CPU DLPack).
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

from ringflow import _core, _environment
from ringflow._allreduce import (
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
)
from ringflow._collectives import (
    allgather,
    allgather_async,
    alltoall,
    alltoall_async,
    barrier,
    broadcast,
    broadcast_,
    broadcast_async,
    broadcast_async_,
    grouped_allgather,
    grouped_allgather_async,
    grouped_reducescatter,
    grouped_reducescatter_async,
    join,
    recv,
    reducescatter,
    reducescatter_async,
    send,
)
from ringflow._core import (
    Error,
    InvalidArgumentError,
    MismatchError,
    PeerFailureError,
    ReduceOp,
    TimeoutError,  # also a subclass of the built-in TimeoutError
)
from ringflow._handles import Handle, poll, synchronize
from ringflow._process_sets import (
    ProcessSet,
    add_process_set,
    global_process_set,
    remove_process_set,
)
from ringflow._state import engine as _engine
from ringflow._state import state as _state

__all__ = [
    "Average",
    "Error",
    "Handle",
    "InvalidArgumentError",
    "Max",
    "Min",
    "MismatchError",
    "PeerFailureError",
    "ProcessSet",
    "Product",
    "ReduceOp",
    "Sum",
    "TimeoutError",
    "add_process_set",
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
    "cross_rank",
    "cross_size",
    "cuda_available",
    "cuda_built",
    "engine_stats",
    "flight_recorder",
    "global_process_set",
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
    "peer_transports",
    "poll",
    "rank",
    "recv",
    "reducescatter",
    "reducescatter_async",
    "remove_process_set",
    "send",
    "shutdown",
    "size",
    "start_timeline",
    "stop_timeline",
    "synchronize",
]

__version__ = "0.1.0"

Sum = ReduceOp.Sum
Average = ReduceOp.Average
Min = ReduceOp.Min
Max = ReduceOp.Max
Product = ReduceOp.Product


def init() -> None:
    """Join the job described by the environment (``ringflow run``, torchrun, Open MPI, Slurm).

    Without any launcher variables this process is a job of one. Calling it again while
    initialised does nothing (after a failure it raises, saying how to recover); after
    `shutdown` it joins a new job.
    """
    if _state.engine is not None:
        failure = json.loads(_state.engine.flight_recorder_json())["error"]
        if failure:
            raise Error(
                "ringflow.init(): this process's ringflow failed earlier and cannot run more "
                "operations; call ringflow.shutdown() and then ringflow.init() to join a new job. "
                f"The failure: {failure}"
            )
        return
    try:
        config = _environment.detect()
    except ValueError as error:  # a malformed launcher environment: say so as a ringflow error
        raise InvalidArgumentError(f"ringflow.init(): {error}") from error
    _state.unnamed.clear()
    _state.pid = os.getpid()
    _state.engine = _core.Engine(
        rank=config.rank,
        size=config.size,
        local_rank=-1 if config.local_rank is None else config.local_rank,
        local_size=-1 if config.local_size is None else config.local_size,
        store_host=config.store_addr,
        store_port=config.store_port,
        host_store=not config.store_external,
        secret=config.secret,
        job_id=config.job_id,
        used_store=_state.store_instance,
        timeout_s=config.timeout_s,
    )
    _state.store_instance = _state.engine.store_instance


def shutdown() -> None:
    """Leave the job: stop the engine, tell the other ranks (an orderly leave: a rank that
    still waits on a collective with this one raises at once, the others go on) and close every
    connection. Safe when not initialised; runs at interpreter exit if the script did not call
    it."""
    engine, _state.engine = _state.engine, None
    if engine is not None:
        # Closed now, not when the last reference goes: a saved exception's traceback may keep
        # the object alive, and its ports open, past a following init().
        engine.close()
    _state.inflight.clear()


@atexit.register
def _shutdown_at_exit() -> None:
    # As Horovod does: a script that ends without shutdown() still leaves in order. Not in a
    # forked child that inherited the engine: its connections belong to the parent.
    if _state.engine is not None and _state.pid == os.getpid():
        shutdown()


def is_initialized() -> bool:
    """Whether `init` has run (and `shutdown` has not since)."""
    return _state.engine is not None


def rank() -> int:
    """This process' rank in the job, 0 … size() - 1."""
    return _engine().rank


def size() -> int:
    """Number of processes in the job."""
    return _engine().size


def local_rank() -> int:
    """Rank among the processes on this host."""
    return _engine().local_rank


def local_size() -> int:
    """Number of processes on this host."""
    return _engine().local_size


def cross_rank() -> int:
    """Rank among the processes with the same local rank (one per host)."""
    return _engine().cross_rank


def cross_size() -> int:
    """Number of processes with this local rank: the number of hosts, when all are alike."""
    return _engine().cross_size


def cuda_built() -> bool:
    """Whether this build of ringflow contains its CUDA parts."""
    return bool(_core.cuda_built())


def cuda_available() -> bool:
    """Whether this build has its CUDA parts and this process sees a GPU (and its driver)."""
    return bool(_core.cuda_available())


def start_timeline(path: str) -> None:
    """Write a Chrome trace (chrome://tracing, Perfetto) of this rank's operations to path."""
    _engine().start_timeline(str(path))


def stop_timeline() -> None:
    """Finish the trace file started by `start_timeline` or RINGFLOW_TIMELINE."""
    _engine().stop_timeline()


def flight_recorder() -> dict[str, Any]:
    """This rank's flight recorder: its last operations (``entries``: id, seq, kind, name,
    process_set, bytes, fused_with, phase, peer, times in µs), what it is doing ``now``, and the
    ``error`` that failed the job ("" while healthy). On a failure ringflow also prints it, or
    writes it to ``$RINGFLOW_FLIGHT_RECORDER/rank<r>.json``."""
    return json.loads(_engine().flight_recorder_json())


def peer_transports() -> list[str]:
    """How this rank's frames reach each rank, by rank: ``"shm"`` (shared memory on this host),
    ``"tcp"`` or ``"self"``. Chosen at init per pair (``RINGFLOW_TRANSPORT=auto|tcp|shm``)."""
    return list(_engine().peer_transports())


def engine_stats() -> dict[str, int]:
    """Counters since init: negotiation rounds and bytes, response-cache hits, operations run
    (`responses`; a fused bucket counts once), small allreduces reduced from the round's own data
    (`inline_allreduces`, not in `responses`), fused operations and the tensors they carried,
    and the allreduces, allgathers and broadcasts (reducescatters, alltoalls) that read same-host
    peers' memory directly (`direct_allreduces`, `direct_gathers`)."""
    return dict(_engine().stats())
