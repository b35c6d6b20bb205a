"""The soak of issue 6 on demand, with its figures: wall time, ops/s, fds and RSS over time.

    python benchmarks/soak.py [-np 2 4] [--ops 5000] [--seed S]

For each world size (1 to 8), starts a job of local ranks through the test harness
(tests/harness.py), runs the same schedule as tests/test_soak.py (tests/soak_plan.py) and
prints a summary: the collectives per second, the mismatches (there must be none), and every
rank's open fds and RSS (after gc and malloc_trim) at the start, after the warm-up and after
every chunk. Exits 1 on a mismatch, on fds that changed after the warm-up or on RSS growth
over the test's bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import harness, soak_driver, test_soak
from tests import reference as ref
from tests import soak_plan as plan

MIB = 1 << 20


def _series(report: soak_driver.SoakReport) -> str:
    lines = ["  steps   " + "".join(f"  rank {r} fds / rss MiB" for r in range(report.n))]
    for done, per_rank in report.samples:
        cells = "".join(f"  {res['fds']:>9} / {res['rss'] / MIB:7.1f}" for res in per_rank)
        mark = "  <- warm-up ends" if done == report.warmup_ops else ""
        lines.append(f"  {done:>5}   {cells}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-np", type=int, nargs="+", default=[2, 4], help="world sizes")
    parser.add_argument("--ops", type=int, default=test_soak.FULL_OPS, help="collectives per size")
    parser.add_argument("--seed", type=int, default=None, help="default: the test's per size")
    args = parser.parse_args(argv)
    if not all(1 <= n <= plan.MAX_RANKS for n in args.np):
        parser.error(f"-np: the soak's inputs are exact for 1 to {plan.MAX_RANKS} ranks")
    failed = False
    for n in args.np:
        seed = args.seed if args.seed is not None else ref.seed_of("soak", n)
        began = time.perf_counter()
        job = harness.Job(n, env=soak_driver.rank_env()).start()
        try:
            report = soak_driver.run_soak(job, seed, args.ops)
        except AssertionError as exc:
            print(f"n={n}: FAILED\n{exc}", flush=True)
            job.broken = True
            failed = True
            continue
        finally:
            job.close()
        print(report.summary())
        print(f"  job wall time with start and shutdown: {time.perf_counter() - began:.1f} s")
        print(_series(report), flush=True)
        for problem in report.problems:
            print(problem)
        for base, end in zip(report.baseline(), report.end()):
            grew = end["rss"] - base["rss"] > test_soak.RSS_SLACK
            failed |= report.mismatches > 0 or end["fds"] != base["fds"] or grew
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
