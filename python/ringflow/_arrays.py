"""Turn whatever array the caller passed into what the core needs: address, dtype, shape.

Anything numpy can view without copying is accepted: numpy arrays, objects with the buffer
protocol (bytearray, memoryview, array.array), and DLPack producers on the CPU. Problems are
not raised here: they are returned as a reason, so the collective can tell the other ranks
that this rank's input was unusable instead of leaving them waiting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ringflow import _core, _device

__all__ = [
    "EMPTY",
    "as_ndarray",
    "copied",
    "core_out",
    "describe",
    "dtype_of",
    "new_output",
    "problem",
    "result_of",
]

_DTYPES = {
    np.dtype(np.uint8): _core.DType.uint8,
    np.dtype(np.int8): _core.DType.int8,
    np.dtype(np.int16): _core.DType.int16,
    np.dtype(np.int32): _core.DType.int32,
    np.dtype(np.int64): _core.DType.int64,
    np.dtype(np.float16): _core.DType.float16,
    np.dtype(np.float32): _core.DType.float32,
    np.dtype(np.float64): _core.DType.float64,
    np.dtype(np.bool_): _core.DType.bool,
}
_SUPPORTED = "uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64, bool"


EMPTY = np.empty(0, np.uint8)


def host_dtypes() -> dict[np.dtype, _core.DType]:
    """numpy dtype -> the core's, for the host arrays `host_dtype` takes (a copy)."""
    return dict(_DTYPES)


def dtype_of(dtype: np.dtype) -> _core.DType | None:
    """The core's dtype for a numpy dtype, or None when it is not supported."""
    found = _DTYPES.get(dtype)
    if found is None and dtype.name == "bfloat16" and dtype.itemsize == 2:
        found = _core.DType.bfloat16  # ml_dtypes.bfloat16, as used by JAX and friends
    return found


def as_ndarray(x: Any) -> np.ndarray | None:
    """x itself if it is an ndarray, else a zero-copy numpy view of it, or None."""
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


def problem(x: Any, array: np.ndarray | None, writable: bool) -> str:
    """Why x cannot be used as is (the slow path, only taken when something is off)."""
    if array is None:
        return f"{type(x).__name__} is not an array (no buffer protocol or DLPack)"
    if dtype_of(array.dtype) is None:
        return f"dtype {array.dtype} is not supported (supported: {_SUPPORTED})"
    if not array.dtype.isnative:
        return f"dtype {array.dtype} is not in this machine's byte order"
    if not array.flags.c_contiguous:
        return (
            f"array of shape {array.shape} with strides {array.strides} is not C-contiguous; "
            "pass np.ascontiguousarray(x)"
        )
    if writable and not array.flags.writeable:
        return "array is read-only but the operation writes into it"
    return ""


def host_dtype(array: np.ndarray, writable: bool) -> _core.DType | None:
    """The core's dtype of a host array `describe` would take as is, else None."""
    flags = array.flags
    if flags.c_contiguous and (flags.writeable or not writable):
        return _DTYPES.get(array.dtype)
    return None


def describe(x: Any, name: str, *, writable: bool = False) -> tuple[Any, _core.Tensor]:
    """x as a numpy array (or a `_device.DeviceArray` for CUDA memory) and the core's
    descriptor of it, named for negotiation and errors.

    When x is unusable the descriptor carries the reason (and an empty array), so the collective
    fails on every rank with it instead of leaving the other ranks waiting.
    """
    device = _device.find(x)
    if device is not None:
        reason = device.problem(writable)
        if not reason:
            return device, device.tensor(name)
        return EMPTY, _core.Tensor(EMPTY, _core.DType.uint8, name, reason)
    array = as_ndarray(x)
    if array is not None:
        dtype = _DTYPES.get(array.dtype)
        flags = array.flags
        if dtype is not None and flags.c_contiguous and (flags.writeable or not writable):
            return array, _core.Tensor(array, dtype, name)
    reason = problem(x, array, writable)
    if not reason:  # bfloat16 (not in the fast table) or another dtype alias that is fine
        assert array is not None
        return array, _core.Tensor(array, dtype_of(array.dtype), name)
    return EMPTY, _core.Tensor(EMPTY, _core.DType.uint8, name, reason)


# Where results go: a numpy array for host inputs, the input's own type on its device for CUDA
# inputs. The core takes host outputs as arrays and CUDA outputs by address.


def core_out(array: Any) -> Any:
    """What the core writes an in-place result into."""
    return array.address if isinstance(array, _device.DeviceArray) else array


def new_output(array: Any, shape: tuple | None = None) -> tuple[Any, Any]:
    """A new C-contiguous result like array (of `shape`, default array's): (result, core_out)."""
    shape = array.shape if shape is None else tuple(shape)
    if isinstance(array, _device.DeviceArray):
        out = array.empty(shape)
        return out.obj, out.address
    out = np.empty(shape, array.dtype)
    return out, out


def copied(array: Any, name: str) -> tuple[Any, Any, _core.Tensor]:
    """A copy of a valid described array, for operations that write into their input:
    (result object, described copy, its descriptor)."""
    if isinstance(array, _device.DeviceArray):
        copy = array.copy()
        return copy.obj, copy, copy.tensor(name)
    copy = array.copy()
    return copy, copy, _core.Tensor(copy, dtype_of(copy.dtype), name)


def result_of(handle: _core.Handle, array: Any) -> Any:
    """The engine-allocated output of an allgather / alltoall, like array (host or device)."""
    output = handle.take_output(array.dtype)
    return array.from_host(output) if isinstance(array, _device.DeviceArray) else output
