"""Turn whatever array the caller passed into what the core needs: address, dtype, shape.

Anything numpy can view without copying is accepted: numpy arrays, objects with the buffer
protocol (bytearray, memoryview, array.array), and DLPack producers on the CPU. Problems are
not raised here: they are returned as a reason, so the collective can tell the other ranks
that this rank's input was unusable instead of leaving them waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ringflow import _core

__all__ = ["Described", "describe", "dtype_of"]

_DTYPES = {
    np.dtype(np.uint8): _core.DType.uint8,
    np.dtype(np.int8): _core.DType.int8,
    np.dtype(np.int32): _core.DType.int32,
    np.dtype(np.int64): _core.DType.int64,
    np.dtype(np.float16): _core.DType.float16,
    np.dtype(np.float32): _core.DType.float32,
    np.dtype(np.float64): _core.DType.float64,
    np.dtype(np.bool_): _core.DType.bool,
}
_SUPPORTED = "uint8, int8, int32, int64, float16, bfloat16, float32, float64, bool"


@dataclass
class Described:
    """A host array and the core's view of it. `array` keeps the memory alive during the call."""

    array: np.ndarray
    invalid: str  # empty when usable; otherwise why not, for this rank's and the others' errors
    dtype: _core.DType
    shape: list[int]
    address: int

    def tensor(self, name: str) -> _core.Tensor:
        """The core's descriptor of this array, named for negotiation and error messages."""
        return _core.Tensor(self.address, self.dtype, self.shape, name, self.invalid)


def dtype_of(dtype: np.dtype) -> _core.DType | None:
    """The core's dtype for a numpy dtype, or None when it is not supported."""
    found = _DTYPES.get(dtype)
    if found is None and dtype.name == "bfloat16" and dtype.itemsize == 2:
        found = _core.DType.bfloat16  # ml_dtypes.bfloat16, as used by JAX and friends
    return found


def _as_ndarray(x: Any) -> np.ndarray | None:
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(memoryview(x))
    except TypeError:
        pass
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError):
            return None
    return None


def describe(x: Any, *, writable: bool = False) -> Described:
    """Describe x for the core; `writable` when the collective writes into it (in place)."""
    array = _as_ndarray(x)
    if array is None:
        empty = np.empty(0, np.uint8)
        reason = f"{type(x).__name__} is not an array (no buffer protocol or DLPack)"
        return Described(empty, reason, _core.DType.uint8, [0], 0)
    dtype = dtype_of(array.dtype)
    reason = ""
    if dtype is None:
        reason = f"dtype {array.dtype} is not supported (supported: {_SUPPORTED})"
    elif not array.dtype.isnative:
        reason = f"dtype {array.dtype} is not in this machine's byte order"
    elif not array.flags.c_contiguous:
        reason = (
            f"array of shape {array.shape} with strides {array.strides} is not C-contiguous; "
            "pass np.ascontiguousarray(x)"
        )
    elif writable and not array.flags.writeable:
        reason = "array is read-only but the operation writes into it"
    return Described(
        array=array,
        invalid=reason,
        dtype=dtype if dtype is not None else _core.DType.uint8,
        shape=[int(d) for d in array.shape],
        address=array.ctypes.data if not reason else 0,
    )
