"""pytest-benchmark suites of ringflow's hot pieces: ``python -m pytest benchmarks --benchmark-only``.

Files named ``bench_*.py`` are collected here (the project's pytest configuration only looks at
``tests/``). ringflow keeps one job per process, so each module initialises the job it needs:
`single_rank` (a job of one) or `two_ranks` (this process is rank 0; rank 1 is a subprocess
that repeats the same allreduces, told how many over its stdin before each benchmark).
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringflow as rf
from ringflow import _core

RANK_TIMEOUT_S = 30.0
"""``RINGFLOW_TIMEOUT`` for both ranks: a desynchronised benchmark fails instead of hanging."""

_LAUNCHER_PREFIXES = ("RINGFLOW_", "OMPI_", "PMI_", "PMIX_", "SLURM_")
_LAUNCHER_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")

# Rank 1: for each request "CALLS NBYTES" on stdin, run CALLS in-place float32 Sum allreduces of
# NBYTES (the same calls rank 0 makes), then answer "done". An empty line or EOF ends it.
_FOLLOWER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ringflow as rf

    # The store keys carry how many times this process initialised ringflow before: rank 0
    # (the pytest process) may have done so already, and the ranks of a job must agree.
    rf._state.generation = int(sys.argv[1])
    rf.init()
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        calls, nbytes = (int(word) for word in line.split())
        x = np.ones(nbytes // 4, np.float32)
        for _ in range(calls):
            rf.allreduce_(x, op=rf.Sum)
        print("done", flush=True)
    rf.shutdown()
    """
)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` as test modules."""
    explicit = parent.session.isinitpath(file_path)  # pytest's own collector takes those
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not explicit:
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _without_launcher_variables() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_LAUNCHER_PREFIXES) and key not in _LAUNCHER_NAMES
    }


@pytest.fixture(scope="module")
def single_rank() -> Iterator[None]:
    """ringflow initialised as a job of one in this process."""
    with pytest.MonkeyPatch.context() as mp:
        for key in set(os.environ) - set(_without_launcher_variables()):
            mp.delenv(key)
        rf.init()
    try:
        yield
    finally:
        rf.shutdown()


class Follower:
    """Rank 1 of a two-rank job, driven over its stdin."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def _answer(self, expected: str) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], RANK_TIMEOUT_S + 10)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != expected:
            raise AssertionError(f"rank 1 answered {line!r} instead of {expected!r}")

    def start(self, calls: int, nbytes: int) -> None:
        """Make rank 1 run `calls` allreduces of nbytes, alongside ours."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{calls} {nbytes}\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """Wait until rank 1 has made all the calls it was asked for."""
        self._answer("done")


@pytest.fixture(scope="module")
def two_ranks() -> Iterator[Follower]:
    """This process is rank 0 of a two-rank job over TCP; the fixture is rank 1."""
    secret, job_id = secrets.token_hex(16), f"bench-{os.getpid()}-{secrets.token_hex(4)}"
    store = _core.StoreServer(host="127.0.0.1", port=0, secret=secret.encode(), job_id=job_id)
    env = {
        **_without_launcher_variables(),
        "RINGFLOW_SIZE": "2",
        "RINGFLOW_STORE_ADDR": "127.0.0.1",
        "RINGFLOW_STORE_PORT": str(store.port),
        "RINGFLOW_STORE_EXTERNAL": "1",
        "RINGFLOW_SECRET": secret,
        "RINGFLOW_JOB_ID": job_id,
        "RINGFLOW_TIMEOUT": str(RANK_TIMEOUT_S),
        "RINGFLOW_TRANSPORT": "tcp",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _FOLLOWER, str(rf._state.generation)],
        env={**env, "RINGFLOW_RANK": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    follower = Follower(proc)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in os.environ.keys() - env.keys():
                mp.delenv(key)
            for key, value in {**env, "RINGFLOW_RANK": "0"}.items():
                mp.setenv(key, value)
            rf.init()
        follower._answer("ready")
        yield follower
        rf.shutdown()
        assert proc.stdin is not None
        proc.stdin.close()  # rank 1 leaves its loop at EOF
        proc.wait(RANK_TIMEOUT_S)
    finally:
        rf.shutdown()
        if proc.poll() is None:
            proc.kill()  # only the process this fixture started
        with proc:  # closes the pipes and reaps it
            pass
        store.close()
