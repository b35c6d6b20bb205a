"""Which hosts a job runs on: ``-H h1:2,h2:2`` and hostfiles of ``host slots=N`` lines.

A host is named as ssh reaches it (a name, ``user@name`` or an address). That name is also the
host's identity in the job: ranks with the same name share a host for local_rank / cross_rank,
whatever ``gethostname()`` says there (network namespaces, containers and Slurm steps often share
one). ``localhost`` and loopback addresses run without ssh.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Host", "is_local", "parse_hostfile", "parse_hosts"]

_NAME = re.compile(r"[A-Za-z0-9_.@%\-]+")  # IPv4 only, as the store and data sockets are


@dataclass(frozen=True)
class Host:
    """One host entry: its name and how many ranks it may run."""

    name: str
    slots: int


def is_local(name: str) -> bool:
    """True for hosts the launcher runs itself: ``localhost`` and loopback addresses."""
    host = name.rsplit("@", 1)[-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _slots(text: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{where}: slots must be a whole number >= 1, got {text!r}")
    return int(text)


def _check_name(name: str, where: str) -> str:
    if not name or not _NAME.fullmatch(name) or name.startswith("-"):
        raise ValueError(f"{where}: {name!r} is not a host name")
    return name


def _unique(hosts: Iterable[Host], where: str) -> list[Host]:
    seen: set[str] = set()
    out = []
    for host in hosts:
        if host.name in seen:
            raise ValueError(f"{where}: host {host.name!r} is listed twice")
        seen.add(host.name)
        out.append(host)
    if not out:
        raise ValueError(f"{where}: no hosts")
    return out


def parse_hosts(text: str) -> list[Host]:
    """``h1:2,h2:2,h3`` (slots default to 1) as a list of hosts, in order."""
    hosts = []
    for entry in text.split(","):
        entry = entry.strip()
        where = f"-H entry {entry!r}"
        name, sep, slots = entry.partition(":")
        if not sep:
            slots = "1"
        hosts.append(Host(_check_name(name, where), _slots(slots, where)))
    return _unique(hosts, f"-H {text!r}")


def parse_hostfile(path: str | Path) -> list[Host]:
    """Lines ``host slots=N`` (or just ``host``: 1 slot); ``#`` starts a comment."""
    hosts = []
    text = Path(path).read_text()
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"hostfile {path} line {number}"
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        slots = 1
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if key not in ("slots", "max_slots") or not sep:
                raise ValueError(f"{where}: expected 'host slots=N', got {line.strip()!r}")
            if key == "slots":
                slots = _slots(value, where)
        hosts.append(Host(_check_name(words[0], where), slots))
    return _unique(hosts, f"hostfile {path}")
