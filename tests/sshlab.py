"""Hosts with a real sshd each, for tests of ``ringflow run -H``: a `netlab.Lab` plus sshd.

`SshLab(k)` makes k + 1 lab hosts: host 0 runs the launcher, hosts 1..k each run
``/usr/sbin/sshd`` on their lab address (port 2222), with throwaway host and user keys in a
temporary directory. Every sshd is started and stopped by its PID; the directory and the
namespaces go on exit. `client_env()` is the launcher's environment: ``RINGFLOW_SSH_COMMAND``
pins ssh to this lab's known_hosts and key, so the user's own ssh configuration plays no part.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from .netlab import Lab, unavailable_reason

SSHD = "/usr/sbin/sshd"
PORT = 2222


class PipeLines:
    """Lines from a child's pipe as they come, each wait bounded by a deadline. Reads the raw
    fd: select() on a buffered file object misses lines already sitting in its buffer."""

    def __init__(self, pipe: IO[bytes] | IO[str]) -> None:
        self.fd = pipe.fileno()
        self.pending = b""
        self.lines: list[str] = []
        self.ended = False

    def until(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """Read until a line matches (returned) or the pipe ends or ``timeout`` passes (None)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                self.lines.append(line.decode(errors="replace"))
                if predicate(self.lines[-1]):
                    return self.lines[-1]
            left = deadline - time.monotonic()
            if self.ended or left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            self.ended = not chunk
            self.pending += chunk if chunk else (b"\n" if self.pending else b"")

    def rest(self, timeout: float) -> list[str]:
        """Every line until the pipe ends (or ``timeout`` passes)."""
        self.until(lambda _line: False, timeout)
        return self.lines


def ssh_unavailable_reason() -> str | None:
    reason = unavailable_reason()
    if reason:
        return reason
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None:
        return "openssh-server / openssh-client are not installed"
    return None


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )
    return path.with_suffix(".pub").read_text().strip()


class SshLab:
    """k ssh hosts (1..k) and a launcher host (0); use as a context manager."""

    def __init__(self, hosts: int) -> None:
        self.lab = Lab(hosts + 1)
        self.hosts = hosts
        self.dir = Path()
        self.sshd: dict[int, subprocess.Popen] = {}

    def __enter__(self) -> SshLab:
        reason = ssh_unavailable_reason()
        if reason:
            pytest.skip(reason)
        self.lab.__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rf-sshlab-"))
        host_key = _keygen(self.dir / "host_key")
        user_key = _keygen(self.dir / "user_key")
        (self.dir / "authorized_keys").write_text(user_key + "\n")
        (self.dir / "known_hosts").write_text(
            "".join(f"[{self.addr(i)}]:{PORT} {host_key}\n" for i in self.ssh_hosts())
        )
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {PORT}\nHostKey {self.dir / 'host_key'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for i in self.ssh_hosts():
            log = self.dir / f"sshd{i}.log"
            self.sshd[i] = self.lab.popen(
                i,
                [SSHD, "-D", "-f", str(config), "-E", str(log), "-o", f"ListenAddress={self.addr(i)}",
                 "-o", f"PidFile={self.dir / f'sshd{i}.pid'}"],
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        for i in self.ssh_hosts():  # listening before any test connects
            log = self.dir / f"sshd{i}.log"
            deadline = time.monotonic() + 15
            while "Server listening" not in (log.read_text() if log.exists() else ""):
                if self.sshd[i].poll() is not None or time.monotonic() > deadline:
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"sshd on lab host {i} did not start: {text}")
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        for proc in self.sshd.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # by PID: ip netns exec execs sshd itself
        for proc in self.sshd.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.dir != Path():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.lab.__exit__()

    def ssh_hosts(self) -> range:
        return range(1, self.hosts + 1)

    @staticmethod
    def addr(host: int) -> str:
        return Lab.addr(host)

    @property
    def identity(self) -> str:
        return str(self.dir / "user_key")

    def client_env(self, **extra: str) -> dict[str, str]:
        ssh = (
            f"ssh -F /dev/null -o UserKnownHostsFile={self.dir / 'known_hosts'} "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o ConnectTimeout=5"
        )
        return {**os.environ, "RINGFLOW_SSH_COMMAND": ssh, **extra}

    def netns_inode(self, host: int) -> int:
        return os.stat(f"/run/netns/{self.lab.namespace(host)}").st_ino

    def processes(self, host: int) -> list[tuple[int, str]]:
        """(pid, command line) of every process in host's namespace but its sshd daemon."""
        inode = f"net:[{self.netns_inode(host)}]"
        daemon = self.sshd[host].pid if host in self.sshd else None
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == daemon:
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/net") != inode:
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue  # it exited meanwhile
            found.append((int(entry), cmdline.decode(errors="replace").strip()))
        return found

    def wait_empty(self, timeout: float = 10.0) -> dict[int, list[tuple[int, str]]]:
        """Poll until no host has a process left (sshd's own session processes take a moment
        to go); return what is left per host when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            left = {h: p for h in range(self.hosts + 1) if (p := self.processes(h))}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)
