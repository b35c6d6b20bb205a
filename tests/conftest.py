"""Fixtures shared by the multi-process tests (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import pytest

from tests import harness


@pytest.fixture(scope="session")
def pools() -> Iterator[harness.Pools]:
    """Persistent initialised jobs, one per world size, torn down at session end."""
    pools = harness.Pools()
    yield pools
    pools.close()


@pytest.fixture
def make_job() -> Iterator[Callable[..., harness.Job]]:
    """Fresh jobs for tests that kill ranks, poison the communicator or control init.

    ``make_job(size, **kwargs)`` builds a `harness.Job` (not started); every job made is closed
    when the test ends: killed if the test failed or the job broke, else shut down cleanly.
    """
    jobs: list[harness.Job] = []

    def make(size: int, **kwargs: Any) -> harness.Job:
        job = harness.Job(size, **kwargs)
        jobs.append(job)
        return job

    yield make
    errors = []
    for job in jobs:
        try:
            job.close()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n".join(errors))
