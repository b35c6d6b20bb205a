"""Two-rank allreduce over TCP at 8 B, 64 KiB and 16 MiB (float32, Sum, in place).

This process is rank 0 and is timed; rank 1 (the `two_ranks` fixture) makes the same calls.
Rounds are fixed (pedantic mode) so that rank 1 knows how many calls to make.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import ringflow as rf

# (bytes, rounds, warmup rounds): enough rounds for a median, few enough for a 2-core machine.
SIZES = [(8, 400, 20), (64 << 10, 200, 10), (16 << 20, 15, 2)]


def _calls(benchmark: Any, rounds: int, warmup_rounds: int) -> int:
    """How often benchmark.pedantic(..., iterations=1) will call its target."""
    if getattr(benchmark, "cprofile", False):
        pytest.skip("--benchmark-cprofile calls the target an unknown number of extra times")
    return 1 if getattr(benchmark, "disabled", False) else rounds + warmup_rounds


@pytest.mark.parametrize(("nbytes", "rounds", "warmup"), SIZES, ids=["8B", "64KiB", "16MiB"])
def test_allreduce_2ranks(
    benchmark: Any, two_ranks: Any, nbytes: int, rounds: int, warmup: int
) -> None:
    x = np.ones(nbytes // 4, np.float32)
    benchmark.group = "allreduce, 2 ranks, tcp"
    benchmark.extra_info["bytes"] = nbytes
    two_ranks.start(_calls(benchmark, rounds, warmup), nbytes)
    benchmark.pedantic(
        rf.allreduce_,
        args=(x,),
        kwargs={"op": rf.Sum},
        rounds=rounds,
        warmup_rounds=warmup,
        iterations=1,
    )
    two_ranks.finish()
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["busbw_gbps_at_median"] = nbytes / stats.stats.median / 1e9
