"""Multi-process test harness: plays the launcher for N local ranks.

The parent (pytest) hosts the rendezvous store (``_core.StoreServer``) and starts one Python
subprocess per rank with the ``RINGFLOW_*`` environment of the launcher contract. Each rank keeps
a control connection (a socketpair inherited by the child) on which it receives
``(function, args, kwargs)`` requests, runs them and sends back the return value or the exception
(with its traceback text). Functions must be importable module-level functions; their arguments
and return values must pickle.

A `Job` is one such set of ranks. Persistent jobs (`Pools`) call ``rf.init()`` once at start and
then serve any number of requests, so a test case costs only its collective. Every request has
a deadline: when it expires the job's processes are killed (by PID, only processes this harness
started), the test fails naming the ranks that did not answer, and the pool is started afresh
for the next test. A rank that dies or raises `rf.PeerFailureError` / `rf.TimeoutError` also
marks its pool broken. Tests that kill a rank or poison the communicator use their own `Job`.

No sleeps: the parent blocks only in `multiprocessing.connection.wait` with a deadline.
"""

from __future__ import annotations

import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent

DEADLINE_S = 60.0
"""Default time a request may take before the harness kills the job."""

RANK_TIMEOUT_S = 20.0
"""``RINGFLOW_TIMEOUT`` given to ranks: a hang inside the library fails fast."""

ADDRESS_KEY = "rf/{generation}/addr/{rank}"
"""Store key under which a rank publishes its data address ("ip:port") at each init."""


def data_address(
    store: Any, generation: int, rank: int, timeout_s: float = 30.0
) -> tuple[str, int]:
    """(host, port) of a rank's data listener, read from the store (waits for it)."""
    key = ADDRESS_KEY.format(generation=generation, rank=rank)
    value = store.get(key, timeout_s=timeout_s).decode()
    host, _, port = value.rpartition(":")
    assert host and port.isdigit(), f"{key} = {value!r} is not ip:port"
    return host, int(port)


_CONTROL_FD = "RINGFLOW_TEST_CONTROL_FD"
_AUTO_INIT = "RINGFLOW_TEST_AUTO_INIT"
_LOG_TAIL_CHARS = 3000

# Variables that say where a process is in a job (ours and other launchers'): ranks never inherit
# them from pytest. Tuning knobs (RINGFLOW_TRANSPORT, RINGFLOW_FUSION_THRESHOLD, …) do pass
# through, so the suite can be run under each setting.
_FOREIGN_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "SLURM_", "MPI_LOCAL", "RINGFLOW_STORE_")
_FOREIGN_NAMES = {
    "RINGFLOW_RANK",
    "RINGFLOW_SIZE",
    "RINGFLOW_LOCAL_RANK",
    "RINGFLOW_LOCAL_SIZE",
    "RINGFLOW_SECRET",
    "RINGFLOW_JOB_ID",
    "RINGFLOW_TIMEOUT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def clean_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without any job-placement variables, plus ``extra``.

    A value of None in ``extra`` removes the variable. The repository root goes first on
    PYTHONPATH so that rank processes can import ``tests.*``.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _FOREIGN_NAMES and not key.startswith(_FOREIGN_PREFIXES)
    }
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class HarnessTimeout(AssertionError):
    """Some ranks did not answer a request before its deadline (the job has been killed)."""


class RemoteError(Exception):
    """Stands in for a rank's exception that could not be pickled."""

    def __init__(self, type_names: list[str], message: str) -> None:
        super().__init__(f"{type_names[0]}: {message}")
        self.type_names = type_names
        self.message = message


@dataclass
class RankResult:
    """What one rank answered to one request."""

    rank: int
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    exitcode: int | None = None
    """Set when the process ended instead of answering (negative: killed by that signal)."""
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.exitcode is None

    @property
    def died(self) -> bool:
        return self.exitcode is not None

    def describe(self) -> str:
        if self.died:
            return f"rank {self.rank}: process exited with {self.exitcode}\n{self.log_tail}"
        if self.error is not None:
            return f"rank {self.rank}: raised {self.error!r}\n{self.traceback}"
        return f"rank {self.rank}: returned {self.value!r}"[:2000]


def describe_all(results: Iterable[RankResult]) -> str:
    return "\n".join(result.describe() for result in results)


def values(results: list[RankResult]) -> list[Any]:
    """Every rank's return value; fails the test with every rank's story if any rank failed."""
    failed = [result for result in results if not result.ok]
    if failed:
        raise AssertionError("ranks failed:\n" + describe_all(failed))
    return [result.value for result in results]


