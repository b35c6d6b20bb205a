"""``ringflow run -H h1:2,h2:2``: one node agent per host, over ssh for remote hosts.

What ``launch_hosts()`` does, in order:

1. Places the ranks on the hosts (`ranks.assign`) and finds the launcher's address on the network
   that reaches them: the interface named by ``--network-interface``, else the local address the
   kernel routes to each remote host (loopback when every host is local). The rendezvous store
   listens there (on all interfaces when different hosts are reached through different ones).
2. Starts one agent per host: ``ssh -o BatchMode=yes [-p PORT] [-i KEY] HOST python -m
   ringflow.agent`` (``RINGFLOW_SSH_COMMAND`` replaces ``ssh``), or the agent itself for
   ``localhost``, and writes each agent its job spec on stdin (`ringflow.agent`).
3. Copies the agents' output (already ``[rank] ``-prefixed) through, and reads their nonce-tagged
   started / exit events.
4. Stops the job on every host at the first failure: a rank exiting non-zero (after
   `FAILURE_SETTLE_S`, so the failed rank can exit with its own code; the launcher then names
   the rank that failed first and its host, and exits with that rank's code), an agent or ssh
   exiting before its ranks did, ranks not started within ``start_timeout``, ``timeout``, or
   SIGINT / SIGTERM (sent on to every rank; the job exits 128 + N). Stopping is ``stop SIG`` to
   each agent (SIG now, SIGKILL after the grace period), then closing its stdin, then SIGKILL to
   the ssh or agent process itself.

The ranks' data sockets follow the store: each rank advertises the address of its own store
connection, so traffic takes the network the launcher reached the hosts on (or
``--network-interface``, which travels to the ranks as RINGFLOW_NETWORK_INTERFACE).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import secrets
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ..agent.spec import Spec
from .hosts import Host, is_local
from .launcher import TIMEOUT_EXIT_CODE, Store, _Output, describe_exit, exit_code
from .ranks import HostRanks, assign

__all__ = ["agent_command", "forwarded_environment", "interface_ip", "launch_hosts"]

# Set per rank by the agent; never copied from the launcher's environment.
_JOB_VARIABLES = frozenset(
    "RINGFLOW_" + name
    for name in [
        "RANK",
        "SIZE",
        "LOCAL_RANK",
        "LOCAL_SIZE",
        "CROSS_RANK",
        "CROSS_SIZE",
        "HOST_ID",
        "STORE_ADDR",
        "STORE_PORT",
        "STORE_EXTERNAL",
        "SECRET",
        "JOB_ID",
        "SSH_COMMAND",
    ]
)
_SIOCGIFADDR = 0x8915

FAILURE_SETTLE_S = 1.0
"""After a rank fails, how long the others may go on before SIGTERM. The peers of a failed rank
fail within milliseconds, often before its own exit (its shutdown tells them first); without this
pause the stop signal would kill the failed rank before it exits with its own code."""


def forwarded_environment(
    exports: Sequence[str] = (),
    network_interface: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """What every rank gets on top of its host's environment: ``RINGFLOW_*`` tunables set here
    and each ``-x VAR`` (this process's value) or ``-x VAR=VALUE``."""
    env = {
        k: v for k, v in environ.items() if k.startswith("RINGFLOW_") and k not in _JOB_VARIABLES
    }
    for item in exports:
        name, sep, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ValueError(f"-x {item}: {name!r} is not a variable name")
        if not sep and name not in environ:
            raise ValueError(f"-x {name}: {name} is not set in this environment")
        env[name] = value if sep else environ[name]
    if network_interface:
        env["RINGFLOW_NETWORK_INTERFACE"] = network_interface
    return env


def interface_ip(name: str) -> str:
    """The IPv4 address of network interface ``name``; ValueError if it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(
                probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
            )
        except OSError as e:
            known = ", ".join(n for _, n in socket.if_nameindex())
            raise ValueError(
                f"--network-interface {name}: no IPv4 address ({e.strerror}); interfaces: {known}"
            ) from None
    return socket.inet_ntoa(packed[20:24])


def _route_ip(host: str, port: int) -> str:
    """The local address the kernel would use to reach ``host`` (a UDP connect sends nothing)."""
    name = host.rsplit("@", 1)[-1]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((name, port))
            return probe.getsockname()[0]
    except OSError as e:
        raise ValueError(f"host {host}: cannot find a route to it: {e}") from None


def agent_command(host: str, ssh_port: int | None = None, identity: str | None = None) -> list[str]:
    """The argv that starts the agent for ``host``: itself for local hosts, else over ssh."""
    agent = [sys.executable, "-m", "ringflow.agent"]
    if is_local(host):
        return agent
    ssh = shlex.split(os.environ.get("RINGFLOW_SSH_COMMAND", "ssh"))
    ssh += ["-o", "BatchMode=yes"]
    if ssh_port is not None:
        ssh += ["-p", str(ssh_port)]
    if identity:
        ssh += ["-i", identity]
    # The same interpreter path as here, as mpirun and Horovod assume one install per cluster.
    return [*ssh, host, shlex.join(agent)]


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


def _store_addresses(
    placed: Sequence[HostRanks], interface: str | None, port: int
) -> tuple[str, list[str]]:
    """Where the store listens, and the address each host's ranks connect to."""
    if interface:
        ip = interface_ip(interface)
        return ip, [ip] * len(placed)
    routes = {
        p.host.name: _route_ip(p.host.name, port) for p in placed if not is_local(p.host.name)
    }
    if not routes:
        return "127.0.0.1", ["127.0.0.1"] * len(placed)
    reach = next(iter(routes.values()))
    listen = reach if len(set(routes.values())) == 1 else "0.0.0.0"
    return listen, [routes.get(p.host.name, reach) for p in placed]


def _start_store(host: str, secret: bytes, job_id: str) -> Store:
    from ringflow import _core

    return _core.StoreServer(host=host, port=0, secret=secret, job_id=job_id)


def launch_hosts(
    command: Sequence[str],
    num_proc: int,
    hosts: Sequence[Host],
    *,
    ssh_port: int | None = None,
    ssh_identity: str | None = None,
    network_interface: str | None = None,
    exports: Sequence[str] = (),
    start_timeout: float = 30.0,
    timeout: float | None = None,
    grace_period: float = 5.0,
    verbose: bool = False,
    bind_to: str = "none",
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run ``command`` as ``num_proc`` ranks spread over ``hosts``; return the job's exit code.

    Raises ValueError (before anything starts) for too few slots, a bad ``-x`` or an unknown
    interface or host.
    """
    if not command:
        raise ValueError("no command to run")
    placed = assign(hosts, num_proc)
    env = forwarded_environment(exports, network_interface)
    listen, store_addrs = _store_addresses(placed, network_interface, ssh_port or 22)
    out = _Output(stdout or sys.stdout.buffer, stderr or sys.stderr.buffer)
    secret = secrets.token_hex(32)
    job_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    store = _start_store(listen, secret.encode(), job_id)
    try:
        if verbose:
            out.note(
                f"job {job_id}: {num_proc} ranks on {len(placed)} host(s), store on {listen}:{store.port}"
            )
        specs = [
            Spec(
                nonce=secrets.token_hex(8),
                command=list(command),
                host=p.host.name,
                size=num_proc,
                store_addr=addr,
                store_port=store.port,
                secret=secret,
                job_id=job_id,
                ranks=list(p.ranks),
                env=env,
                cwd=os.getcwd(),
                grace_period=grace_period,
                bind_to=bind_to,
            )
            for p, addr in zip(placed, store_addrs)
        ]
        job = _Job(out, verbose, grace_period)
        return job.run(specs, placed, ssh_port, ssh_identity, start_timeout, timeout)
    finally:
        store.close()


class _Job:
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

    def run(self, specs, placed, ssh_port, identity, start_timeout, timeout) -> int:
        with self._signals_to_queue():
            for index, (spec, p) in enumerate(zip(specs, placed)):
                argv = agent_command(p.host.name, ssh_port, identity)
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
        self.stopping_at = time.monotonic() + self.grace + 5.0

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
    def _signals_to_queue(self):
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
