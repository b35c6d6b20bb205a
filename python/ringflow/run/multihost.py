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
   `launcher.FAILURE_SETTLE_S`, so the failed rank can exit with its own code; the launcher then names
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

import fcntl
import os
import secrets
import shlex
import socket
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from ..agent.spec import Spec
from .agents import AgentJob
from .hosts import Host, is_local
from .launcher import Store, _Output
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
        argvs = [agent_command(p.host.name, ssh_port, ssh_identity) for p in placed]
        job = AgentJob(out, verbose, grace_period)
        return job.run(list(zip(specs, placed, argvs)), start_timeout, timeout)
    finally:
        store.close()
