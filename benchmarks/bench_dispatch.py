"""Per-call overhead of the Python layer: a 1-element allreduce in a job of one.

Issue 3's target: Python overhead per call (pybind11 + array description) <= 5 us. The pieces
are measured too, so a regression can be placed: describing the array, building the core's
Tensor descriptor, and the whole call in place and out of place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import ringflow as rf
from ringflow import _arrays


def test_allreduce_1_element(benchmark: Any, single_rank: None) -> None:
    benchmark.group = "dispatch, size 1"
    x = np.ones(1, np.float32)
    benchmark(rf.allreduce, x, op=rf.Sum)


def test_allreduce_inplace_1_element(benchmark: Any, single_rank: None) -> None:
    benchmark.group = "dispatch, size 1"
    x = np.ones(1, np.float32)
    benchmark(rf.allreduce_, x, op=rf.Sum)


def test_describe_and_tensor(benchmark: Any, single_rank: None) -> None:
    benchmark.group = "dispatch, size 1"
    x = np.ones(1, np.float32)
    benchmark(_arrays.describe, x, "t")
