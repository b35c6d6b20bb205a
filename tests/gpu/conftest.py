"""Every test marked ``gpu`` is skipped, with one line saying why, where no CUDA device is usable.

The reason is worked out once per session in this (the parent) process without creating a CUDA
context: ringflow.cuda_available() asks the driver for the device count only.
"""

from __future__ import annotations

import functools

import pytest

from tests.gpu import arrays


@functools.cache
def _why_skipped() -> str:
    return arrays.why_cuda_unusable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("gpu") is not None and _why_skipped():
            item.add_marker(pytest.mark.skip(reason=_why_skipped()))
