"""Results stay exact across every algorithm switch and pipelining boundary.

Each job forces a configuration through the environment (read once per process): the automatic
choice, the ring with tiny segments (many pipelined frames, uneven last segments), and Bruck for
every size. Sizes straddle the Bruck threshold ((N - 1) x bytes = 64 KiB), the segment size,
and counts not divisible by N. Inputs are integer-valued, so every order of addition is exact
and all three configurations must give the numpy result bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf

CONFIGS = {
    "auto": {},
    "ring-small-segments": {
        "RINGFLOW_ALLREDUCE_ALGORITHM": "ring",
        "RINGFLOW_SEGMENT_BYTES": "4096",
    },
    "bruck": {"RINGFLOW_ALLREDUCE_ALGORITHM": "bruck"},
    "chain-broadcast": {"RINGFLOW_BROADCAST_ALGORITHM": "chain", "RINGFLOW_SEGMENT_BYTES": "1000"},
}


def counts(n: int) -> list[int]:
    """float32 element counts around the Bruck threshold and segment boundaries, for n ranks."""
    threshold = 65536 // 4 // (n - 1)  # largest count Bruck takes automatically
    return sorted({0, 1, n - 1, n + 1, 1023, 1024, 1025, threshold - 1, threshold, threshold + 1,
                   5 * 1024 * n + 3, 300_001})  # fmt: skip


def values(rank: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(count * 31 + rank)
    return rng.integers(-1000, 1000, count).astype(np.float32)


def _allreduce_all(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for count in counts(n):
        x = values(rf.rank(), count)
        out.append((rf.allreduce(x, op=rf.Sum), rf.allreduce_(x.copy(), op=rf.Max)))
    return out


def _broadcast_all(n: int) -> list[np.ndarray]:
    return [rf.broadcast(values(rf.rank(), c), root_rank=n - 1) for c in counts(n)]


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_allreduce_and_broadcast_exact_across_switches(make_job, n, config):
    job = make_job(n, env=CONFIGS[config]).start()
    reduced = job.call(_allreduce_all, n)
    broadcast = job.call(_broadcast_all, n)
    for i, count in enumerate(counts(n)):
        inputs = [values(r, count) for r in range(n)]
        want_sum = np.sum(inputs, axis=0, dtype=np.float32)
        want_max = np.max(inputs, axis=0) if count else np.empty(0, np.float32)
        for rank in range(n):
            got_sum, got_max = reduced[rank][i]
            context = f"rank {rank}, n {n}, {config}, count {count}"
            np.testing.assert_array_equal(got_sum, want_sum, err_msg=f"Sum, {context}")
            np.testing.assert_array_equal(got_max, want_max, err_msg=f"Max, {context}")
            np.testing.assert_array_equal(broadcast[rank][i], inputs[n - 1], err_msg=context)
