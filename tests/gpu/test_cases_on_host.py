"""The GPU cases' own logic (references, seeds, splits, oracles) on ringflow's host path, so a
mistake in a GPU test shows here and not first on a GPU machine. Runs everywhere (not `gpu`)."""

from __future__ import annotations

import pytest

from tests.gpu import arrays, cases, host_standins
from tests.gpu.test_collectives import assert_passed

pytest.importorskip("torch")


def test_collective_cases_hold_on_the_host_path(pools):
    results = pools.call(2, host_standins.matrix_on_host, cases.SMALL_SIZES, deadline=90.0)
    assert_passed(results)
    assert results[0]["cases"] == len(
        cases.matrix(2, arrays.FRAMEWORKS, cases.SMALL_SIZES, large_ops=("Sum", "Max"))
    )


def test_torch_cases_hold_on_the_host_path(pools):
    results = pools.call(2, host_standins.torch_on_host, ("int32", "bfloat16", "float64"))
    problems = [text for result in results for text in result]
    assert not problems, "\n".join(problems)


def test_the_matrix():
    """Every collective x dtype x op x size; at the large size only the chosen ops reduce."""
    full = cases.matrix(4)
    assert {c.collective for c in full} == set(cases.COLLECTIVES)
    assert {c.dtype for c in full if c.framework == "torch"} == set(arrays.DTYPES)
    assert "bfloat16" not in {c.dtype for c in full if c.framework == "cupy"}
    assert {c.op for c in full if c.collective == "allreduce"} == set(cases.ref.OPS)
    assert {c.size for c in full} == set(cases.SIZES)
    trimmed = cases.matrix(4, large_ops=("Sum", "Max"))
    large = [c for c in trimmed if c.size == cases.LARGE]
    assert {c.op for c in large if c.collective in cases.REDUCING} == {"Sum", "Max"}
    assert {c.op for c in large if c.collective == "allreduce_scaled"} == {"Sum"}
    small = [c for c in trimmed if c.size < cases.LARGE and c.collective != "barrier"]
    assert small == [c for c in full if c.size < cases.LARGE and c.collective != "barrier"]
    assert not [c for c in cases.matrix(1) if c.collective == "sendrecv"]
