"""The agent's work: parse the spec, fork the host's ranks, relay output and events, stop them.

See the package docstring for the protocol. Threads only read pipes and wait for children; the
main thread owns every decision, fed by one queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO

from ..run.launcher import _Output, exit_code
from ..run.ranks import RankSlot
from .spec import Spec, rank_environment

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked rank: SIGKILL when the agent dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Agent:
    def __init__(self, spec: Spec, out: _Output) -> None:
        self.spec = spec
        self.out = out
        self.events: queue.SimpleQueue[tuple] = queue.SimpleQueue()  # put() is signal-safe
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.running: set[int] = set()
        self.readers: list[threading.Thread] = []
        self.first_failure: int | None = None
        self.kill_at: float | None = None

    def event(self, text: str) -> None:
        self.out.write("stdout", f"{self.spec.nonce} {text}\n".encode())

    def note(self, text: str) -> None:
        self.out.write("stderr", f"ringflow agent on {self.spec.host}: {text}\n".encode())

    def run(self, stdin: BinaryIO) -> int:
        spec = self.spec
        if spec.cwd and os.path.isdir(spec.cwd):
            os.chdir(spec.cwd)
        # Fork every rank before any thread starts: preexec_fn is only safe without threads.
        try:
            for slot in spec.ranks:
                self.start(slot)
        except OSError as e:
            failed = spec.ranks[len(self.procs)].rank
            self.note(f"cannot start rank {failed}: {e}")
            code = 127 if isinstance(e, FileNotFoundError) else 126
            self.event(f"exit {failed} {code} {time.time():.6f}")
            self.first_failure = 127 if isinstance(e, FileNotFoundError) else 126
            self.stop(signal.SIGTERM)
        for rank, proc in self.procs.items():
            self.event(f"started {rank} {proc.pid}")
            for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                self.thread(self.out.pump, rank, name, pipe, keep=True)
            self.thread(self.wait_rank, rank, proc)
        self.thread(self.read_control, stdin)
        return self.loop()

    def wait_rank(self, rank: int, proc: subprocess.Popen[bytes]) -> None:
        returncode = proc.wait()
        # Stamped when it happened: the launcher names the rank that failed first by these
        # stamps, as the others' failures often follow from it and can reach it sooner.
        self.events.put(("exit", rank, returncode, time.time()))

    def thread(self, target, *args, keep: bool = False) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        if keep:
            self.readers.append(thread)

    def start(self, slot: RankSlot) -> None:
        proc = subprocess.Popen(
            self.spec.command,
            env=rank_environment(self.spec, slot, os.environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, which stop() signals
            preexec_fn=_die_with_parent,
        )
        self.procs[slot.rank] = proc
        self.running.add(slot.rank)
        if self.spec.bind_to == "core":
            cpus = sorted(os.sched_getaffinity(0))
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {cpus[slot.local_rank % len(cpus)]})

    def read_control(self, stdin: BinaryIO) -> None:
        for line in iter(stdin.readline, b""):
            self.events.put(("line", line))
        self.events.put(("eof",))

    def loop(self) -> int:
        while self.running:
            timeout = None if self.kill_at is None else max(0.0, self.kill_at - time.monotonic())
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                self.note(f"sending SIGKILL to rank(s) {sorted(self.running)}")
                self.signal(signal.SIGKILL)
                self.kill_at = time.monotonic() + 30.0
                continue
            if event[0] == "exit":
                _, rank, returncode, stamp = event
                self.running.discard(rank)
                self.event(f"exit {rank} {returncode} {stamp:.6f}")
                if returncode != 0 and self.first_failure is None:
                    self.first_failure = exit_code(returncode)
            elif event[0] == "line":
                words = event[1].split()
                if len(words) == 2 and words[0] == b"stop" and words[1].isdigit():
                    self.stop(int(words[1]))
                else:
                    self.note(f"ignoring control line {event[1]!r}")
            elif event[0] in ("eof", "signal"):
                self.stop(signal.SIGTERM)
        deadline = time.monotonic() + self.spec.grace_period
        for reader in self.readers:  # a rank's orphaned child may hold a pipe open
            reader.join(max(0.0, deadline - time.monotonic()))
        return self.first_failure or 0

    def stop(self, sig: int) -> None:
        """``sig`` to every running rank now; SIGKILL after the grace period."""
        self.signal(sig)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + self.spec.grace_period

    def signal(self, sig: int) -> None:
        for rank in self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.procs[rank].pid, sig)


def main() -> int:
    """Read the spec from stdin, run the ranks, return the agent's exit code."""
    # Unbuffered: the control thread may still be reading when the interpreter exits, and a
    # daemon thread inside a BufferedReader makes that exit abort.
    stdin = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 (read until exit)
    line = stdin.readline()
    if not line.strip():
        sys.stderr.write("ringflow agent: no job spec on stdin (ringflow run -H starts agents)\n")
        return 2
    try:
        spec = Spec.from_json(line)
    except ValueError as e:
        sys.stderr.write(f"ringflow agent: {e}\n")
        return 2
    agent = _Agent(spec, _Output(sys.stdout.buffer, sys.stderr.buffer))
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.events.put(("signal",)))
    return agent.run(stdin)