def assert_raised(result: RankResult, cls: type[BaseException], *fragments: str) -> None:
    """Assert that ``result`` is an exception of ``cls`` whose message contains ``fragments``."""
    assert not result.died, result.describe()
    assert result.error is not None, (
        f"rank {result.rank}: expected {cls.__name__}, got a return value {result.value!r}"
    )
    assert isinstance(result.error, cls), (
        f"rank {result.rank}: expected {cls.__name__}, got:\n{result.describe()}"
    )
    message = str(result.error)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (
            f"rank {result.rank}: {fragment!r} is not in the message of {result.error!r}"
        )


def _poisons(type_names: list[str]) -> bool:
    """Whether a rank's error of these types (qualified names of its MRO) leaves the
    communicator poisoned: a peer failure or a timeout."""
    return any(
        name.startswith("ringflow") and name.endswith(("PeerFailureError", ".TimeoutError"))
        for name in type_names
    )


class Job:
    """N rank processes of one ringflow job, plus the store the harness hosts for them."""

    def __init__(
        self,
        size: int,
        *,
        auto_init: bool = True,
        env: Mapping[str, str | None] | None = None,
        rank_env: Mapping[int, Mapping[str, str | None]] | None = None,
        rank_timeout: float = RANK_TIMEOUT_S,
    ) -> None:
        from ringflow import _core

        self.size = size
        self.auto_init = auto_init
        self.secret = secrets.token_hex(16)
        self.job_id = f"test-{secrets.token_hex(4)}"
        self._env = dict(env or {})
        self._rank_env = {rank: dict(extra) for rank, extra in (rank_env or {}).items()}
        self._rank_timeout = rank_timeout
        self._store = _core.StoreServer(
            host="127.0.0.1", port=0, secret=self.secret.encode(), job_id=self.job_id
        )
        self.store_port: int = self._store.port
        self._logdir = Path(tempfile.mkdtemp(prefix="ringflow-test-"))
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._conns: dict[int, Connection] = {}
        self._pending: set[int] = set()
        self._dead: set[int] = set()
        self.broken = False
        """True once the job cannot serve more requests (a rank died, hung or lost its peers)."""
        self._carry_on = False
        self.closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def rank_env(self, rank: int) -> dict[str, str]:
        extra: dict[str, str | None] = {
            "RINGFLOW_RANK": str(rank),
            "RINGFLOW_SIZE": str(self.size),
            "RINGFLOW_STORE_ADDR": "127.0.0.1",
            "RINGFLOW_STORE_PORT": str(self.store_port),
            "RINGFLOW_STORE_EXTERNAL": "1",
            "RINGFLOW_SECRET": self.secret,
            "RINGFLOW_JOB_ID": self.job_id,
            "RINGFLOW_TIMEOUT": str(self._rank_timeout),
        }
        extra.update(self._env)
        extra.update(self._rank_env.get(rank, {}))
        return clean_env(extra)

    def start(self, ranks: Iterable[int] | None = None) -> Job:
        """Start the given ranks (default: every rank not started yet)."""
        ranks = [r for r in range(self.size) if r not in self._procs] if ranks is None else ranks
        for rank in ranks:
            assert rank not in self._procs, f"rank {rank} already started"
            parent_sock, child_sock = socket.socketpair()
            env = self.rank_env(rank)
            env[_CONTROL_FD] = str(child_sock.fileno())
            env[_AUTO_INIT] = "1" if self.auto_init else "0"
            with open(self._log_path(rank), "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-c", "from tests.harness import worker_main; worker_main()"],
                    env=env,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(child_sock.fileno(),),
                )
            child_sock.close()
            self._procs[rank] = proc
            self._conns[rank] = Connection(parent_sock.detach())
        return self

    @property
    def pending(self) -> bool:
        """Whether some rank has a request whose answer was never collected."""
        return bool(self._pending)

    def pid(self, rank: int) -> int:
        return self._procs[rank].pid

    def alive(self, rank: int) -> bool:
        return self._procs[rank].poll() is None

    def kill(self, rank: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one rank this job started (the job counts as broken from then on)."""
        self.broken = True
        proc = self._procs[rank]
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def carry_on_without_the_dead(self) -> None:
        """Let a broken job serve requests to its live ranks (tests of what survivors can still
        do, e.g. init() again). The job is still killed, not shut down, at close."""
        self._dead |= {rank for rank, proc in self._procs.items() if proc.poll() is not None}
        self._carry_on = True

    def replace(self, rank: int) -> None:
        """Start a new process for a rank whose process has died (a replacement joining the
        job: it does not init() until asked, whatever auto_init says). The job stays broken:
        call `carry_on_without_the_dead` first."""
        proc = self._procs[rank]
        assert self._carry_on, "call carry_on_without_the_dead() before replacing a rank"
        proc.wait(timeout=30)  # it was killed, or exits
        assert rank not in self._pending, f"rank {rank} has a request outstanding"
        self._conns.pop(rank).close()
        del self._procs[rank]
        auto_init, self.auto_init = self.auto_init, False
        try:
            self.start([rank])
        finally:
            self.auto_init = auto_init
        self._dead.discard(rank)

    def close(self, deadline: float = 30.0) -> None:
        """Ask every live rank to shut down and exit; kill whatever is left at the deadline.

        Raises AssertionError if a healthy job's ranks do not exit cleanly.
        """
        if self.closed:
            return
        self.closed = True
        problems = []
        clean = not self.broken and not self._pending  # a rank inside a request may be hung
        if clean:
            for conn in self._conns.values():
                try:
                    conn.send(None)
                except OSError:
                    clean = False
            end = time.monotonic() + deadline
            for rank, proc in self._procs.items():
                try:
                    code = proc.wait(timeout=max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    problems.append(f"rank {rank} did not exit within {deadline}s of close()")
                    continue
                if code != 0:
                    problems.append(f"rank {rank} exited with {code}\n{self.log_tail(rank)}")
        self._kill_all()
        for conn in self._conns.values():
            conn.close()
        self._store.close()
        if problems:
            raise AssertionError("job did not shut down cleanly:\n" + "\n".join(problems))
        shutil.rmtree(self._logdir, ignore_errors=True)

    def abort(self) -> None:
        """Kill every rank (for jobs left in a state no request can end)."""
        self.broken = True
        self.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None:
            self.broken = True
        self.close()

    def _kill_all(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    # -- requests ----------------------------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], *args: Any, ranks: Iterable[int] | None = None, **kwargs: Any
    ) -> None:
        """Send ``fn(*args, **kwargs)`` to the given ranks (default: all) without waiting."""
        ranks = range(self.size) if ranks is None else list(ranks)
        assert not self.broken or (self._carry_on and not self._dead & set(ranks)), "job is broken"
        payload = pickle.dumps((fn, args, kwargs))
        for rank in ranks:
            assert rank not in self._pending, f"rank {rank} has a request outstanding"
            self._conns[rank].send_bytes(payload)
            self._pending.add(rank)

    def collect(
        self, ranks: Iterable[int] | None = None, deadline: float = DEADLINE_S
    ) -> list[RankResult]:
        """Wait for the answers of the given ranks (default: every pending rank), rank order.

        On expiry of the deadline, kills the job and raises `HarnessTimeout`.
        """
        ranks = sorted(self._pending) if ranks is None else sorted(ranks)
        waiting = {self._conns[rank]: rank for rank in ranks}
        results: dict[int, RankResult] = {}
        end = time.monotonic() + deadline
        while waiting:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            for conn in wait_connections(list(waiting), timeout=remaining):
                rank = waiting.pop(conn)  # type: ignore[call-overload]
                self._pending.discard(rank)
                results[rank] = self._receive(rank, conn)
        if waiting:
            silent = sorted(waiting.values())
            self.broken = True
            self._kill_all()
            answered = describe_all(results[rank] for rank in sorted(results))
            tails = "\n".join(f"--- rank {rank} log ---\n{self.log_tail(rank)}" for rank in silent)
            raise HarnessTimeout(
                f"ranks {silent} of {self.size} did not answer within {deadline}s "
                f"(job killed)\nanswered:\n{answered}\n{tails}"
            )
        return [results[rank] for rank in ranks]

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        ranks: Iterable[int] | None = None,
        deadline: float = DEADLINE_S,
        **kwargs: Any,
    ) -> list[RankResult]:
        """Run ``fn(*args, **kwargs)`` on the given ranks (default: all); results in rank order."""
        ranks = list(range(self.size)) if ranks is None else list(ranks)
        self.submit(fn, *args, ranks=ranks, **kwargs)
        return self.collect(ranks, deadline=deadline)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Like `run`, but returns the values and fails the test if any rank failed."""
        return values(self.run(fn, *args, **kwargs))

    def _receive(self, rank: int, conn: Connection) -> RankResult:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self.broken = True
            self._dead.add(rank)
            proc = self._procs[rank]
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # closed its end but still running: a bug
                os.kill(proc.pid, signal.SIGKILL)
                code = proc.wait()
            return RankResult(rank, exitcode=code, log_tail=self.log_tail(rank))
        kind, *rest = message
        if kind == "ok":
            return RankResult(rank, value=rest[0])
        blob, tb_text, type_names, text = rest
        error = pickle.loads(blob) if blob is not None else RemoteError(type_names, text)
        if _poisons(type_names):
            self.broken = True  # start afresh for the next request
        return RankResult(rank, error=error, traceback=tb_text)

    # -- diagnostics and store access -----------------------------------------------------------

    def _log_path(self, rank: int) -> Path:
        return self._logdir / f"rank{rank}.log"

    def log_tail(self, rank: int) -> str:
        try:
            text = self._log_path(rank).read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL_CHARS:]

    def store_client(self, timeout_s: float = 30.0) -> Any:
        """A client of this job's store, as the parent process."""
        from ringflow import _core

        return _core.StoreClient(
            "127.0.0.1",
            self.store_port,
            secret=self.secret.encode(),
            job_id=self.job_id,
            timeout_s=timeout_s,
        )


