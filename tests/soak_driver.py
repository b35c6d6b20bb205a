"""The soak from the parent: run the schedule on a job chunk by chunk, gather the figures.

Shared by tests/test_soak.py and benchmarks/soak.py. Before the schedule, the ranks fill the
bounded caches (`soak_rank.fill_caches`); its first chunk is the warm-up (every name of the
pool used, the largest buffer of every collective allocated). Open fds and RSS after the
warm-up are the baseline the end is compared with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from tests import harness, soak_rank
from tests import soak_plan as plan

CHUNK_OPS = 500
"""Steps per harness request after the warm-up (each request has its own deadline)."""
CHUNK_DEADLINE_S = 150.0
"""Deadline of one request: a chunk takes seconds; ranks' own waits end after 20 s."""


def warmup_ops(n_ops: int) -> int:
    """Steps of the warm-up: the name pool once (plus margin) and at least a tenth, but at
    most half, so that the other half is measured."""
    return min(n_ops // 2, max(plan.NAME_POOL + 40, n_ops // 10))


@dataclass
class SoakReport:
    seed: int
    n: int
    n_ops: int
    ops: int = 0
    warmup_ops: int = 0
    bytes_per_rank: list[int] = field(default_factory=list)
    seconds: float = 0.0
    mismatches: int = 0
    problems: list[str] = field(default_factory=list)
    samples: list[tuple[int, list[dict[str, int]]]] = field(default_factory=list)
    """(steps done, per-rank `soak_rank.resources`) at the start and after every chunk."""

    @property
    def reproduce(self) -> str:
        return (
            f"RINGFLOW_SOAK_SEED={self.seed} RINGFLOW_SOAK_OPS={self.n_ops} "
            f"python -m pytest 'tests/test_soak.py::test_soak[n{self.n}]', or "
            f"python benchmarks/soak.py -np {self.n} --ops {self.n_ops} --seed {self.seed}"
        )

    def baseline(self) -> list[dict[str, int]]:
        """Per-rank resources after the warm-up."""
        return next(res for done, res in self.samples if done >= self.warmup_ops)

    def end(self) -> list[dict[str, int]]:
        return self.samples[-1][1]

    def summary(self) -> str:
        mib = 1 << 20
        lines = [
            f"soak n={self.n} seed={self.seed}: {self.ops} collectives in {self.seconds:.1f} s "
            f"({self.ops / max(self.seconds, 1e-9):.0f} ops/s), "
            f"{max(self.bytes_per_rank, default=0) / mib:.0f} MiB in per rank, "
            f"{self.mismatches} mismatches"
        ]
        for rank, (base, end) in enumerate(zip(self.baseline(), self.end())):
            lines.append(
                f"  rank {rank}: fds {base['fds']} -> {end['fds']}, "
                f"rss {base['rss'] / mib:.2f} -> {end['rss'] / mib:.2f} MiB "
                f"({(end['rss'] - base['rss']) / 1024:+.0f} KiB), malloc in use "
                f"{(end['malloc'] - base['malloc']) / 1024:+.0f} KiB, Python blocks "
                f"{end['py_blocks'] - base['py_blocks']:+d}"
            )
        return "\n".join(lines)


def _chunks(batches: tuple[tuple[plan.Step, ...], ...], warmup: int) -> list[tuple[int, int]]:
    """[start, stop) batch ranges: the warm-up first, then about CHUNK_OPS steps each."""
    chunks, start, done, limit = [], 0, 0, warmup
    for index, batch in enumerate(batches):
        done += len(batch)
        if done >= limit or index == len(batches) - 1:
            chunks.append((start, index + 1))
            start, limit = index + 1, done + CHUNK_OPS
    return chunks


def rank_env() -> dict[str, str]:
    """Environment of the soak's ranks: one malloc arena (any GLIBC_TUNABLES given are kept).

    With one arena, ``malloc_trim`` (see `soak_rank.resources`) reaches every free page. glibc
    trims the top of the main arena only; the engine thread's arena would keep the free top of
    its heap resident, and once the first large free has raised glibc's dynamic mmap threshold,
    buffers up to 8 MiB come from that heap: RSS then rises in steps of several MiB while the
    memory in use stays flat (seen here: +1 to +23 MiB per rank over 5,000 steps at N = 4).
    """
    given = os.environ.get("GLIBC_TUNABLES")
    mine = "glibc.malloc.arena_max=1"
    return {"GLIBC_TUNABLES": f"{given}:{mine}" if given else mine}


def run_soak(job: harness.Job, seed: int, n_ops: int) -> SoakReport:
    """Run ``n_ops`` soak steps on ``job`` (started, initialised); raises AssertionError, with
    the seed and how to reproduce, if a rank fails or hangs."""
    report = SoakReport(seed, job.size, n_ops, bytes_per_rank=[0] * job.size)
    batches = plan.schedule(seed, job.size, n_ops)
    harness.values(job.run(soak_rank.fill_caches))
    report.samples.append((0, harness.values(job.run(soak_rank.resources))))
    began = time.perf_counter()
    for chunk, (start, stop) in enumerate(_chunks(batches, warmup_ops(n_ops))):
        try:
            results = job.run(
                soak_rank.run_batches, seed, n_ops, start, stop, deadline=CHUNK_DEADLINE_S
            )
            answers: list[dict[str, Any]] = harness.values(results)
        except AssertionError as exc:
            job.broken = True  # a rank failed or hung mid-chunk: the communicator is spent
            raise AssertionError(
                f"soak n={job.size} seed={seed} failed in batches [{start}, {stop}) "
                f"(reproduce: {report.reproduce}):\n{exc}"
            ) from None
        report.ops += answers[0]["ops"]
        if chunk == 0:
            report.warmup_ops = report.ops
        for rank, answer in enumerate(answers):
            report.bytes_per_rank[rank] += answer["bytes"]
            report.mismatches += answer["mismatches"]
            report.problems += answer["problems"]
        report.samples.append((report.ops, [answer["resources"] for answer in answers]))
    report.seconds = time.perf_counter() - began
    return report
