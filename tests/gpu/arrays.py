"""Device arrays of the two frameworks the GPU tests use (CuPy, torch), moved to and from numpy.

Rank processes and the device check share this. Nothing here imports CuPy or torch at import
time: a framework is imported the first time it is used, so that the parent (pytest) never
creates a CUDA context and a host without the framework only skips the cases that need it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import numpy as np

from tests import reference as ref

FRAMEWORKS = ("cupy", "torch")
DTYPES = ("uint8", "int8", "int32", "int64", "float16", "bfloat16", "float32", "float64")
"""The device dtypes of the issue (CuPy has no bfloat16: those cases are torch only)."""

DEVICE_ENV = "RINGFLOW_TEST_DEVICE"
"""Every rank uses this CUDA device when set (several ranks share one GPU); else local rank mod
the device count, as Horovod scripts do."""


def why_cuda_unusable() -> str:
    """Why this process cannot run the GPU cases, or '' (the reason of every skip)."""
    try:
        import ringflow
    except ImportError as error:  # pragma: no cover - the suite needs ringflow anyway
        return f"ringflow is not importable: {error}"
    available = getattr(ringflow, "cuda_available", None)
    if available is None:
        return "ringflow has no cuda_available(): this build predates device buffers"
    if not available():
        return "no CUDA device: ringflow.cuda_available() is False"
    return ""


def why_framework_missing(framework: str) -> str:
    """Why a framework's CUDA arrays cannot be made here, or ''. Does not create a context."""
    if importlib.util.find_spec(framework) is None:
        return f"{framework} is not importable"
    if framework == "torch":
        torch = importlib.import_module("torch")
        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a CPU build"
    return ""


def supports(framework: str, dtype_name: str) -> bool:
    """Whether the framework has this dtype on the device (CuPy lacks bfloat16)."""
    return not (framework == "cupy" and dtype_name == "bfloat16")


def select_device(local_rank: int) -> int:
    """Make this rank's device current in both frameworks (when importable); returns its id."""
    device = os.environ.get(DEVICE_ENV)
    if device is None:
        torch = importlib.import_module("torch")
        device = str(local_rank % max(1, torch.cuda.device_count()))
    index = int(device)
    if not why_framework_missing("torch"):
        importlib.import_module("torch").cuda.set_device(index)
    if not why_framework_missing("cupy"):
        importlib.import_module("cupy").cuda.Device(index).use()
    return index


def torch_device(index: int) -> str:
    """torch's name of CUDA device `index`."""
    return f"cuda:{index}"


def _torch_dtype(torch: Any, dtype_name: str) -> Any:
    return getattr(torch, dtype_name)


def to_device(host: np.ndarray, framework: str, device: int) -> Any:
    """A new CUDA array of `framework` on `device` holding host's values (and shape)."""
    host = np.ascontiguousarray(host)
    if framework == "cupy":
        cupy = importlib.import_module("cupy")
        with cupy.cuda.Device(device):
            return cupy.asarray(host)
    torch = importlib.import_module("torch")
    if host.dtype == ref.BFLOAT16:
        bits = torch.from_numpy(host.view(np.int16))
        return bits.to(f"cuda:{device}").view(torch.bfloat16)
    return torch.from_numpy(host).to(f"cuda:{device}")


def empty(shape: tuple[int, ...], dtype_name: str, framework: str, device: int) -> Any:
    """An uninitialised CUDA array (recv buffers)."""
    if framework == "cupy":
        cupy = importlib.import_module("cupy")
        with cupy.cuda.Device(device):
            return cupy.empty(shape, dtype=ref.dtype(dtype_name))
    torch = importlib.import_module("torch")
    return torch.empty(shape, dtype=_torch_dtype(torch, dtype_name), device=f"cuda:{device}")


def to_host(x: Any) -> np.ndarray:
    """A numpy copy of a CUDA array of either framework (bfloat16 as ml_dtypes.bfloat16)."""
    module = type(x).__module__.split(".")[0]
    if module == "cupy":
        return importlib.import_module("cupy").asnumpy(x)
    torch = importlib.import_module("torch")
    if x.dtype == torch.bfloat16:
        return x.detach().view(torch.int16).cpu().numpy().view(ref.BFLOAT16)
    return x.detach().cpu().numpy()


def kind_problem(result: Any, framework: str, device: int, what: str) -> str:
    """'' if result is a CUDA array of `framework` on `device`, else what is wrong with it."""
    got = f"{type(result).__module__}.{type(result).__name__}"
    if framework == "cupy":
        cupy = importlib.import_module("cupy")
        if not isinstance(result, cupy.ndarray):
            return f"{what}: expected a cupy.ndarray, got {got}"
        if result.device.id != device:
            return f"{what}: result on device {result.device.id}, input on device {device}"
        return ""
    torch = importlib.import_module("torch")
    if not isinstance(result, torch.Tensor):
        return f"{what}: expected a torch.Tensor, got {got}"
    if not result.is_cuda or result.device.index != device:
        return f"{what}: result on {result.device}, input on cuda:{device}"
    return ""


def synchronize(framework: str) -> None:
    """Wait for all work queued on the current device (only for timing and test teardown)."""
    if framework == "cupy":
        importlib.import_module("cupy").cuda.Device().synchronize()
    else:
        importlib.import_module("torch").cuda.synchronize()


def need(framework: str) -> None:
    """In a test: skip it when the framework cannot make CUDA arrays on this machine."""
    import pytest

    reason = why_framework_missing(framework)
    if reason:
        pytest.skip(reason)
