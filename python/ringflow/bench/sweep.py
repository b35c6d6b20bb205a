"""The per-rank worker: one system's sweep over all sizes (``python -m ringflow.bench.sweep``).

Every rank runs the same loop for each size, whatever the system (ringflow here; torch gloo and
MPI in peers.py, through the same `Backend` interface):

1. fill the inputs (data.py), run the collective once and count the wrong elements (the check);
2. run ``warmup`` calls, a barrier, then ``iters`` calls back to back, each timed on its own;
3. take the maximum over ranks of each iteration's time (the system's own allreduce of a float64
   array) and the median of those: "the median over iterations of the slowest rank".

Timed calls work in place where the API allows it, on the same buffers every time, so values
drift (sums grow, maybe to inf): only the check call's result is compared. With ``--device
cuda`` the buffers are torch CUDA tensors and every call is followed by a device synchronisation
(device.py). Rank 0 appends one JSON
line per size to the result file and prints a progress marker for the parent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, Protocol

import numpy as np

from ringflow.bench import data, device
from ringflow.bench.spec import SweepSpec, bus_factor, numpy_dtype

__all__ = ["PROGRESS_MARKER", "Backend", "RingflowBackend", "main", "run_sweep", "worker_parser"]

PROGRESS_MARKER = "ringflow-bench-progress"
"""Rank 0 prints this, then the index of the size just finished, on a line of its own."""

Call = Callable[[], Any]


class Backend(Protocol):
    """A communication library as the sweep sees it: buffers in (numpy arrays, or torch CUDA
    tensors with ``--device cuda``; see device.py), results of the same kind out."""

    rank: int
    size: int

    def prepare(
        self, collective: str, inp: np.ndarray, out: np.ndarray, op: str, root: int
    ) -> Call:
        """A call that runs the collective once on these buffers and returns the result array."""
        ...

    def barrier(self) -> None:
        """Wait for every rank."""
        ...

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """Element-wise maximum of a float64 array over all ranks."""
        ...

    def sum_over_ranks(self, value: int) -> int:
        """Sum of an integer over all ranks."""
        ...


class RingflowBackend:
    """ringflow through its public Python API (what users call)."""

    def __init__(self) -> None:
        import ringflow as rf

        self._rf = rf
        rf.init()
        self.rank = rf.rank()
        self.size = rf.size()
        # What rank 0's frames travel by ("shm", "tcp", or "shm+tcp" on several hosts).
        kinds = sorted({kind for kind in rf.peer_transports() if kind != "self"})
        self.transport = "+".join(kinds) or "self"
        self._ops = {
            "sum": rf.Sum,
            "avg": rf.Average,
            "min": rf.Min,
            "max": rf.Max,
            "prod": rf.Product,
        }

    def prepare(
        self, collective: str, inp: np.ndarray, out: np.ndarray, op: str, root: int
    ) -> Call:
        """See `Backend.prepare`; allgather, reducescatter and alltoall return new arrays."""
        rf, reduce_op = self._rf, self._ops[op]
        calls: dict[str, Call] = {
            "allreduce": lambda: rf.allreduce_(inp, op=reduce_op),
            "broadcast": lambda: rf.broadcast_(inp, root),
            "allgather": lambda: rf.allgather(inp),
            "reducescatter": lambda: rf.reducescatter(inp, op=reduce_op),
            "alltoall": lambda: rf.alltoall(inp)[0],
        }
        return calls[collective]

    def barrier(self) -> None:
        """See `Backend.barrier`."""
        self._rf.barrier()

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        """See `Backend.max_over_ranks`."""
        return self._rf.allreduce(values, op=self._rf.Max)

    def sum_over_ranks(self, value: int) -> int:
        """See `Backend.sum_over_ranks`."""
        return int(self._rf.allreduce(np.array([value], np.int64), op=self._rf.Sum)[0])

    def close(self) -> None:
        """Leave the job."""
        self._rf.shutdown()


def _buffers(collective: str, count: int, nranks: int, dtype: np.dtype) -> tuple[Any, Any]:
    inp_blocks = nranks if collective in ("reducescatter", "alltoall") else 1
    out_blocks = {"allgather": nranks, "alltoall": nranks, "reducescatter": 1}.get(collective)
    inp = np.empty(inp_blocks * count, dtype)
    out = inp if out_blocks is None else np.empty(out_blocks * count, dtype)
    return inp, out


def measure(backend: Backend, spec: SweepSpec, nbytes: int, count: int) -> dict[str, Any]:
    """One row: check once, warm up, time `spec.iters` calls; the same on every rank."""
    dtype = numpy_dtype(spec.dtype)
    args = (spec.collective, backend.rank, backend.size, count, spec.op, dtype, spec.root)
    inp, out = _buffers(spec.collective, count, backend.size, dtype)
    if spec.check:
        data.fill(inp, data.input_segments(*args))
    inp, out = device.place(inp, out, spec.device)
    call = backend.prepare(spec.collective, inp, out, spec.op, spec.root)
    sync = device.synchronizer(spec.device)
    wrong = 0
    if spec.check:
        wrong = data.count_wrong(device.to_host(call()), data.expected_output(*args))
    for _ in range(spec.warmup):
        call()
    sync()
    backend.barrier()
    times = np.empty(spec.iters, np.float64)
    start = time.perf_counter()
    for i in range(spec.iters):
        call()
        sync()
        now = time.perf_counter()
        times[i], start = now - start, now
    slowest = backend.max_over_ranks(times)
    seconds = statistics.median(slowest.tolist())
    algbw = nbytes / seconds / 1e9
    return {
        "bytes": nbytes,
        "count": count,
        "dtype": spec.dtype,
        "op": spec.op,
        "time_us": seconds * 1e6,
        "algbw_gbps": algbw,
        "busbw_gbps": algbw * bus_factor(spec.collective, backend.size),
        "wrong": backend.sum_over_ranks(wrong) if spec.check else None,
        "times_us": [t * 1e6 for t in slowest.tolist()],
    }


JOB_WARMUP_CALLS = 200


def run_sweep(backend: Backend, spec: SweepSpec, result_path: str, system: str) -> None:
    """Measure every size of spec; rank 0 appends each row to result_path as a JSON line."""
    # Freshly started ranks settle for a while (scheduler placement, caches, lazy setup); the
    # same untimed burst for every system keeps that out of the first row.
    for _ in range(JOB_WARMUP_CALLS):
        backend.sum_over_ranks(1)
    for index, (nbytes, count) in enumerate(spec.points(backend.size)):
        row = measure(backend, spec, nbytes, count)
        if backend.rank == 0:
            row.update(system=system, collective=spec.collective, nranks=backend.size)
            row["transport"] = getattr(backend, "transport", "")
            with open(result_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{PROGRESS_MARKER} {index}", flush=True)


def worker_parser(prog: str) -> argparse.ArgumentParser:
    """Arguments every worker takes (the parent passes them; not meant for users)."""
    parser = argparse.ArgumentParser(prog=prog, description="one rank of a ringflow bench sweep")
    parser.add_argument("--spec", required=True, help="the SweepSpec as JSON")
    parser.add_argument("--result", required=True, help="JSON-lines file that rank 0 appends to")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one ringflow rank."""
    args = worker_parser("python -m ringflow.bench.sweep").parse_args(argv)
    spec = SweepSpec.from_json(args.spec)
    device.select(spec.device)
    backend = RingflowBackend()
    try:
        run_sweep(backend, spec, args.result, "ringflow")
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
