"""torch tensors <-> the core's descriptors, with no copy for contiguous tensors.

The core reads and writes a CPU tensor's memory through a numpy view of it (bfloat16 travels as
an int16 view, numpy having no bfloat16, labelled bfloat16 for the core) and a CUDA tensor's by
address, ordered on the current CUDA stream (`ringflow._device`). A tensor the core cannot use
(another device, a dtype ringflow lacks) becomes a descriptor carrying the reason, so the
collective fails on every rank with it instead of leaving the other ranks waiting.
"""

from __future__ import annotations

import numpy as np
import torch

from ringflow import _core, _device

__all__ = ["EMPTY", "described", "from_numpy", "numpy_dtype", "problem", "view"]

_D = _core.DType
_DTYPES: dict[torch.dtype, tuple[_core.DType, type]] = {
    torch.uint8: (_D.uint8, np.uint8),
    torch.int8: (_D.int8, np.int8),
    torch.int16: (_D.int16, np.int16),
    torch.int32: (_D.int32, np.int32),
    torch.int64: (_D.int64, np.int64),
    torch.float16: (_D.float16, np.float16),
    torch.bfloat16: (_D.bfloat16, np.int16),  # numpy's view; the core is told bfloat16
    torch.float32: (_D.float32, np.float32),
    torch.float64: (_D.float64, np.float64),
    torch.bool: (_D.bool, np.bool_),
}
_SUPPORTED = "uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64, bool"

EMPTY = np.empty(0, np.uint8)


def problem(t: object) -> str:
    """Why t cannot reach the core ("" when it can, once made contiguous)."""
    if not isinstance(t, torch.Tensor):
        return f"{type(t).__name__} is not a torch.Tensor"
    if t.device.type not in ("cpu", "cuda"):
        return f"tensors on device '{t.device}' are not supported (CPU and CUDA tensors only)"
    if t.layout != torch.strided:
        return f"{t.layout} tensors are not supported here (sparse: use sparse_allreduce_async)"
    if t.dtype not in _DTYPES:
        return f"dtype {t.dtype} is not supported (supported: {_SUPPORTED})"
    return ""


def invalid(name: str, reason: str) -> _core.Tensor:
    """A descriptor that fails the collective on every rank with reason."""
    return _core.Tensor(EMPTY, _D.uint8, name, reason)


def view(t: torch.Tensor) -> np.ndarray | int:
    """What the core writes t's result into: a numpy view of the contiguous CPU tensor t
    (int16 for bfloat16), or the address of a CUDA tensor."""
    if t.is_cuda:
        return t.data_ptr()
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def described(t: torch.Tensor, name: str) -> tuple[np.ndarray | int, _core.Tensor]:
    """t (valid, contiguous) as `view(t)` and the core's descriptor of it."""
    if t.is_cuda:
        device = _device.find(t)
        assert device is not None
        return device.address, device.tensor(name)
    array = view(t)
    return array, _core.Tensor(array, _DTYPES[t.dtype][0], name)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype engine-allocated outputs of this torch dtype come back as."""
    return np.dtype(_DTYPES[dtype][1])


def from_numpy(
    array: np.ndarray, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """An engine-allocated numpy output as a torch tensor of dtype, sharing its memory (copied
    to `device` when that is a CUDA device)."""
    out = torch.from_numpy(array)
    if device is not None and device.type == "cuda":
        out = out.to(device)
    return out.view(torch.bfloat16) if dtype == torch.bfloat16 else out
