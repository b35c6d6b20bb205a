"""The peers' workers: the same sweep with torch.distributed (gloo) and with MPI (mpi4py).

``python -m ringflow.bench.peers gloo|mpi --spec JSON --result FILE`` runs one rank. gloo ranks
are started by ``ringflow run`` (rank and size from ``RINGFLOW_RANK``/``RINGFLOW_SIZE``) and meet
at ``tcp://MASTER_ADDR:MASTER_PORT``, with CPU tensors that share the numpy buffers' memory.
MPI ranks are started by ``mpirun`` (launch.py) over TCP only. Nothing here is imported by the
parent except `PEERS`, `why_missing` and `unsupported`, which import neither torch nor mpi4py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ringflow.bench.spec import REDUCING, SweepSpec
from ringflow.bench.sweep import Call, run_sweep, worker_parser

__all__ = ["PEERS", "GlooBackend", "MpiBackend", "main", "unsupported", "why_missing"]

PEERS = ("gloo", "mpi")


def why_missing(system: str) -> str:
    """Why this peer cannot run on this machine, or '' when it can."""
    if system not in PEERS:
        return f"unknown peer (known: {', '.join(PEERS)})"
    if system == "gloo" and importlib.util.find_spec("torch") is None:
        return "torch is not importable (pip install torch==2.13.0, a CPU build)"
    if system == "mpi":
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not importable (apt-get install libopenmpi-dev; pip install mpi4py)"
        if shutil.which("mpirun") is None:
            return "mpirun not found on PATH (apt-get install openmpi-bin)"
    return ""


def unsupported(system: str, collective: str, dtype: str, op: str) -> str:
    """Why this peer cannot run this sweep (dtype or op it lacks), or '' when it can."""
    reduces = collective in REDUCING
    if system == "mpi" and dtype in ("float16", "bfloat16"):
        return f"MPI has no {dtype} datatype"
    if system == "mpi" and reduces and op == "avg":
        return "MPI has no average op"
    if reduces and op == "avg" and dtype not in ("float16", "bfloat16", "float32", "float64"):
        return "average of integers rounds differently in each library"
    return ""


def _returning(call: Callable[[], object], out: np.ndarray) -> Call:
    """call, then out: the peers write into buffers that the sweep allocated."""

    def run() -> np.ndarray:
        call()
        return out

    return run


class GlooBackend:
    """torch.distributed with the gloo backend, on CPU tensors viewing the numpy buffers."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch, self._dist = torch, dist
        self.rank = int(os.environ["RINGFLOW_RANK"])
        self.size = int(os.environ["RINGFLOW_SIZE"])
        address = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        dist.init_process_group("gloo", init_method=address, rank=self.rank, world_size=self.size)
        ops = dist.ReduceOp
        self._ops = {"sum": ops.SUM, "avg": ops.AVG, "min": ops.MIN, "max": ops.MAX}
        self._ops["prod"] = ops.PRODUCT

    def _tensor(self, array: np.ndarray) -> Any:
        if array.dtype.name == "bfloat16":
            return self._torch.from_numpy(array.view(np.int16)).view(self._torch.bfloat16)
        return self._torch.from_numpy(array)

    def prepare(
        self, collective: str, inp: np.ndarray, out: np.ndarray, op: str, root: int
    ) -> Call:
        """See `sweep.Backend.prepare`."""
        dist, reduce_op = self._dist, self._ops[op]
        tin, tout = self._tensor(inp), self._tensor(out)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

        calls: dict[str, Callable[[], object]] = {
            "allreduce": lambda: dist.all_reduce(tin, op=reduce_op),
            "broadcast": lambda: dist.broadcast(tin, root),
            "allgather": lambda: gather(tout, tin),
            "reducescatter": lambda: scatter(tout, tin, op=reduce_op),
            "alltoall": lambda: dist.all_to_all_single(tout, tin),
        }
        return _returning(calls[collective], out)

    def barrier(self) -> None:
        """See `sweep.Backend.barrier`."""
        self._dist.barrier()

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """See `sweep.Backend.max_over_ranks`."""
        result = values.copy()
        self._dist.all_reduce(self._torch.from_numpy(result), op=self._dist.ReduceOp.MAX)
        return result

    def sum_over_ranks(self, value: int) -> int:
        """See `sweep.Backend.sum_over_ranks`."""
        total = self._torch.tensor([value], dtype=self._torch.int64)
        self._dist.all_reduce(total)
        return int(total.item())

    def close(self) -> None:
        """Leave the process group."""
        self._dist.destroy_process_group()


class MpiBackend:
    """Open MPI through mpi4py's buffer interface (MPI_IN_PLACE where the call allows it)."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    def _op(self, op: str, dtype: np.dtype) -> Any:
        mpi = self._mpi
        if dtype == np.bool_:
            return {"min": mpi.LAND, "max": mpi.LOR}[op]
        return {"sum": mpi.SUM, "min": mpi.MIN, "max": mpi.MAX, "prod": mpi.PROD}[op]

    def prepare(
        self, collective: str, inp: np.ndarray, out: np.ndarray, op: str, root: int
    ) -> Call:
        """See `sweep.Backend.prepare`."""
        comm, in_place = self._comm, self._mpi.IN_PLACE
        reduce_op = self._op(op, inp.dtype) if collective in REDUCING else None

        calls: dict[str, Callable[[], object]] = {
            "allreduce": lambda: comm.Allreduce(in_place, inp, op=reduce_op),
            "broadcast": lambda: comm.Bcast(inp, root=root),
            "allgather": lambda: comm.Allgather(inp, out),
            "reducescatter": lambda: comm.Reduce_scatter_block(inp, out, op=reduce_op),
            "alltoall": lambda: comm.Alltoall(inp, out),
        }
        return _returning(calls[collective], out)

    def barrier(self) -> None:
        """See `sweep.Backend.barrier`."""
        self._comm.Barrier()

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """See `sweep.Backend.max_over_ranks`."""
        result = np.empty_like(values)
        self._comm.Allreduce(values, result, op=self._mpi.MAX)
        return result

    def sum_over_ranks(self, value: int) -> int:
        """See `sweep.Backend.sum_over_ranks`."""
        return int(self._comm.allreduce(value))

    def close(self) -> None:
        """Nothing to do: mpi4py finalises MPI at exit."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one peer rank: ``python -m ringflow.bench.peers gloo|mpi ...``."""
    parser = worker_parser("python -m ringflow.bench.peers")
    parser.add_argument("system", choices=PEERS)
    args = parser.parse_args(argv)
    backend = GlooBackend() if args.system == "gloo" else MpiBackend()
    try:
        run_sweep(backend, SweepSpec.from_json(args.spec), args.result, args.system)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
