"""Run the GPU cases' own logic on the host path: "device" arrays become host arrays.

The GPU checks (cases.py, torch_cases.py) carry their own references, seeds, splits and
oracles; a mistake there would only show on a GPU machine, whose time is scarce. With these
stand-ins the same checks run through ringflow's host path: CuPy arrays become numpy arrays,
torch CUDA tensors CPU tensors (bfloat16 ones ml_dtypes arrays for the numpy-level API, which
takes no CPU torch bfloat16), and a result of either kind is accepted. The patches are undone on
exit: harness ranks serve other tests afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from tests import reference as ref
from tests.gpu import arrays, cases, torch_cases


def _to_host_array(host: np.ndarray, framework: str, device: int) -> Any:
    import torch

    host = np.ascontiguousarray(host).copy()
    if framework == "cupy" or host.dtype == ref.BFLOAT16:
        return host
    return torch.from_numpy(host)


def _empty(shape: tuple[int, ...], dtype_name: str, framework: str, device: int) -> Any:
    import torch

    if framework == "cupy" or dtype_name == "bfloat16":
        return np.empty(shape, ref.dtype(dtype_name))
    return torch.empty(shape, dtype=getattr(torch, dtype_name))


def _to_numpy(x: Any) -> np.ndarray:
    import torch

    if isinstance(x, np.ndarray):
        return x.copy()
    if x.dtype == torch.bfloat16:
        return x.detach().view(torch.int16).numpy().view(ref.BFLOAT16).copy()
    return x.detach().numpy().copy()


def _kind_problem(result: Any, framework: str, device: int, what: str) -> str:
    import torch

    ok = isinstance(result, (np.ndarray, torch.Tensor))
    return "" if ok else f"{what}: got {type(result).__name__}"


@contextlib.contextmanager
def host_standins() -> Iterator[None]:
    """Within the block, arrays.* and torch_cases._cuda work on host memory."""
    patches = [
        (arrays, "select_device", lambda local_rank: 0),
        (arrays, "to_device", _to_host_array),
        (arrays, "empty", _empty),
        (arrays, "to_host", _to_numpy),
        (arrays, "kind_problem", _kind_problem),
        (arrays, "torch_device", lambda index: "cpu"),
        (torch_cases, "_cuda", lambda host, device: torch_cases._host_tensor(host)),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def matrix_on_host(sizes: tuple[int, ...]) -> dict[str, Any]:
    """cases.run_cases over the whole matrix at these sizes, on the host path."""
    import ringflow as rf

    with host_standins():
        return cases.run_cases(
            cases.matrix(rf.size(), arrays.FRAMEWORKS, sizes, large_ops=("Sum", "Max"))
        )


def torch_on_host(dtypes: tuple[str, ...]) -> list[str]:
    """torch_cases' op, compression and optimizer checks on the host path."""
    with host_standins():
        problems = [p for d in dtypes for s in (0, 7) for p in torch_cases.ops_match_host(d, s)]
        problems += torch_cases.compression_matches_host("fp16")
        problems += torch_cases.optimizer_matches_one_process("sgd", 2, "none")
        return problems