class Pools:
    """One persistent, initialised job per world size, restarted when broken.

    After `MAX_TIMEOUTS` requests in a row have hit their deadline at one world size, further
    requests at that size fail at once: a core that hangs fails the suite in minutes, not hours.
    """

    MAX_TIMEOUTS = 3

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._timeouts: dict[int, int] = {}

    def get(self, size: int) -> Job:
        if self._timeouts.get(size, 0) >= self.MAX_TIMEOUTS:
            raise AssertionError(
                f"not run: the last {self.MAX_TIMEOUTS} requests to {size} ranks hit their "
                "deadline (see those failures)"
            )
        job = self._jobs.get(size)
        if job is None or job.broken or job.pending:
            if job is not None:
                job.broken = True  # a rank may still be inside an abandoned request: kill
                job.close()
            job = Job(size).start()
            self._jobs[size] = job
        return job

    def run(self, size: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[RankResult]:
        job = self.get(size)
        try:
            results = job.run(fn, *args, **kwargs)
        except HarnessTimeout:
            self._timeouts[size] = self._timeouts.get(size, 0) + 1
            raise
        self._timeouts[size] = 0
        return results

    def call(self, size: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        return values(self.run(size, fn, *args, **kwargs))

    def close(self) -> None:
        errors = []
        for job in self._jobs.values():
            try:
                job.close()
            except AssertionError as exc:
                errors.append(str(exc))
        self._jobs.clear()
        if errors:
            raise AssertionError("\n".join(errors))


# -- inside a rank process -----------------------------------------------------------------------

_rank_store: Any = None


def rank_store() -> Any:
    """This rank's own client of the job's store (for tests that coordinate through it)."""
    global _rank_store
    if _rank_store is None:
        from ringflow import _core

        _rank_store = _core.StoreClient(
            os.environ["RINGFLOW_STORE_ADDR"],
            int(os.environ["RINGFLOW_STORE_PORT"]),
            secret=os.environ["RINGFLOW_SECRET"].encode(),
            job_id=os.environ["RINGFLOW_JOB_ID"],
            timeout_s=float(os.environ["RINGFLOW_TIMEOUT"]),
        )
    return _rank_store


def _pack_exception(exc: BaseException) -> tuple[Any, ...]:
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_names = [f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__]
    try:
        blob: bytes | None = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = None
    return ("err", blob, tb_text, type_names, str(exc))


def worker_main() -> None:
    """Entry point of a rank process: serve requests from the control connection until told to
    stop (None) or the parent goes away."""
    conn = Connection(int(os.environ.pop(_CONTROL_FD)))
    auto_init = os.environ.pop(_AUTO_INIT) == "1"
    init_error: BaseException | None = None
    if auto_init:
        try:
            import ringflow

            ringflow.init()
        except BaseException as exc:
            init_error = exc
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            break
        try:
            request = pickle.loads(payload)
            if request is None:
                break
            if init_error is not None:
                raise init_error
            fn, args, kwargs = request
            reply = ("ok", fn(*args, **kwargs))
        except BaseException as exc:
            reply = _pack_exception(exc)
        try:
            conn.send(reply)
        except Exception as exc:  # the value did not pickle
            conn.send(_pack_exception(exc))
    if auto_init and init_error is None:
        import ringflow

        if ringflow.is_initialized():
            ringflow.shutdown()
    conn.close()
