"""Every numpy-level collective on CuPy and torch CUDA arrays: dtype x op x N in {1, 2, 4}.

Each test runs one (N, framework, collective, dtype) over every op and the small sizes on one
GPU shared by all ranks (see cases.py for what is checked); `test_large` covers 2**20 + 3
elements for a subset. The device check runs the whole matrix at every size.
"""

from __future__ import annotations

import pytest

from tests.gpu import arrays, cases

pytestmark = pytest.mark.gpu

WORLD_SIZES = (1, 2, 4)
DEADLINE_S = 90.0
COMBOS = [
    (n, framework, collective, dtype)
    for n in WORLD_SIZES
    for framework in arrays.FRAMEWORKS
    for collective in cases.COLLECTIVES
    for dtype in arrays.DTYPES
    if collective != "barrier"
    and arrays.supports(framework, dtype)
    and not (collective == "sendrecv" and n == 1)
]


def assert_passed(results: list[dict]) -> None:
    """Every rank ran every case and none failed; the message lists the failures."""
    failures = [text for result in results for text in result["failures"]]
    for result in results:
        assert not result["aborted"], result["aborted"] + "\n" + "\n".join(failures)
        assert result["run"] == result["cases"], f"rank {result['rank']} ran {result['run']}"
    failed = sum(result["failed"] for result in results)
    assert failed == 0, f"{failed} failed cases on all ranks:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    ("n", "framework", "collective", "dtype"),
    COMBOS,
    ids=["-".join(map(str, combo)) for combo in COMBOS],
)
def test_collective(pools, n, framework, collective, dtype):
    arrays.need(framework)
    batch = cases.matrix(n, (framework,), cases.SMALL_SIZES, (collective,), (dtype,))
    assert batch, "no cases"
    assert_passed(pools.call(n, cases.run_cases, batch, deadline=DEADLINE_S))


LARGE_COLLECTIVES = (
    "allreduce",
    "allreduce_",
    "reducescatter",
    "broadcast",
    "allgather",
    "alltoall",
)


@pytest.mark.parametrize("framework", arrays.FRAMEWORKS)
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_large(pools, n, framework):
    arrays.need(framework)
    dtypes = ("int32", "float32", "bfloat16" if framework == "torch" else "float16")
    collectives = (*LARGE_COLLECTIVES, "sendrecv") if n > 1 else LARGE_COLLECTIVES
    batch = cases.matrix(n, (framework,), (cases.LARGE,), collectives, dtypes, ("Sum", "Max"))
    assert_passed(pools.call(n, cases.run_cases, batch, deadline=DEADLINE_S))


@pytest.mark.parametrize("n", WORLD_SIZES)
def test_barrier(pools, n):
    assert_passed(pools.call(n, cases.run_cases, [cases.Case("barrier", "none", "uint8", 0)]))
