"""Typed surface of ringflow's C++ extension (internal: use the ringflow package)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
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
    int16 = 9

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
def cuda_device_of(address: int) -> int:
    """The CUDA device an address belongs to; -1 for host memory (or without CUDA)."""

def _cuda_staging_times(
    device: int, address: int, bytes: int, iterations: int = 10
) -> dict[str, float]:
    """Test-only: seconds per copy of a device buffer to pinned memory and back, plain
    (memcpy_d2h_s, memcpy_h2d_s) and through the engine's staging (staged_round_trip_s)."""

def cuda_device_count() -> int:
    """GPUs this process can use; 0 without a driver or a GPU (never raises)."""

def cuda_available() -> bool:
    """cuda_built() and cuda_device_count() > 0."""

def _cuda_reference(
    name: str,
    dst: int = 0,
    srcs: Sequence[int] = (),
    count: int = 0,
    dtype: DType = ...,
    op: ReduceOp = ...,
    factor: float = 1.0,
    divisor: int = 1,
    src_dtype: DType | None = None,
    regions: Sequence[tuple[int, int, int]] = (),
    stream: int = 0,
    synchronize: bool = True,
) -> None:
    """Test-only: the host reference of CUDA kernel `name` on host addresses (e.g. numpy's
    `a.ctypes.data`), with the kernels' element math; `stream` and `synchronize` are ignored.
    Nothing checks the addresses. Kernels and their arguments (counts are elements, of `dtype`):

    - "reduce_fold": dst = srcs[n-1] op (... op srcs[0]), 1 <= len(srcs) <= 8; dst may be a src.
    - "scale": dst[i] *= factor, in place (integers: float64, truncated toward zero).
    - "divide": dst[i] /= divisor, in place (integers: x * (1.0 / divisor), truncated).
    - "cast": dst (dtype) = srcs[0] (src_dtype), float32 <-> float16 / bfloat16 or same dtype.
    - "batched_copy": for (dst, src, bytes) in regions: copy bytes; other arguments unused.

    Raises InvalidArgumentError for an unknown name or unsupported dtype / op / arguments.
    """

def _cuda_kernel(
    name: str,
    dst: int = 0,
    srcs: Sequence[int] = (),
    count: int = 0,
    dtype: DType = ...,
    op: ReduceOp = ...,
    factor: float = 1.0,
    divisor: int = 1,
    src_dtype: DType | None = None,
    regions: Sequence[tuple[int, int, int]] = (),
    stream: int = 0,
    synchronize: bool = True,
) -> None:
    """Test-only: CUDA kernel `name` (as `_cuda_reference`) on device addresses (e.g. CuPy's
    `a.data.ptr`), launched on `stream` (a cudaStream_t as int; 0 = legacy default stream), then
    waited for (with synchronize=False it returns after the launch: for timing). Raises
    InvalidArgumentError when cuda_available() is False, Error when the launch or the kernel
    fails.
    """

def probe_handshake(
    host: str, port: int, secret: bytes, job_id: str, rank: int, timeout_s: float = 10.0
) -> None: ...

class Tensor:
    """A C-contiguous host or CUDA buffer: address, dtype, shape, and a name for negotiation."""

    def __init__(self, array: NDArray[Any], dtype: DType, name: str, invalid: str = "") -> None: ...
    @staticmethod
    def cuda(
        address: int, device: int, stream: int, dtype: DType, shape: list[int], name: str
    ) -> Tensor: ...
    @property
    def device(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> DType: ...
    @property
    def shape(self) -> list[int]: ...

class OpKind(Enum):
    allreduce = ...
    broadcast = ...
    allgather = ...
    reducescatter = ...
    alltoall = ...
    barrier = ...
    point_to_point = ...
    add_process_set = ...
    remove_process_set = ...
    join = ...

class Handle:
    def done(self) -> bool: ...
    def rethrow(self) -> None: ...
    def take_output(self, dtype: Any) -> NDArray[Any]: ...
    @property
    def received_splits(self) -> list[int]: ...
    @property
    def value(self) -> int: ...

class Engine:
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
        used_store: int,
        timeout_s: float,
    ) -> None: ...
    def close(self) -> None: ...
    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def store_instance(self) -> int: ...
    @property
    def local_rank(self) -> int: ...
    @property
    def local_size(self) -> int: ...
    @property
    def cross_rank(self) -> int: ...
    @property
    def cross_size(self) -> int: ...
    def submit(
        self,
        kind: OpKind,
        tensors: list[Tensor],
        outs: list[NDArray[Any] | None],
        op: ReduceOp = ...,
        root: int = 0,
        peer: int = 0,
        prescale: float = 1.0,
        postscale: float = 1.0,
        process_set: int = 0,
        splits: list[int] = ...,
        set_ranks: list[int] = ...,
        group: str = "",
        synchronous: bool = False,
    ) -> list[Handle]: ...
    def wait(self, handle: Handle) -> None: ...
    def allreduce_now(
        self,
        array: Any,
        dtype: DType,
        name: str,
        out: Any,
        op: ReduceOp,
        prescale: float,
        postscale: float,
    ) -> None: ...
    def process_set_ranks(self, process_set: int) -> list[int]: ...
    def next_send_name(self, dst: int) -> str: ...
    def next_recv_name(self, src: int) -> str: ...
    def start_timeline(self, path: str) -> None: ...
    def stop_timeline(self) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def peer_transports(self) -> list[str]: ...
    def flight_recorder_json(self) -> str: ...

def allreduce_now_fast(
    engine: Engine,
    array: Any,
    dtype: DType,
    name: str,
    out: Any,
    op: ReduceOp,
    prescale: float,
    postscale: float,
    /,
) -> None:
    """Engine.allreduce_now without pybind11's dispatch (positional arguments only)."""

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

# Test-only (tests/test_hostile_clients.py): a real TcpPair fed raw bytes from `peer`; each
# receive is (length, tag, variable_length). Not public API.
def _probe_frames(
    data: bytes, recvs: list[tuple[int, int, bool]], peer: int, transport: str = "tcp"
) -> dict[str, object]: ...
