"""CUDA arrays: torch CUDA tensors, CuPy arrays and any ``__cuda_array_interface__`` producer.

The core gets a device buffer as (address, device, stream, dtype, shape): no framework is
compiled in. The stream is the caller's current one (torch's and CuPy's current stream, or the
producer's CAI v3 ``stream``): ringflow's copies are queued on it, so they come after whatever
the caller queued before the call and before whatever it queues after ``synchronize``. Results
come back as the input's own type, on the input's device.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ringflow import _core

__all__ = ["DeviceArray", "find"]

_D = _core.DType
_BY_NAME = {
    "uint8": _D.uint8,
    "int8": _D.int8,
    "int16": _D.int16,
    "int32": _D.int32,
    "int64": _D.int64,
    "float16": _D.float16,
    "bfloat16": _D.bfloat16,
    "float32": _D.float32,
    "float64": _D.float64,
    "bool": _D.bool,
}
# CAI v3 / CuPy's handle of cudaStreamPerThread: a different stream in every thread.
_PER_THREAD_DEFAULT_STREAM = 2
# How a bfloat16 result travels through numpy (which has no bfloat16): as its bits.
_HOST_DTYPE = {"bfloat16": np.dtype(np.int16)}


class DeviceArray:
    """One CUDA buffer as the core needs it, and the framework object that owns it."""

    __slots__ = (
        "address",
        "contiguous",
        "core_dtype",
        "device",
        "dtype_name",
        "kind",
        "obj",
        "readonly",
        "shape",
        "stream",
    )

    def __init__(self, obj, kind, address, device, dtype_name, shape, stream, contiguous, readonly):
        self.obj = obj
        self.kind = kind  # "torch", "cupy" or "cai"
        self.address = int(address)
        self.device = int(device)
        self.dtype_name = dtype_name
        self.core_dtype = _BY_NAME.get(dtype_name)
        self.shape = tuple(int(d) for d in shape)
        self.stream = int(stream)
        self.contiguous = contiguous
        self.readonly = readonly

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of results copied through the host (bfloat16 as int16 bits)."""
        return _HOST_DTYPE.get(self.dtype_name) or np.dtype(self.dtype_name)

    def problem(self, writable: bool) -> str:
        if self.core_dtype is None:
            return f"dtype {self.dtype_name} is not supported on CUDA either"
        if not self.contiguous:
            return f"CUDA array of shape {self.shape} is not C-contiguous; make it contiguous"
        if writable and self.readonly:
            return "CUDA array is read-only but the operation writes into it"
        if self.stream == _PER_THREAD_DEFAULT_STREAM:
            # ringflow's thread would order its result on its own per-thread stream instead
            return (
                "the per-thread default stream (cudaStreamPerThread) is not supported; use a "
                "stream object or the legacy default stream"
            )
        return ""

    def tensor(self, name: str) -> _core.Tensor:
        return _core.Tensor.cuda(
            self.address, self.device, self.stream, self.core_dtype, list(self.shape), name
        )

    def first_rows(self, rows: int) -> DeviceArray:
        """The first `rows` rows of this C-contiguous array: the same memory, a shorter shape."""
        return DeviceArray(
            self.obj,
            self.kind,
            self.address,
            self.device,
            self.dtype_name,
            (rows, *self.shape[1:]),
            self.stream,
            True,
            self.readonly,
        )

    def empty(self, shape) -> DeviceArray:
        """A new C-contiguous array like this one (same framework, device, dtype)."""
        if self.kind == "torch":
            torch = sys.modules["torch"]
            new = torch.empty(tuple(shape), dtype=self.obj.dtype, device=self.obj.device)
        else:
            cupy = _cupy(self)
            with cupy.cuda.Device(self.device):
                new = cupy.empty(tuple(shape), dtype=self.dtype)
        found = find(new)
        assert found is not None
        return found

    def copy(self) -> DeviceArray:
        new = self.empty(self.shape)
        if self.kind == "torch":
            new.obj.copy_(self.obj)
        else:
            _cupy(self).asarray(new.obj)[...] = _cupy(self).asarray(self.obj)
        return new

    def from_host(self, host: np.ndarray) -> Any:
        """An engine-allocated host result on this array's device, as this array's type."""
        if self.kind == "torch":
            torch = sys.modules["torch"]
            out = torch.from_numpy(host).to(self.obj.device)
            return out.view(self.obj.dtype) if self.dtype_name == "bfloat16" else out
        cupy = _cupy(self)
        with cupy.cuda.Device(self.device):
            return cupy.asarray(host)


def _cupy(array: DeviceArray):
    cupy = sys.modules.get("cupy")
    if cupy is None:
        try:
            import cupy  # only for results of CAI producers other than CuPy
        except ImportError as error:
            raise _core.InvalidArgumentError(
                f"a new CUDA result for a {type(array.obj).__name__} needs CuPy installed "
                "(or pass a torch tensor / CuPy array, or use the in-place form)"
            ) from error
    return cupy


def _from_torch(x) -> DeviceArray:
    torch = sys.modules["torch"]
    stream = torch.cuda.current_stream(x.device).cuda_stream
    name = str(x.dtype).replace("torch.", "")
    return DeviceArray(
        x,
        "torch",
        x.data_ptr(),
        x.device.index,
        name,
        x.shape,
        stream,
        x.is_contiguous(),
        False,
    )


def _from_cupy(x) -> DeviceArray:
    cupy = sys.modules["cupy"]
    with x.device:
        stream = cupy.cuda.get_current_stream().ptr
    name = "bfloat16" if x.dtype.name == "bfloat16" else x.dtype.name
    return DeviceArray(
        x, "cupy", x.data.ptr, x.device.id, name, x.shape, stream, x.flags.c_contiguous, False
    )


def _from_interface(x, iface: dict) -> DeviceArray | None:
    address, readonly = iface["data"]
    shape = tuple(iface["shape"])
    dtype = np.dtype(iface["typestr"])
    strides = iface.get("strides")
    contiguous = strides is None or tuple(strides) == _c_strides(shape, dtype.itemsize)
    device = _core.cuda_device_of(address) if address else 0
    if device < 0:
        return None  # host memory behind the interface: numpy's path takes it
    stream = iface.get("stream") or 0  # CAI v3; None: nothing to wait for
    return DeviceArray(
        x, "cai", address, device, dtype.name, shape, stream, contiguous, bool(readonly)
    )


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def find(x: Any) -> DeviceArray | None:
    """x as a CUDA buffer, or None when x is not one (host arrays take numpy's path)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return _from_torch(x) if x.is_cuda else None
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return _from_cupy(x)
    iface = getattr(type(x), "__cuda_array_interface__", None) and getattr(
        x, "__cuda_array_interface__", None
    )
    if isinstance(iface, dict):
        return _from_interface(x, iface)
    return None
