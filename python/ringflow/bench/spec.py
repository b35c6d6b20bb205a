"""What one sweep measures, and the nccl-tests conventions for sizes and bandwidths.

Conventions (as nccl-tests): ``bytes`` is the size of the per-rank buffer that the collective
is named after, rounded down to whole elements (and, where the buffer is split between ranks,
to a multiple of ``nranks`` elements); ``count`` is nccl-tests' per-call element count:

=============  ==============================  ===================================  ==========
collective     bytes                           count                                bus factor
=============  ==============================  ===================================  ==========
allreduce      the buffer (in place)           elements of the buffer               2(N-1)/N
broadcast      the buffer (in place)           elements of the buffer               1
allgather      the gathered output             elements each rank contributes       (N-1)/N
reducescatter  the input (N blocks)            elements each rank receives          (N-1)/N
alltoall       the send buffer (N blocks)      elements sent to each peer           (N-1)/N
=============  ==============================  ===================================  ==========

algbw = bytes / time (GB/s, 1e9 bytes), busbw = algbw x bus factor. Pure Python: numpy only.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "COLLECTIVES",
    "DTYPES",
    "ITEMSIZE",
    "OPS",
    "SweepSpec",
    "bus_factor",
    "layout",
    "numpy_dtype",
    "parse_size",
    "size_range",
]

COLLECTIVES = ("allreduce", "broadcast", "allgather", "reducescatter", "alltoall")
ITEMSIZE = {
    "uint8": 1,
    "int8": 1,
    "int32": 4,
    "int64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "bool": 1,
}
DTYPES = tuple(ITEMSIZE)
OPS = ("sum", "prod", "min", "max", "avg")
REDUCING = ("allreduce", "reducescatter")
"""Collectives whose result depends on the reduction op."""

_SPLIT = ("allgather", "reducescatter", "alltoall")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE_RE = re.compile(r"\s*([0-9]+)\s*([KMG]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from '8', '64K', '256M', '1G' (binary units; an optional 'B' or 'iB' is ignored)."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: use a number of bytes with K, M or G (e.g. 64K)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def size_range(minbytes: int, maxbytes: int, factor: int) -> list[int]:
    """nccl-tests' sizes: minbytes, minbytes x factor, ... up to maxbytes inclusive."""
    if minbytes < 1 or maxbytes < minbytes:
        raise ValueError(f"need 1 <= minbytes <= maxbytes, got {minbytes} and {maxbytes}")
    if factor < 2 and minbytes != maxbytes:
        raise ValueError(f"the step factor must be at least 2, got {factor}")
    sizes = [minbytes]
    while factor >= 2 and sizes[-1] * factor <= maxbytes:
        sizes.append(sizes[-1] * factor)
    return sizes


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype called `name` (bfloat16 comes from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes  # optional: only bfloat16 sweeps need it

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype("bool" if name == "bool" else name)


def bus_factor(collective: str, nranks: int) -> float:
    """nccl-tests' busbw / algbw for this collective on nranks ranks."""
    if collective == "allreduce":
        return 2.0 * (nranks - 1) / nranks
    if collective == "broadcast":
        return 1.0
    return (nranks - 1) / nranks


def layout(collective: str, nbytes: int, itemsize: int, nranks: int) -> tuple[int, int]:
    """(bytes, count) of a requested size under the conventions above; count 0: too small."""
    elements = nbytes // itemsize
    if collective in _SPLIT:
        count = elements // nranks
        return count * nranks * itemsize, count
    return elements * itemsize, elements


@dataclass(frozen=True)
class SweepSpec:
    """One system's sweep: the same for every system compared in one command."""

    collective: str
    sizes: tuple[int, ...]  # requested bytes; `points` applies the conventions
    dtype: str
    op: str
    warmup: int
    iters: int
    root: int = 0
    check: bool = True
    device: str = "cpu"  # where the buffers live: cpu (numpy) or cuda (torch CUDA tensors)

    def points(self, nranks: int) -> list[tuple[int, int]]:
        """The distinct (bytes, count) measured on nranks ranks, skipping sizes below one element."""
        itemsize = ITEMSIZE[self.dtype]
        seen: list[tuple[int, int]] = []
        for size in self.sizes:
            point = layout(self.collective, size, itemsize, nranks)
            if point[1] > 0 and point not in seen:
                seen.append(point)
        return seen

    def to_json(self) -> str:
        """This spec as one JSON string (passed to the rank processes on their command line)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        """The spec that `to_json` wrote."""
        fields = json.loads(text)
        fields["sizes"] = tuple(fields["sizes"])
        return cls(**fields)
