"""Inputs whose exact results are known, and the count of elements that differ from them.

Rank r fills element i with a small integer that depends on (i + r) mod 7: 1..7 for sum, avg,
min and max; 1..2 for prod (so products stay small); 0/1 for bool. Every partial result is an
integer that every dtype represents exactly (below 2**8 for the 16-bit floats at N <= 32, with
two's-complement wrap-around for the 8-bit integers), so results are compared bit for bit. The
period keeps memory flat: fills and checks work through one tiled chunk, never a second
full-size array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PERIOD", "Segment", "count_wrong", "expected_output", "fill", "input_segments"]

PERIOD = 7
_CHUNK = PERIOD * (1 << 16)  # elements per fill/compare step: a multiple of PERIOD
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class Segment:
    """buf[offset + j] == pattern[(phase + j) % PERIOD] for 0 <= j < length."""

    offset: int
    length: int
    pattern: np.ndarray
    phase: int = 0


def _rank_values(op: str, rank: int, dtype: np.dtype) -> np.ndarray:
    cycle = (np.arange(PERIOD, dtype=np.int64) + rank) % PERIOD
    if dtype == np.bool_:
        return cycle % 2
    if op == "prod":
        return cycle % 2 + 1
    return cycle + 1


def rank_pattern(op: str, rank: int, dtype: np.dtype) -> np.ndarray:
    """One period of rank's input."""
    return _rank_values(op, rank, dtype).astype(dtype)


def reduced_pattern(op: str, nranks: int, dtype: np.dtype) -> np.ndarray:
    """One period of the reduction over ranks 0..nranks-1 (ringflow's rounding for avg)."""
    values = np.stack([_rank_values(op, r, dtype) for r in range(nranks)])  # exact in int64
    if op == "min":
        result = values.min(axis=0)
    elif op == "max":
        result = values.max(axis=0)
    elif op == "prod":
        result = values.prod(axis=0)
    else:
        result = values.sum(axis=0)
    if op != "avg":
        return result.astype(dtype)  # integer wrap-around as in C++
    if dtype.kind == "f" or dtype.name == "bfloat16":
        accumulate = np.float64 if dtype == np.float64 else np.float32  # 16-bit floats: f32
        return (result.astype(accumulate) / accumulate(nranks)).astype(dtype)
    return np.round(result / nranks).astype(np.int64).astype(dtype)  # nearest, ties to even


def input_segments(
    collective: str, rank: int, nranks: int, count: int, op: str, dtype: np.dtype, root: int
) -> list[Segment]:
    """What rank writes into its input buffer before the call."""
    mine = rank_pattern(op, rank, dtype)
    if collective == "broadcast" and rank != root:
        return [Segment(0, count, np.zeros(PERIOD, dtype))]  # 0 never occurs in a pattern
    blocks = nranks if collective in ("reducescatter", "alltoall") else 1
    return [Segment(0, blocks * count, mine)]


def expected_output(
    collective: str, rank: int, nranks: int, count: int, op: str, dtype: np.dtype, root: int
) -> list[Segment]:
    """What rank's result must hold after the call."""
    if collective == "allreduce":
        return [Segment(0, count, reduced_pattern(op, nranks, dtype))]
    if collective == "broadcast":
        return [Segment(0, count, rank_pattern(op, root, dtype))]
    if collective == "reducescatter":
        return [Segment(0, count, reduced_pattern(op, nranks, dtype), rank * count)]
    if collective == "allgather":
        return [Segment(k * count, count, rank_pattern(op, k, dtype)) for k in range(nranks)]
    if collective == "alltoall":
        return [
            Segment(k * count, count, rank_pattern(op, k, dtype), rank * count)
            for k in range(nranks)
        ]
    raise ValueError(f"unknown collective {collective!r}")


def _tiled(segment: Segment, length: int) -> np.ndarray:
    phase = segment.phase % PERIOD
    tile = np.tile(segment.pattern, (phase + length) // PERIOD + 1)
    return tile[phase : phase + length]


def _chunks(segment: Segment) -> tuple[np.ndarray, range, int]:
    step = min(segment.length, _CHUNK)  # when there are several chunks, step % PERIOD == 0
    return _tiled(segment, step), range(0, segment.length, step), step


def fill(buf: np.ndarray, segments: list[Segment]) -> None:
    """Write the segments into buf (flattened)."""
    flat = buf.reshape(-1)
    for segment in segments:
        tile, starts, step = _chunks(segment)
        end = segment.offset + segment.length
        for start in starts:
            begin = segment.offset + start
            stop = min(begin + step, end)
            flat[begin:stop] = tile[: stop - begin]


def count_wrong(buf: np.ndarray, segments: list[Segment]) -> int:
    """Elements of buf (flattened) that differ bit for bit from the segments, plus missing ones."""
    flat = buf.reshape(-1)
    bits = _UNSIGNED[flat.dtype.itemsize]
    wrong = 0
    for segment in segments:
        tile, starts, step = _chunks(segment)
        tile_bits = tile.view(bits)
        end = segment.offset + segment.length
        for start in starts:
            begin = segment.offset + start
            stop = min(begin + step, end)
            got = flat[begin:stop].view(bits)
            wrong += int(np.count_nonzero(got != tile_bits[: got.size])) + (stop - begin - got.size)
    return wrong
