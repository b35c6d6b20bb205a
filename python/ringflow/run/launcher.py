"""Start N local ranks, host their store, stream their output, and stop the job on a failure.

What ``launch()`` does, in order:

1. Makes the job secret (``secrets.token_hex(32)``) and a job id, and starts the rendezvous store
   in this process (`start_store`, the only place that touches ``_core``).
2. Starts each rank with ``RINGFLOW_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE, _STORE_ADDR,
   _STORE_PORT, _STORE_EXTERNAL=1, _SECRET, _JOB_ID`` added to this process's environment (and
   ``PYTHONUNBUFFERED=1`` unless it is already set, so Python ranks stream their output). Each
   rank runs in a session of its own, so a Ctrl-C in the terminal reaches the launcher only and
   is forwarded exactly once. Rank 0 inherits the launcher's stdin; the others read /dev/null
   (as with ``mpirun``).
3. Streams each rank's output line by line as it arrives, prefixed with ``[rank] ``: a rank's
   stdout goes to the launcher's stdout, its stderr to the launcher's stderr.
4. Forwards SIGINT and SIGTERM to the ranks.
5. When a rank exits non-zero or is killed by a signal, says which rank failed first and how,
   sends SIGTERM to the ranks still running, SIGKILL after ``grace_period`` seconds, and returns
   that rank's exit code (128 + N for signal N). With ``timeout`` it does the same when the job
   runs longer and returns 124 (as ``timeout(1)`` does). Signals are sent to the process group
   the launcher created for each rank, so a rank's own children stop too; nothing else is touched.

Launcher messages go to stderr and start with ``ringflow run: ``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol

__all__ = ["TIMEOUT_EXIT_CODE", "Store", "exit_code", "launch", "start_store"]

TIMEOUT_EXIT_CODE = 124
# How long a first failure with exit code 1 waits for a more specific one (see
# _settle_first_failure; the multi-host launcher uses it too).
FAILURE_SETTLE_S = 1.0
"""Exit code when the job runs past ``--timeout`` (as coreutils ``timeout``)."""

STORE_HOST = "127.0.0.1"
"""All ranks run on this host, so the store listens on loopback only."""


class Store(Protocol):
    """What the launcher needs from a store server."""

    @property
    def port(self) -> int: ...

    def close(self) -> None: ...


def start_store(secret: bytes, job_id: str) -> Store:
    """Start the rendezvous store on a free loopback port; the ranks connect to it."""
    from ringflow import _core

    return _core.StoreServer(host=STORE_HOST, port=0, secret=secret, job_id=job_id)


def exit_code(returncode: int) -> int:
    """A shell-style exit code: the code itself, or 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """'exited with code 3' or 'was killed by signal 9 (SIGKILL)'."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-returncode}{name}"


def launch(
    command: Sequence[str],
    num_proc: int,
    *,
    timeout: float | None = None,
    grace_period: float = 5.0,
    verbose: bool = False,
    bind_to: str = "none",
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    store_factory: Callable[[bytes, str], Store] = start_store,
) -> int:
    """Run ``command`` as ``num_proc`` ranks on this host; return the job's exit code.

    ``bind_to="core"`` pins rank r to the r-th CPU this launcher may use (round robin), as
    mpirun's ``--bind-to core`` does, so the scheduler cannot put two polling ranks on one core.
    """
    if bind_to not in ("none", "core"):
        raise ValueError(f"bind_to must be 'none' or 'core', got {bind_to!r}")
    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    if not command:
        raise ValueError("no command to run")
    out = _Output(stdout or sys.stdout.buffer, stderr or sys.stderr.buffer)
    secret = secrets.token_hex(32)
    job_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    store = store_factory(secret.encode("utf-8"), job_id)
    try:
        base_env = {
            **os.environ,
            "RINGFLOW_SIZE": str(num_proc),
            "RINGFLOW_LOCAL_SIZE": str(num_proc),
            "RINGFLOW_STORE_ADDR": STORE_HOST,
            "RINGFLOW_STORE_PORT": str(store.port),
            "RINGFLOW_STORE_EXTERNAL": "1",
            "RINGFLOW_SECRET": secret,
            "RINGFLOW_JOB_ID": job_id,
        }
        base_env.setdefault("PYTHONUNBUFFERED", "1")
        if verbose:
            out.note(f"job {job_id}: {num_proc} ranks, store on {STORE_HOST}:{store.port}")
        cpus = sorted(os.sched_getaffinity(0)) if bind_to == "core" else []
        job = _Job(command, num_proc, base_env, out, verbose, cpus)
        return job.run(timeout, grace_period)
    finally:
        store.close()


@dataclass
class _Rank:
    rank: int
    proc: subprocess.Popen[bytes]
    readers: list[threading.Thread]


class _Output:
    """Prefixed, line-atomic writes to the launcher's stdout and stderr."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self._streams = {"stdout": stdout, "stderr": stderr}
        self._lock = threading.RLock()  # RLock: signal handlers write too

    def write(self, stream: str, data: bytes) -> None:
        with self._lock:
            try:
                self._streams[stream].write(data)
                self._streams[stream].flush()
            except (BrokenPipeError, ValueError):
                pass  # our reader went away (e.g. `| head`): keep draining the ranks anyway

    def note(self, message: str) -> None:
        self.write("stderr", f"ringflow run: {message}\n".encode())

    def pump(self, rank: int, stream: str, pipe: BinaryIO) -> None:
        """Copy ``pipe`` line by line to ``stream`` with a ``[rank] `` prefix until EOF."""
        prefix = f"[{rank}] ".encode()
        with pipe:
            for line in iter(pipe.readline, b""):
                self.write(stream, prefix + (line if line.endswith(b"\n") else line + b"\n"))


