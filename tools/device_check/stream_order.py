"""The device check's stream-ordering stage: one rank of ``ringflow run -np N python3
stream_order.py --out DIR``.

Runs tests/gpu/stream_cases.py (input written on a non-default torch stream after
``torch.cuda._sleep``, then allreduced, the result used on that stream right after the call with
no host synchronisation; the same on a CuPy stream and through a CAI v3 ``stream``), and writes
``DIR/rank<r>.json`` for rank_results.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # the repository (tests.gpu) and this folder

import rank_results  # noqa: E402
from tests.gpu import arrays, stream_cases  # noqa: E402

import ringflow as rf  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for rank<r>.json")
    args = parser.parse_args()
    start = time.monotonic()
    rf.init()
    try:
        arrays.select_device(rf.local_rank())
        skipped = {f: why for f in arrays.FRAMEWORKS if (why := arrays.why_framework_missing(f))}
        outcomes = stream_cases.all_stream_cases()
        failures = [text for problems in outcomes.values() for text in problems]
        result = {
            "cases": len(outcomes),
            "run": len(outcomes),
            "failed": sum(1 for problems in outcomes.values() if problems),
            "sections": {
                name: "ok" if not p else f"{len(p)} problems" for name, p in outcomes.items()
            },
            "failures": failures,
            "aborted": "",
            "skipped": skipped,
            "seconds": round(time.monotonic() - start, 3),
        }
        if not outcomes:
            result["failures"] = [f"rank {rf.rank()}: no framework to test streams with: {skipped}"]
            result["failed"] = 1
        rank_results.write(args.out, rf.rank(), result)
        print(f"rank {rf.rank()}: stream cases {result['sections']}")
    finally:
        rf.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
