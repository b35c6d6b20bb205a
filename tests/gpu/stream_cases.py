"""Rank-side checks that ringflow orders its work against the caller's CUDA stream.

The input is written on a non-default stream behind a long GPU sleep, after the same memory was
set to -1 (which executes at once). ringflow is called with that stream current and must read
the written values (rank + 1), so the sum over ranks is n(n + 1)/2 everywhere; reading early
gives sums of -1s. Right after the call returns, the result is used on the same stream with no
host synchronisation in between (y = result * 2); only then is the stream synchronised and y
checked. The same with a CuPy stream (the sleep is a clock64 spin kernel), and with a bare
``__cuda_array_interface__`` v3 producer whose ``stream`` field names the stream.

Every function returns a list of problems (text); empty means the check passed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import ringflow as rf
from tests.gpu import arrays

SLEEP_CYCLES = 200_000_000
"""About 0.1 s at the H200's 1.98 GHz: far longer than ringflow's own call overhead."""

COUNTS = (7, 2**20 + 3)

_SPIN_SOURCE = r"""
extern "C" __global__ void ringflow_test_spin(long long cycles) {
  long long start = clock64();
  while (clock64() - start < cycles) {
  }
}
"""


def _expected(n: int) -> float:
    return float(n * (n + 1) // 2)


def _check_values(problems: list[str], what: str, got: np.ndarray, want: float) -> None:
    wrong = np.flatnonzero(got != want)
    if wrong.size:
        i = int(wrong[0])
        problems.append(
            f"{what}: {wrong.size} of {got.size} wrong, first [{i}] = {got[i]} != {want}"
        )


def torch_stream(count: int, cycles: int = SLEEP_CYCLES) -> list[str]:
    """allreduce (blocking) and allreduce_async_ + synchronize on a torch side stream."""
    import torch

    device = arrays.select_device(rf.local_rank())
    n, rank, problems = rf.size(), rf.rank(), []
    stream = torch.cuda.Stream(device=device)
    with torch.cuda.stream(stream):
        x = torch.full((count,), -1.0, device=f"cuda:{device}")
        torch.cuda._sleep(cycles)
        x.fill_(rank + 1.0)
        out = rf.allreduce(x, op=rf.Sum, name=f"stream.torch.{count}")
        y = out * 2  # queued on `stream` at once: must see the result

        z = torch.full((count,), -1.0, device=f"cuda:{device}")
        torch.cuda._sleep(cycles)
        z.fill_(rank + 1.0)
        handle = rf.allreduce_async_(z, op=rf.Sum, name=f"stream.torch_.{count}")
        rf.synchronize(handle)
        w = z * 2
    stream.synchronize()
    _check_values(problems, f"torch allreduce, {count}", y.cpu().numpy(), 2 * _expected(n))
    _check_values(problems, f"torch allreduce_async_, {count}", w.cpu().numpy(), 2 * _expected(n))
    return [f"rank {rank}: {p}" for p in problems]


def _spin(cupy: Any) -> Any:
    return cupy.RawKernel(_SPIN_SOURCE, "ringflow_test_spin")


class _Cai3:
    """A bare CUDA array interface v3 producer (no framework type ringflow knows)."""

    def __init__(self, array: Any, stream: int) -> None:
        self._array = array
        self._stream = stream

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        interface = dict(self._array.__cuda_array_interface__)
        interface["version"] = 3
        interface["stream"] = self._stream
        return interface


def cupy_stream(count: int, cycles: int = SLEEP_CYCLES) -> list[str]:
    """allreduce on a CuPy non-blocking stream; then allreduce_ of a CAI v3 wrapper whose
    ``stream`` is that stream while the current stream is the default one."""
    import cupy

    device = arrays.select_device(rf.local_rank())
    n, rank, problems = rf.size(), rf.rank(), []
    spin = _spin(cupy)
    with cupy.cuda.Device(device):
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            x = cupy.full((count,), -1.0, dtype=cupy.float32)
            spin((1,), (1,), (np.int64(cycles),))
            x.fill(rank + 1.0)
            out = rf.allreduce(x, op=rf.Sum, name=f"stream.cupy.{count}")
            y = out * 2
        stream.synchronize()
        _check_values(problems, f"cupy allreduce, {count}", cupy.asnumpy(y), 2 * _expected(n))

        with stream:
            z = cupy.full((count,), -1.0, dtype=cupy.float32)
            spin((1,), (1,), (np.int64(cycles),))
            z.fill(rank + 1.0)
        # current stream: the default one; only the interface's `stream` names `stream`
        returned = rf.allreduce_(_Cai3(z, stream.ptr), op=rf.Sum, name=f"stream.cai.{count}")
        with stream:
            w = z * 2
        stream.synchronize()
        if not isinstance(returned, _Cai3):
            problems.append(f"cai allreduce_ returned {type(returned).__name__}, not its input")
        _check_values(problems, f"cai v3 allreduce_, {count}", cupy.asnumpy(w), 2 * _expected(n))
    return [f"rank {rank}: {p}" for p in problems]


def all_stream_cases(frameworks: tuple[str, ...] = arrays.FRAMEWORKS) -> dict[str, list[str]]:
    """Every stream case this process can run: {case: problems} (skipped frameworks absent)."""
    results: dict[str, list[str]] = {}
    for count in COUNTS:
        if "torch" in frameworks and not arrays.why_framework_missing("torch"):
            results[f"torch {count}"] = _guard(torch_stream, count)
        if "cupy" in frameworks and not arrays.why_framework_missing("cupy"):
            results[f"cupy+cai {count}"] = _guard(cupy_stream, count)
    return results


def _guard(fn: Any, *args: Any) -> list[str]:
    try:
        return fn(*args)
    except Exception as error:
        return [f"rank {rf.rank()}: {fn.__name__}{args}: raised {type(error).__name__}: {error}"]
