"""Where a sweep's buffers live: numpy arrays (``--device cpu``) or torch CUDA tensors (``cuda``).

Every system of one command gets the same kind of buffer: ringflow takes torch CUDA tensors
through its array API, torch gloo and nccl take them as they are. Inputs are filled and results
checked on the host (data.py); the CUDA copies of the inputs are made before the timed calls.
Every timed call is followed by a device synchronisation, so a call's time includes its GPU
work whatever the library returns early.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import numpy as np

__all__ = ["DEVICES", "place", "select", "synchronizer", "to_host", "why_unusable"]

DEVICES = ("cpu", "cuda")


def why_unusable(device: str) -> str:
    """Why sweeps cannot run on this device here, or '' (the parent asks before starting ranks)."""
    if device == "cpu":
        return ""
    import ringflow

    available = getattr(ringflow, "cuda_available", None)
    if available is None or not available():
        return "--device cuda needs a GPU: ringflow.cuda_available() is False"
    if importlib.util.find_spec("torch") is None:
        return "--device cuda needs torch with CUDA (its buffers are torch CUDA tensors)"
    import torch

    if not torch.cuda.is_available():
        return f"--device cuda needs torch with CUDA; torch {torch.__version__} sees no GPU"
    return ""


def select(device: str) -> None:
    """In a rank, before any communication library starts: use GPU local rank mod count."""
    if device != "cuda":
        return
    import torch

    local_rank = int(os.environ.get("RINGFLOW_LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(local_rank % torch.cuda.device_count())


def _to_cuda(array: np.ndarray) -> Any:
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).cuda().view(torch.bfloat16)
    return torch.from_numpy(array).cuda()


def place(inp: np.ndarray, out: np.ndarray, device: str) -> tuple[Any, Any]:
    """The buffers the timed calls use: the arrays themselves, or CUDA copies (out is inp stays
    so: in-place collectives keep one buffer)."""
    if device == "cpu":
        return inp, out
    dinp = _to_cuda(inp)
    return dinp, dinp if out is inp else _to_cuda(out)


def to_host(result: Any) -> np.ndarray:
    """A result as a numpy array (bfloat16 as its 16-bit patterns: checks compare bits)."""
    if isinstance(result, np.ndarray):
        return result
    import torch

    if result.dtype == torch.bfloat16:
        result = result.view(torch.int16)
    return result.detach().cpu().numpy()


def synchronizer(device: str) -> Callable[[], None]:
    """A call that waits for the device's queued work (nothing to wait for on the CPU)."""
    if device == "cpu":
        return lambda: None
    import torch

    return torch.cuda.synchronize
