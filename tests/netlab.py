"""Network-namespace "hosts" for multi-host tests, over tools/netlab.

`Lab(k)` makes k namespaces joined by one bridge, addresses 198.18.0.1 … 198.18.0.k, under a
prefix unique to this process so that labs of concurrent test runs never meet, and removes them
on exit, pass or fail. Tests skip with a reason where namespaces cannot be made (not root, no
iproute2).
"""

from __future__ import annotations

import itertools
import os
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest

NETLAB = Path(__file__).resolve().parent.parent / "tools" / "netlab"
_LAB_NUMBERS = itertools.count()


def unavailable_reason() -> str | None:
    """Why a lab cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


class Lab:
    """k hosts as network namespaces; use as a context manager."""

    def __init__(self, hosts: int, rate: str | None = None) -> None:
        self.hosts = hosts
        self.rate = rate
        # One prefix per lab (process id + a letter per lab of this process): labs that live at
        # once in one test run (session fixtures) never meet, and `netlab up` first removes any
        # lab of its prefix. <= 6 characters: interface names ("<prefix>v12") stay under 16.
        letter = string.ascii_lowercase[next(_LAB_NUMBERS) % 26]
        self.prefix = f"r{os.getpid() % 10000:04d}{letter}"

    def _netlab(self, *args: str) -> str:
        env = dict(os.environ, NETLAB_PREFIX=self.prefix)
        done = subprocess.run(
            [str(NETLAB), *args], env=env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"netlab {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def __enter__(self) -> Lab:
        reason = unavailable_reason()
        if reason:
            pytest.skip(reason)
        args = ["up", str(self.hosts)] + ([self.rate] if self.rate else [])
        try:
            self._netlab(*args)
        except BaseException:
            self._netlab("down")
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._netlab("down")

    def namespace(self, host: int) -> str:
        return f"{self.prefix}h{host}"

    @staticmethod
    def addr(host: int) -> str:
        return f"198.18.0.{host + 1}"

    def command(self, host: int, argv: list[str]) -> list[str]:
        """argv run inside host `host`'s network namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def popen(self, host: int, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(self.command(host, argv), **kwargs)

    def run(self, host: int, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.command(host, argv), **kwargs)
