"""The peers' workers: the same sweep with torch.distributed (gloo, nccl) and with MPI (mpi4py).

``python -m ringflow.bench.peers gloo|nccl|mpi --spec JSON --result FILE`` runs one rank. gloo
and nccl ranks are started by ``ringflow run`` (rank and size from ``RINGFLOW_RANK`` /
``RINGFLOW_SIZE``) and meet at ``tcp://MASTER_ADDR:MASTER_PORT``. gloo works on CPU tensors that
share the numpy buffers' memory, or with ``--device cuda`` on the CUDA tensors themselves (gloo
copies them through host memory); nccl only on CUDA tensors (several ranks on one GPU need
NCCL >= 2.30 and ``NCCL_MULTI_RANK_GPU_ENABLE=1``, which launch.py sets). MPI ranks are started by
``mpirun`` (launch.py) over TCP only, with host buffers. Nothing here is imported by the parent
except `PEERS`, `why_missing` and `unsupported`; only `why_missing("nccl")` imports torch.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ringflow.bench import device
from ringflow.bench.spec import REDUCING, SweepSpec
from ringflow.bench.sweep import Call, run_sweep, worker_parser

__all__ = [
    "PEERS",
    "GlooBackend",
    "MpiBackend",
    "NcclBackend",
    "crowded",
    "main",
    "unsupported",
    "why_missing",
]

PEERS = ("gloo", "mpi", "nccl")


def why_missing(system: str) -> str:
    """Why this peer cannot run on this machine, or '' when it can."""
    if system not in PEERS:
        return f"unknown peer (known: {', '.join(PEERS)})"
    if system in ("gloo", "nccl") and importlib.util.find_spec("torch") is None:
        return "torch is not importable (pip install torch==2.13.0, a CPU build)"
    if system == "nccl":
        import torch.distributed

        if not torch.distributed.is_nccl_available():
            return "this torch has no NCCL (a CPU build?)"
    if system == "mpi":
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not importable (apt-get install libopenmpi-dev; pip install mpi4py)"
        if shutil.which("mpirun") is None:
            return "mpirun not found on PATH (apt-get install openmpi-bin)"
    return ""


def crowded(system: str, nranks: int) -> str:
    """Why nccl cannot run nranks ranks on this host's GPUs, or '' (several ranks on one GPU
    need NCCL >= 2.30: older ones refuse with "Duplicate GPU detected")."""
    if system != "nccl":
        return ""
    import torch

    gpus = torch.cuda.device_count()
    if nranks <= gpus:
        return ""
    version = torch.cuda.nccl.version()
    if isinstance(version, int):  # old torch: 2.18.3 as 21803
        version = (version // 10000, version // 100 % 100, version % 100)
    if tuple(version) < (2, 30):
        shown = ".".join(map(str, version))
        return f"NCCL {shown} cannot put {nranks} ranks on {gpus} GPU(s) (needs NCCL >= 2.30)"
    return ""


def unsupported(system: str, collective: str, dtype: str, op: str, device: str = "cpu") -> str:
    """Why this peer cannot run this sweep (device, dtype or op it lacks), or '' when it can."""
    reduces = collective in REDUCING
    if system == "nccl" and device != "cuda":
        return "nccl runs on CUDA tensors only (use --device cuda)"
    if system == "mpi" and device != "cpu":
        return "the MPI peer takes host buffers only (no CUDA-aware MPI here)"
    if system == "nccl" and dtype == "bool":
        return "nccl has no bool"
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

    backend = "gloo"

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch, self._dist = torch, dist
        self.rank = int(os.environ["RINGFLOW_RANK"])
        self.size = int(os.environ["RINGFLOW_SIZE"])
        address = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        dist.init_process_group(
            self.backend, init_method=address, rank=self.rank, world_size=self.size
        )
        ops = dist.ReduceOp
        self._ops = {"sum": ops.SUM, "avg": ops.AVG, "min": ops.MIN, "max": ops.MAX}
        self._ops["prod"] = ops.PRODUCT

    def _tensor(self, array: Any) -> Any:
        if isinstance(array, self._torch.Tensor):  # --device cuda: the CUDA tensor itself
            return array
        if array.dtype.name == "bfloat16":
            return self._torch.from_numpy(array.view(np.int16)).view(self._torch.bfloat16)
        return self._torch.from_numpy(array)

    def prepare(self, collective: str, inp: Any, out: Any, op: str, root: int) -> Call:
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


class NcclBackend(GlooBackend):
    """torch.distributed with the nccl backend, on the sweep's CUDA tensors (--device cuda)."""

    backend = "nccl"

    def barrier(self) -> None:
        """See `sweep.Backend.barrier`."""
        self._dist.barrier(device_ids=[self._torch.cuda.current_device()])

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """See `sweep.Backend.max_over_ranks` (through the GPU: nccl has no host tensors)."""
        result = self._torch.from_numpy(values.copy()).cuda()
        self._dist.all_reduce(result, op=self._dist.ReduceOp.MAX)
        return result.cpu().numpy()

    def sum_over_ranks(self, value: int) -> int:
        """See `sweep.Backend.sum_over_ranks`."""
        total = self._torch.tensor([value], dtype=self._torch.int64, device="cuda")
        self._dist.all_reduce(total)
        return int(total.item())


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
    spec = SweepSpec.from_json(args.spec)
    device.select(spec.device)
    backends = {"gloo": GlooBackend, "nccl": NcclBackend, "mpi": MpiBackend}
    backend = backends[args.system]()
    try:
        run_sweep(backend, spec, args.result, args.system)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
