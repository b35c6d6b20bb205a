"""Typed surface of ringflow's C++ extension (internal: use the ringflow package)."""

from __future__ import annotations

import builtins
from enum import Enum
from typing import Any

from numpy.typing import NDArray

class Error(builtins.RuntimeError):
    """Base class of every ringflow error."""

class InvalidArgumentError(Error, builtins.ValueError):
    """Bad input from the caller, rejected before any data moved."""

class MismatchError(Error):
    """Ranks disagree about an operation."""

class TimeoutError(Error, builtins.TimeoutError):
    """A deadline (RINGFLOW_TIMEOUT) expired."""

class PeerFailureError(Error, builtins.ConnectionError):
    """A peer died, disconnected or misbehaved."""

class DType(Enum):
    uint8 = 0
    int8 = 1
    int32 = 2
    int64 = 3
    float16 = 4
    bfloat16 = 5
    float32 = 6
    float64 = 7
    bool = 8

class ReduceOp(Enum):
    Sum = 0
    Average = 1
    Min = 2
    Max = 3
    Product = 4

def dtype_size(dtype: DType) -> int: ...
def reduce(
    a: NDArray[Any], b: NDArray[Any], out: NDArray[Any], dtype: DType, op: ReduceOp
) -> None: ...
def reduce_kernel_isa() -> str: ...
def cuda_built() -> bool: ...
def probe_handshake(
    host: str, port: int, secret: bytes, job_id: str, rank: int, timeout_s: float = 10.0
) -> None: ...

class Tensor:
    """A C-contiguous host buffer: address, dtype, shape, and a name for negotiation."""

    def __init__(self, array: NDArray[Any], dtype: DType, name: str, invalid: str = "") -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> DType: ...
    @property
    def shape(self) -> list[int]: ...

class Runtime:
    def __init__(
        self,
        rank: int,
        size: int,
        local_rank: int,
        local_size: int,
        store_host: str,
        store_port: int,
        host_store: bool,
        secret: bytes,
        job_id: str,
        generation: int,
        timeout_s: float,
    ) -> None: ...
    def close(self) -> None: ...
    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def local_rank(self) -> int: ...
    @property
    def local_size(self) -> int: ...
    @property
    def cross_rank(self) -> int: ...
    @property
    def cross_size(self) -> int: ...
    def allreduce(
        self, tensor: Tensor, out: NDArray[Any], op: ReduceOp, prescale: float, postscale: float
    ) -> None: ...
    def broadcast(self, tensor: Tensor, root: int) -> None: ...
    def allgather_sizes(self, tensor: Tensor) -> list[int]: ...
    def allgather(self, tensor: Tensor, first_dims: list[int], out: NDArray[Any]) -> None: ...
    def reducescatter(self, tensor: Tensor, out: NDArray[Any], op: ReduceOp) -> None: ...
    def alltoall_sizes(self, tensor: Tensor, splits: list[int]) -> list[int]: ...
    def alltoall(
        self, tensor: Tensor, splits: list[int], recv_splits: list[int], out: NDArray[Any]
    ) -> None: ...
    def barrier(self) -> None: ...
    def send(self, tensor: Tensor, dst: int) -> None: ...
    def recv(self, tensor: Tensor, src: int) -> None: ...

class StoreServer:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, secret: bytes, job_id: str
    ) -> None: ...
    @property
    def port(self) -> int: ...
    def close(self) -> None: ...

class StoreClient:
    def __init__(
        self, host: str, port: int, secret: bytes, job_id: str, timeout_s: float = 30.0
    ) -> None: ...
    def set(self, key: str, value: bytes) -> None: ...
    def get(self, key: str, timeout_s: float | None = None) -> bytes: ...
    def add(self, key: str, delta: int) -> int: ...
    def wait(self, keys: list[str], timeout_s: float | None = None) -> None: ...
    def close(self) -> None: ...
