"""The parent's side: start one system's ranks, follow their progress, collect their rows.

ringflow, gloo and nccl ranks are started by ``python -m ringflow.run`` (it tears the job down when a
rank fails); MPI ranks by ``mpirun`` over TCP only. Rank 0 appends one JSON line per size to a
result file in a temporary directory and prints a progress marker on its stdout; the parent
reads the job's output (stdout and stderr merged), advances the progress bar on each marker and
keeps the last lines to explain a failure in one line. A watchdog sends SIGTERM to the job's
process group after the timeout (SIGKILL 10 s later): no run can hang the command.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ringflow.bench.spec import SweepSpec
from ringflow.bench.sweep import PROGRESS_MARKER
from ringflow.run.launcher import TIMEOUT_EXIT_CODE

__all__ = ["SystemRun", "command_for", "run_system"]

# Who-am-I variables of an enclosing job: ranks get their own. Tunables (RINGFLOW_ALGORITHM,
# RINGFLOW_TIMEOUT, OMPI_MCA_*, ...) pass through to every system's ranks.
_IDENTITY_PREFIXES = ("OMPI_COMM_WORLD_", "PMI_", "PMIX_", "SLURM_")
_IDENTITY_NAMES = {
    *(f"RINGFLOW_{name}" for name in ("RANK", "SIZE", "LOCAL_RANK", "LOCAL_SIZE", "JOB_ID")),
    *(f"RINGFLOW_{name}" for name in ("STORE_ADDR", "STORE_PORT", "STORE_EXTERNAL", "SECRET")),
    *("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
}
_ERROR_RE = re.compile(r"\b\w*(Error|Exception|Interrupt)\b|\bSIG[A-Z]+\b|abort|killed", re.I)
_KILL_AFTER_S = 10.0


@dataclass
class SystemRun:
    """What one system's sweep produced: rows, and why it stopped short if it did."""

    system: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without an enclosing job's identity, plus extra."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _IDENTITY_NAMES and not key.startswith(_IDENTITY_PREFIXES)
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def command_for(
    system: str, spec: SweepSpec, nranks: int, result: Path, transport: str, timeout: float
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start system's ranks."""
    worker = ["--spec", spec.to_json(), "--result", str(result)]
    py = sys.executable
    # Every system's ranks are pinned to cores, as mpirun does by default for small jobs: the
    # scheduler must not put two busy-polling ranks on one core in one system's run only.
    ringflow_run = [py, "-m", "ringflow.run", "-np", str(nranks), "--timeout", f"{timeout:g}"]
    ringflow_run += ["--bind-to", "core"]
    if system == "ringflow":
        command = [*ringflow_run, "--", py, "-m", "ringflow.bench.sweep", *worker]
        return command, _environment({"RINGFLOW_TRANSPORT": transport})
    if system in ("gloo", "nccl"):
        command = [*ringflow_run, "--", py, "-m", "ringflow.bench.peers", system, *worker]
        extra = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "GLOO_SOCKET_IFNAME": "lo",
        }
        if system == "nccl":  # several ranks on one GPU (NCCL >= 2.30); the user's value wins
            extra["NCCL_MULTI_RANK_GPU_ENABLE"] = os.environ.get("NCCL_MULTI_RANK_GPU_ENABLE", "1")
        return command, _environment(extra)
    mpirun = ["mpirun", "-np", str(nranks), "--oversubscribe"]
    mpirun += ["--bind-to", "core:overload-allowed"]
    if os.geteuid() == 0:
        mpirun.append("--allow-run-as-root")
    if transport == "tcp":
        # TCP only, as ringflow: the ob1 PML over the tcp BTL on loopback (no vader shared memory).
        mpirun += ["--mca", "pml", "ob1", "--mca", "btl", "tcp,self"]
        mpirun += ["--mca", "btl_tcp_if_include", "lo"]
    # Otherwise Open MPI's defaults: shared memory (vader) between the ranks of one host.
    command = [*mpirun, py, "-m", "ringflow.bench.peers", "mpi", *worker]
    return command, _environment({})


def _one_line_reason(code: int, tail: collections.deque[str], timed_out: bool) -> str:
    if timed_out or code == TIMEOUT_EXIT_CODE:
        return "ran past --timeout and was stopped"
    lines = [re.sub(r"^\[\d+\]\s*", "", line).strip() for line in tail]
    lines = [line for line in lines if line and not line.startswith("ringflow run:")]
    errors = [line for line in lines if _ERROR_RE.search(line)]
    detail = (errors or lines or ["no output"])[-1]
    return f"exit code {code}: {detail[:200]}"


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the job's own group (start_new_session): nothing else


def run_system(
    system: str,
    spec: SweepSpec,
    nranks: int,
    *,
    transport: str,
    timeout: float,
    on_row: Callable[[], None],
) -> SystemRun:
    """Run system's sweep on nranks local ranks; on_row() is called as each size finishes."""
    with tempfile.TemporaryDirectory(prefix="ringflow-bench-") as tmp:
        result = Path(tmp) / f"{system}.jsonl"
        command, env = command_for(system, spec, nranks, result, transport, timeout)
        tail: collections.deque[str] = collections.deque(maxlen=40)
        try:
            proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as e:
            return SystemRun(system, status="failed", reason=f"cannot start {command[0]}: {e}")
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            _stop(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_KILL_AFTER_S)
            _stop(proc, signal.SIGKILL)

        watchdog = threading.Timer(timeout + _KILL_AFTER_S, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if PROGRESS_MARKER in line:
                    on_row()
                else:
                    tail.append(line.rstrip("\n"))
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:  # interrupted (Ctrl-C): stop the job, do not orphan it
                _stop(proc, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(_KILL_AFTER_S)
                _stop(proc, signal.SIGKILL)
        rows = _read_rows(result)
    run = SystemRun(system, rows)
    if code != 0 or timed_out.is_set():
        run.status, run.reason = "failed", _one_line_reason(code, tail, timed_out.is_set())
    return run


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                rows.append(json.loads(line))
    return rows
