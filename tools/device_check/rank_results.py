"""One JSON file per rank, and their merge into one stage's figures.

Rank programs started by ``ringflow run`` (collectives.py, stream_order.py) call `write` with
a dict holding at least ``failures`` (a list of text) and ``cases`` / ``run`` counts; a rank that
crashes or hangs writes nothing, which the merge reports. ``rank_results.py --merge DIR --ranks
N --figures FILE --reason FILE`` combines them: exit 0 when every rank reported and nothing
failed, else 1 with a one-line reason written to the reason file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MAX_FAILURES = 20


def write(directory: str, rank: int, result: dict[str, Any]) -> None:
    """Rank's result as DIR/rank<r>.json (written whole, then renamed: never half a file)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".rank{rank}.json.partial"
    partial.write_text(json.dumps(result, indent=1) + "\n")
    partial.rename(folder / f"rank{rank}.json")


def merge(directory: str, ranks: int) -> tuple[dict[str, Any], str]:
    """(figures, reason): reason is '' when every rank reported and no case failed."""
    results = {}
    for rank in range(ranks):
        path = Path(directory) / f"rank{rank}.json"
        if path.exists():
            results[rank] = json.loads(path.read_text())
    missing = [rank for rank in range(ranks) if rank not in results]
    failures = [text for r in results.values() for text in r.get("failures", [])]
    failed = sum(int(r.get("failed", 0)) for r in results.values())
    first = results[min(results)] if results else {}
    figures: dict[str, Any] = {
        "ranks": ranks,
        "ranks_reported": sorted(results),
        "cases_per_rank": first.get("cases"),
        "run_per_rank": first.get("run"),
        "failed_all_ranks": failed,
        "seconds_max": max((r.get("seconds", 0) for r in results.values()), default=None),
        "sections": first.get("sections"),
        "by_collective_rank0": first.get("by_collective"),
        "aborted": sorted({r["aborted"] for r in results.values() if r.get("aborted")}),
        "skipped": first.get("skipped"),
        "failures": failures[:MAX_FAILURES],
    }
    if missing:
        return figures, f"ranks {missing} wrote no result (crashed or were stopped)"
    if first.get("frameworks") == []:
        return figures, f"no framework made CUDA arrays: {first.get('skipped')}"
    if figures["aborted"]:
        return figures, figures["aborted"][0]
    if failed or failures:
        return figures, f"{failed} failed cases on {ranks} ranks; first: {failures[0][:200]}"
    return figures, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--merge", required=True, metavar="DIR")
    parser.add_argument("--ranks", required=True, type=int)
    parser.add_argument("--figures", required=True)
    parser.add_argument("--reason", required=True)
    args = parser.parse_args()
    figures, reason = merge(args.merge, args.ranks)
    Path(args.figures).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "failures"}))
    for text in figures["failures"]:
        print(f"FAILED {text}")
    if reason:
        Path(args.reason).write_text(reason + "\n")
        print(f"error: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
