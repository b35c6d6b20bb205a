"""Place N ranks on hosts, in host order, filling each host's slots before the next one's.

Numbering follows Horovod and the engine's own topology: local_rank counts ranks on the same
host entry; cross_rank / cross_size count the hosts that have a rank with this local_rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .hosts import Host

__all__ = ["HostRanks", "RankSlot", "assign"]


@dataclass(frozen=True)
class RankSlot:
    """Where one rank sits in the job."""

    rank: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


@dataclass(frozen=True)
class HostRanks:
    """A host entry and the ranks placed on it (never empty)."""

    host: Host
    ranks: tuple[RankSlot, ...]


def assign(hosts: Sequence[Host], num_proc: int) -> list[HostRanks]:
    """The hosts that get ranks, each with its ranks; raises ValueError when slots are short."""
    total = sum(host.slots for host in hosts)
    if num_proc > total:
        listed = ", ".join(f"{host.name}:{host.slots}" for host in hosts)
        raise ValueError(
            f"-np {num_proc} needs {num_proc} slots but the hosts have {total}: {listed}"
        )
    counts = []
    left = num_proc
    for host in hosts:
        take = min(host.slots, left)
        if take:
            counts.append((host, take))
        left -= take
    placed = []
    first = 0
    for index, (host, count) in enumerate(counts):
        slots = []
        for local in range(count):
            hosts_with_local = [i for i, (_, c) in enumerate(counts) if c > local]
            slots.append(
                RankSlot(
                    rank=first + local,
                    local_rank=local,
                    local_size=count,
                    cross_rank=hosts_with_local.index(index),
                    cross_size=len(hosts_with_local),
                )
            )
        placed.append(HostRanks(host, tuple(slots)))
        first += count
    return placed