class _Job:
    """The running ranks: exit events arrive on one queue, in the order the ranks exit."""

    def __init__(
        self,
        command: Sequence[str],
        num_proc: int,
        base_env: Mapping[str, str],
        out: _Output,
        verbose: bool,
        cpus: Sequence[int] = (),
    ) -> None:
        self._command = list(command)
        self._cpus = list(cpus)  # rank r is pinned to cpus[r % len(cpus)]; empty: not pinned
        self._num_proc = num_proc
        self._base_env = base_env
        self._out = out
        self._verbose = verbose
        self._ranks: list[_Rank] = []
        self._running: set[int] = set()
        self._exits: queue.Queue[tuple[int, int]] = queue.Queue()

    def run(self, timeout: float | None, grace_period: float) -> int:
        with self._forwarding_signals():
            try:
                for rank in range(self._num_proc):
                    self._start(rank)
            except OSError as e:
                self._out.note(f"cannot start rank {len(self._ranks)}: {e}")
                self._stop_all(grace_period)
                return 127 if isinstance(e, FileNotFoundError) else 126
            except BaseException:
                self._stop_all(grace_period)
                raise
            code = self._wait(timeout, grace_period)
        self._drain_output(grace_period)
        return code

    def _start(self, rank: int) -> None:
        env = {**self._base_env, "RINGFLOW_RANK": str(rank), "RINGFLOW_LOCAL_RANK": str(rank)}
        proc = subprocess.Popen(
            self._command,
            env=env,
            stdin=None if rank == 0 else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        readers = [
            threading.Thread(
                target=self._out.pump,
                args=(rank, name, pipe),
                name=f"ringflow-run-{name}-{rank}",
                daemon=True,
            )
            for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        waiter = threading.Thread(
            target=lambda: self._exits.put((rank, proc.wait())),
            name=f"ringflow-run-wait-{rank}",
            daemon=True,
        )
        if self._cpus:
            with contextlib.suppress(OSError):  # the rank may already have exited
                os.sched_setaffinity(proc.pid, {self._cpus[rank % len(self._cpus)]})
        self._ranks.append(_Rank(rank, proc, readers))
        self._running.add(rank)
        for thread in (*readers, waiter):
            thread.start()
        if self._verbose:
            self._out.note(f"started rank {rank} (pid {proc.pid}): {shlex.join(self._command)}")

    def _wait(self, timeout: float | None, grace_period: float) -> int:
        """Wait until all ranks succeed, one fails, or ``timeout`` passes; return the code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._out.note(
                    f"the job ran past its timeout of {timeout:g} s; "
                    f"terminating {len(self._running)} running rank(s)"
                )
                self._stop_all(grace_period)
                return TIMEOUT_EXIT_CODE
            try:
                rank, returncode = self._exits.get(timeout=remaining)
            except queue.Empty:
                continue
            self._running.discard(rank)
            if self._verbose and returncode == 0:
                self._out.note(f"rank {rank} {describe_exit(returncode)}")
            if returncode != 0:
                rank, returncode = self._settle_first_failure(rank, returncode)
                others = len(self._running)
                self._out.note(
                    f"rank {rank} failed first ({describe_exit(returncode)}); "
                    f"terminating the other {others} running rank(s)"
                )
                self._stop_all(grace_period)
                return exit_code(returncode)
        return 0

    def _settle_first_failure(self, rank: int, returncode: int) -> tuple[int, int]:
        """The failure to report, given the first exit seen. A rank that exits on its own closes
        its connections at shutdown, and its peers raise PeerFailureError and exit with code 1,
        often before the rank itself has finished exiting. So a first exit with code 1 waits up
        to FAILURE_SETTLE_S for a more specific status (as the multi-host launcher does)."""
        deadline = time.monotonic() + FAILURE_SETTLE_S
        while returncode == 1 and self._running:
            try:
                other, other_code = self._exits.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self._running.discard(other)
            if other_code not in (0, 1):
                if self._verbose:
                    self._out.note(f"rank {rank} {describe_exit(returncode)}")
                return other, other_code
            if self._verbose:
                self._out.note(f"rank {other} {describe_exit(other_code)}")
        return rank, returncode

    def _stop_all(self, grace_period: float) -> None:
        """SIGTERM the running ranks, SIGKILL those still there after ``grace_period``; reap."""
        self._signal_running(signal.SIGTERM)
        deadline = time.monotonic() + grace_period
        self._collect_exits(deadline)
        if self._running:
            if self._verbose:
                self._out.note(f"sending SIGKILL to rank(s) {sorted(self._running)}")
            self._signal_running(signal.SIGKILL)
            self._collect_exits(time.monotonic() + 30.0)
        for rank in sorted(self._running):
            self._out.note(f"rank {rank} did not exit after SIGKILL; giving up on it")

    def _collect_exits(self, deadline: float) -> None:
        while self._running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                rank, returncode = self._exits.get(timeout=remaining)
            except queue.Empty:
                return
            self._running.discard(rank)
            if self._verbose:
                self._out.note(f"rank {rank} {describe_exit(returncode)}")

    def _signal_running(self, sig: int) -> None:
        for entry in self._ranks:
            if entry.rank in self._running and entry.proc.returncode is None:
                # The rank leads its own process group (start_new_session), created by us.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry.proc.pid, sig)

    def _drain_output(self, grace_period: float) -> None:
        """Wait for the ranks' output to end (a rank's orphaned child may hold a pipe open)."""
        deadline = time.monotonic() + grace_period
        for entry in self._ranks:
            for reader in entry.readers:
                reader.join(max(0.0, deadline - time.monotonic()))

    @contextlib.contextmanager
    def _forwarding_signals(self) -> Iterator[None]:
        """While the job runs, SIGINT and SIGTERM to the launcher go to every running rank."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def forward(signum: int, _frame: object) -> None:
            if self._verbose:
                self._out.note(f"forwarding {signal.Signals(signum).name} to the ranks")
            self._signal_running(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
