"""Latency of a tiny allreduce on one process set while a disjoint set runs large ones.

    python benchmarks/bench_set_channels.py [--mib 128] [--steps 8] [--repeats 3]

Four local ranks (tests/harness.py plays the launcher): set A = [0, 1] submits ``--steps``
allreduces of ``--mib`` MiB (int32) at once and waits for them, set B = [2, 3] runs 32-byte allreduces until
A is done (the op of tests/test_process_set_channels.py). Prints, per repeat, A's time per
op (its batch's time / steps) and B's median / 90th percentile / max latency over the ops that overlapped A's batch,
then the medians over repeats; then the time of an 8-byte job-wide allreduce with and without
the two sets in place. Times come from one host's CLOCK_MONOTONIC.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import harness
from tests.test_process_set_channels import _busy_and_quick, b_during_a, world_latency


def one_run(job: harness.Job, elements: int, steps: int) -> tuple[float, float, float, float, int]:
    with tempfile.TemporaryDirectory(prefix="ringflow-bench-sets-") as tmp:
        results = harness.values(
            job.run(_busy_and_quick, os.path.join(tmp, "a-done"), elements, steps)
        )
    per_op, _ = b_during_a(results, steps)
    (a_start, a_end), *_ = results[0][0]
    # Every B op that overlapped A's batch (one that waited for all of it counts too).
    latencies = sorted(
        end - start for start, end in results[2][0] if end > a_start and start < a_end
    )
    if not latencies:
        return per_op, float("nan"), float("nan"), float("nan"), 0
    p90 = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))]
    return per_op, statistics.median(latencies), p90, latencies[-1], len(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    elements = args.mib * (1 << 20) // 4
    job = harness.Job(4).start()
    rows = []
    try:
        for repeat in range(args.repeats):
            a, b, p90, worst, count = one_run(job, elements, args.steps)
            rows.append((a, b, p90, worst))
            print(
                f"repeat {repeat}: A {args.mib} MiB allreduce {a * 1e3:.1f} ms per op; "
                f"B 32 B allreduce while A busy: median {b * 1e3:.3f} ms, p90 {p90 * 1e3:.3f} ms, "
                f"max {worst * 1e3:.1f} ms over {count} ops",
                flush=True,
            )
        # What channels cost job-wide work: an 8-byte job-wide allreduce with and without the
        # two disjoint sets in place (alternating, median over repeats of the slowest rank).
        with_sets, without = [], []
        for _ in range(args.repeats):
            without.append(max(harness.values(job.run(world_latency, False))))
            with_sets.append(max(harness.values(job.run(world_latency, True))))
    finally:
        job.close()
    print(
        f"job-wide 8 B allreduce, 4 ranks: {statistics.median(without) * 1e6:.1f} us without "
        f"sets, {statistics.median(with_sets) * 1e6:.1f} us with [0, 1] and [2, 3] in place"
    )
    a, b, p90, worst = (statistics.median(column) for column in zip(*rows))
    print(
        f"median of {args.repeats}: A {a * 1e3:.1f} ms, B median {b * 1e3:.3f} ms, "
        f"B p90 {p90 * 1e3:.3f} ms, B max {worst * 1e3:.1f} ms; load average "
        f"{os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
