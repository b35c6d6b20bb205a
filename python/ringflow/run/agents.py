"""The running agents of a multi-host job: their events, the first failure, the teardown.

`AgentJob` starts one agent process per host (ssh, or the agent itself), sends it its spec,
and takes every decision on the main thread from one queue fed by the agents' output readers
and by signal handlers. See `multihost` for the whole sequence.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..agent.spec import Spec
from .launcher import FAILURE_SETTLE_S, TIMEOUT_EXIT_CODE, _Output, describe_exit, exit_code
from .ranks import HostRanks

__all__ = ["AgentJob"]

# After a rank fails, the others may go on for FAILURE_SETTLE_S before SIGTERM. The peers of a
# failed rank fail within milliseconds, often before its own exit (its shutdown tells them
# first); without this pause the stop signal would kill the failed rank before it exits with its
# own code.


@dataclass
class _Agent:
    placed: HostRanks
    argv: list[str]
    proc: subprocess.Popen[bytes]
    left: set[int] = field(default_factory=set)  # ranks not yet exited
    started: set[int] = field(default_factory=set)
    exited: bool = False

    @property
    def name(self) -> str:
        return self.placed.host.name


class AgentJob:
    """The agents and their ranks; every decision is taken on the main thread, from one queue."""

    def __init__(self, out: _Output, verbose: bool, grace_period: float) -> None:
        self.out = out
        self.verbose = verbose
        self.grace = grace_period
        self.agents: list[_Agent] = []
        self.events: queue.SimpleQueue[tuple] = queue.SimpleQueue()  # put() is signal-safe
        self.code: int | None = None  # set by the first failure
        # (exit time, rank, host, returncode) of failed ranks, when a rank's exit stopped the job.
        self.rank_failures: list[tuple[float, int, str, int]] = []
        self.exit_stamps: dict[tuple[int, int], float] = {}
        self.settle_at: float | None = None  # when to stop the job after a rank's failure
        self.stopping_at: float | None = None

    def run(
        self,
        hosts: Sequence[tuple[Spec, HostRanks, list[str]]],
        start_timeout: float,
        timeout: float | None,
    ) -> int:
        """Start an agent per (spec, placement, argv); wait for the job; return its code."""
        with self._signals_to_queue():
            for index, (spec, p, argv) in enumerate(hosts):
                try:
                    self._start_agent(index, spec, p, argv)
                except OSError as e:
                    self.out.note(f"host {p.host.name}: cannot start {shlex.join(argv[:1])}: {e}")
                    self._fail(127 if isinstance(e, FileNotFoundError) else 126, signal.SIGTERM)
                    break
            self._wait(time.monotonic() + start_timeout, timeout)
        if self.rank_failures:
            self._name_first_failure()
        return self.code or 0

    def _name_first_failure(self) -> None:
        """Name the rank that failed first. Not simply the first report: when a rank dies, its
        peers raise PeerFailureError and exit with code 1, often before the dead rank's own exit
        (its shutdown tells them first). So a more specific status (any code but 1, or a signal
        we did not send) wins over 1; among equals, the earliest exit by its host's clock."""
        ours = (-signal.SIGTERM, -signal.SIGKILL)
        first = self.rank_failures[0]
        candidates = [first] + [f for f in self.rank_failures[1:] if f[3] not in ours]
        _, _, rank, host, returncode = min((f[3] == 1, *f) for f in candidates)
        self.out.note(
            f"rank {rank} on host {host} failed first ({describe_exit(returncode)}); "
            f"stopped the job on {len(self.agents)} host(s)"
        )
        self.code = exit_code(returncode)

    def _start_agent(self, index: int, spec: Spec, placed: HostRanks, argv: list[str]) -> None:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        agent = _Agent(placed, argv, proc, left={s.rank for s in placed.ranks})
        self.agents.append(agent)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # an agent that died at once shows up below
            proc.stdin.write(spec.to_json().encode() + b"\n")
            proc.stdin.flush()
        if self.verbose:
            self.out.note(f"host {agent.name}: agent started (pid {proc.pid}): {shlex.join(argv)}")
        for target in (self._read_events, self._copy_stderr):
            threading.Thread(target=target, args=(index, spec.nonce), daemon=True).start()

    def _read_events(self, index: int, nonce: str) -> None:
        """The agent's stdout: events to the queue, rank output through; then its exit."""
        proc = self.agents[index].proc
        tag = nonce.encode() + b" "
        assert proc.stdout is not None
        with proc.stdout:
            for line in iter(proc.stdout.readline, b""):
                if line.startswith(tag):
                    words = line[len(tag) :].split()
                    if len(words) == 3 and words[0] == b"started":
                        self.events.put(("started", index, int(words[1]), int(words[2])))
                        continue
                    if len(words) == 4 and words[0] == b"exit":
                        self.exit_stamps[(index, int(words[1]))] = float(words[3])
                        self.events.put(("exit", index, int(words[1]), int(words[2])))
                        continue
                self.out.write("stdout", line)
        self.events.put(("agent_exit", index, proc.wait(), 0))

    def _copy_stderr(self, index: int, _nonce: str) -> None:
        proc = self.agents[index].proc
        assert proc.stderr is not None
        with proc.stderr:
            for line in iter(proc.stderr.readline, b""):
                self.out.write("stderr", line if line.endswith(b"\n") else line + b"\n")

    def _wait(self, start_deadline: float, timeout: float | None) -> None:
        job_deadline = None if timeout is None else time.monotonic() + timeout
        while not all(agent.exited for agent in self.agents):
            now = time.monotonic()
            deadlines = [self.stopping_at, self.settle_at]
            if self.code is None:  # until the job is stopping, it may time out
                deadlines.append(job_deadline)
                if any(a.left - a.started for a in self.agents):
                    deadlines.append(start_deadline)
            waits = [d - now for d in deadlines if d is not None] or [None]
            try:
                timeout_s = None if waits == [None] else max(0.0, min(waits))
                # ("started"|"exit", agent, rank, pid|returncode), ("agent_exit", agent,
                # returncode, 0) or ("signal", signum, 0, 0).
                kind, index, rank, value = self.events.get(timeout=timeout_s)
            except queue.Empty:
                self._on_deadline(start_deadline, job_deadline, timeout)
                continue
            agent = self.agents[index] if kind != "signal" else None
            if kind == "started":
                agent.started.add(rank)
                if self.verbose:
                    self.out.note(f"rank {rank} started on host {agent.name} (pid {value})")
            elif kind == "exit":
                agent.left.discard(rank)
                if value != 0 and (self.code is None or self.rank_failures):
                    stamp = self.exit_stamps[(index, rank)]
                    self.rank_failures.append((stamp, rank, agent.name, value))
                    if self.code is None and self.settle_at is None:
                        self.settle_at = time.monotonic() + FAILURE_SETTLE_S
                elif self.verbose:
                    self.out.note(f"rank {rank} on host {agent.name} {describe_exit(value)}")
            elif kind == "agent_exit":
                agent.exited = True
                if agent.left and self.code is None:
                    how = "ssh" if agent.argv[0] != sys.executable else "its agent"
                    self.out.note(
                        f"host {agent.name}: {how} {describe_exit(rank)} before rank(s) "
                        f"{sorted(agent.left)} finished; stopping the job"
                    )
                    self._fail(exit_code(rank) or 1, signal.SIGTERM)
            elif kind == "signal":
                if self.code is None:
                    self.out.note(
                        f"got {signal.Signals(index).name}; stopping the job on every host"
                    )
                    self._fail(128 + index, index)
                else:
                    self._kill_agents()  # a second Ctrl-C: no more grace
            if all(not a.left for a in self.agents):
                for a in self.agents:
                    self._close_stdin(a)

    def _on_deadline(
        self, start_deadline: float, job_deadline: float | None, timeout: float | None
    ) -> None:
        now = time.monotonic()
        if self.settle_at is not None and now >= self.settle_at:
            self.settle_at = None
            if self.code is None:
                self._fail(1, signal.SIGTERM)  # the code comes from _name_first_failure
        elif self.stopping_at is not None and now >= self.stopping_at:
            self._kill_agents()
            self.stopping_at = now + 30.0  # reaping a SIGKILLed ssh takes no longer
        elif job_deadline is not None and now >= job_deadline and self.code is None:
            self.out.note(
                f"the job ran past its timeout of {timeout:g} s; stopping it on every host"
            )
            self._fail(TIMEOUT_EXIT_CODE, signal.SIGTERM)
        elif now >= start_deadline and self.code is None:
            late = {a.name: sorted(a.left - a.started) for a in self.agents if a.left - a.started}
            if late:
                listed = "; ".join(f"host {h}: rank(s) {r}" for h, r in late.items())
                self.out.note(
                    f"ranks not started within --start-timeout: {listed}; stopping the job"
                )
                self._fail(1, signal.SIGTERM)

    def _fail(self, code: int, sig: int) -> None:
        """Record the job's exit code and stop every host: ``sig`` now, SIGKILL after grace."""
        self.code = code
        for agent in self.agents:
            if agent.exited or agent.proc.stdin is None or agent.proc.stdin.closed:
                continue
            with contextlib.suppress(OSError, ValueError):
                agent.proc.stdin.write(f"stop {int(sig)}\n".encode())
                agent.proc.stdin.flush()
        self.stopping_at = time.monotonic() + self.grace + 2.0  # agents SIGKILL at grace

    def _close_stdin(self, agent: _Agent) -> None:
        if agent.proc.stdin is not None:
            with contextlib.suppress(OSError):
                agent.proc.stdin.close()

    def _kill_agents(self) -> None:
        """The last resort: SIGKILL ssh / local agents (their ranks die with them)."""
        for agent in self.agents:
            self._close_stdin(agent)
            if not agent.exited:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(agent.proc.pid, signal.SIGKILL)

    @contextlib.contextmanager
    def _signals_to_queue(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {
            sig: signal.signal(sig, lambda s, _f: self.events.put(("signal", s, 0, 0)))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
