"""The device check's collectives stage: one rank of ``ringflow run -np N python3 collectives.py``.

Every rank uses the one GPU (RINGFLOW_TEST_DEVICE=0) and runs, in the same order:

1. the numpy-level matrix (tests/gpu/cases.py): every collective (allreduce in and out of place,
   prescale/postscale, grouped_allreduce, broadcast / broadcast_, allgather with uneven first
   dimensions, reducescatter, alltoall with splits, send/recv, barrier) x dtype (uint8, int8,
   int32, int64, float16, bfloat16 (torch only), float32, float64) x op x size (0, 1, 7, 1023,
   2**20 + 3; at 2**20 + 3 the reductions run Sum and Max only), with CuPy and torch CUDA
   inputs;
2. ringflow.torch ops on CUDA tensors against the host path, fp16/bf16 compression, and
   DistributedOptimizer steps against one-process training (tests/gpu/torch_cases.py);
3. mixed host/device tensors, which must fail naming the tensor.

Each rank writes ``--out DIR/rank<r>.json`` (rank_results.py merges them). A framework that is
not importable is skipped and named in the result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]  # the repository (tests.gpu) and this folder

import rank_results  # noqa: E402
from tests.gpu import arrays, cases, torch_cases  # noqa: E402

import ringflow as rf  # noqa: E402

TORCH_OP_SIZES = ((0, 7, 1023), {"float32": (2**20 + 3,)})
LARGE_OPS = ("Sum", "Max")
"""At 2**20 + 3 elements the reducing collectives run these ops only (every op at the small
sizes): the whole check must fit in 8 minutes of one H200."""


def _torch_sections(frameworks: tuple[str, ...]) -> list[tuple[str, Callable[[], list[str]]]]:
    small, large = TORCH_OP_SIZES
    sections: list[tuple[str, Callable[[], list[str]]]] = []
    if "torch" in frameworks:
        for dtype in arrays.DTYPES:
            for size in (*small, *large.get(dtype, ())):
                sections.append(
                    (
                        f"torch ops {dtype} {size}",
                        lambda d=dtype, s=size: torch_cases.ops_match_host(d, s),
                    )
                )
        for compression in ("fp16", "bf16"):
            sections.append(
                (
                    f"torch compression {compression}",
                    lambda c=compression: torch_cases.compression_matches_host(c),
                )
            )
        for kind, passes, compression in (
            ("sgd", 1, "none"),
            ("adam", 1, "none"),
            ("sgd", 2, "none"),
            ("sgd", 1, "fp16"),
        ):
            sections.append(
                (
                    f"DistributedOptimizer {kind} passes={passes} {compression}",
                    lambda k=kind, p=passes, c=compression: (
                        torch_cases.optimizer_matches_one_process(k, p, c)
                    ),
                )
            )
    for framework in frameworks:
        sections.append(
            (
                f"mixed host/device {framework}",
                lambda f=framework: torch_cases.mixed_host_and_device(f),
            )
        )
    return sections


def _run_sections(
    sections: list[tuple[str, Callable[[], list[str]]]], result: dict[str, Any]
) -> None:
    """Each section's problems go into result; a poisoning error stops the rest."""
    done = result.setdefault("sections", {})
    for name, section in sections:
        if result["aborted"]:
            break
        try:
            problems = section()
        except Exception as error:
            problems = [f"rank {rf.rank()}: {name}: raised {type(error).__name__}: {error}"]
            if isinstance(error, (rf.PeerFailureError, rf.TimeoutError)):
                result["aborted"] = f"stopped in {name}: the job is poisoned"
        done[name] = "ok" if not problems else f"{len(problems)} problems"
        result["cases"] += 1
        result["run"] += 1
        if problems:
            result["failed"] += 1
            result["failures"] += [
                p if p.startswith("rank ") else f"rank {rf.rank()}: {name}: {p}" for p in problems
            ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for rank<r>.json")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(cases.SIZES))
    args = parser.parse_args()
    start = time.monotonic()
    rf.init()
    try:
        skipped = {f: why for f in arrays.FRAMEWORKS if (why := arrays.why_framework_missing(f))}
        frameworks = tuple(f for f in arrays.FRAMEWORKS if f not in skipped)
        matrix = cases.matrix(rf.size(), frameworks, tuple(args.sizes), large_ops=LARGE_OPS)
        result = cases.run_cases(matrix)
        result["skipped"] = skipped
        result["frameworks"] = list(frameworks)
        _run_sections(_torch_sections(frameworks), result)
        result["seconds"] = round(time.monotonic() - start, 3)
        rank_results.write(args.out, rf.rank(), result)
        print(
            f"rank {rf.rank()}: {result['run']} of {result['cases']} cases, {result['failed']} failed, "
            f"{result['seconds']} s"
        )
    finally:
        rf.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
