"""Shared by the Horovod conformance tests (tests/test_horovod_conformance_*.py): tensors to and
from numpy, and Horovod 0.28.1's formulas where tests/reference.py has no equivalent.

Horovod's own rules, as its sources state them (horovod/torch/mpi_ops.py, horovod/common/ops/
collective_operations.h, operations.cc) -- the references implement these, not ringflow's code:

- ``scale(x, f)``: ``f * x``; integers in float64 truncated toward zero; floats in their
  accumulation type with f rounded to it (reference.scale).
- allreduce / reducescatter: prescale each rank's input, reduce, then scale by postscale, or by
  ``postscale / size`` for Average (``postscale_factor /= size``).
- join: joined ranks contribute zeros; Average still divides by the set's size.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from tests import reference as ref

WORLD = (2, 3)


def to_torch(a: np.ndarray):
    import torch

    if a.dtype == ref.BFLOAT16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ref.BFLOAT16).copy()
    return t.numpy().copy()


@contextlib.contextmanager
def env(**values: str):
    """Environment variables set for the block (inside a rank process)."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def block_rows(rows: int, n: int) -> list[int]:
    """Horovod's reducescatter blocks: rows // n each, the first rows % n ranks one more."""
    return [rows // n + (1 if r < rows % n else 0) for r in range(n)]


def my_rows(full: np.ndarray, n: int, rank: int) -> np.ndarray:
    """This rank's reducescatter block of a full result (Horovod's ComputeOutputShapeForRank)."""
    rows = block_rows(full.shape[0], n)
    start = sum(rows[:rank])
    return full[start : start + rows[rank]]


def assert_bitwise(actual: np.ndarray, expected: np.ndarray, context: str) -> None:
    """Same dtype and shape, and the same bits (so -0.0 and NaN payloads count)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if (
        actual.dtype == expected.dtype
        and actual.shape == expected.shape
        and np.array_equal(ref.bits(actual), ref.bits(expected))
    ):
        return  # the common case, without np.testing's cost
    ref.assert_bits_equal(actual, expected, context)
