"""ringflow waits for the caller's stream before reading and orders its result before what the
caller queues next on that stream (torch side stream, CuPy stream, CAI v3 `stream`)."""

from __future__ import annotations

import pytest

from tests.gpu import arrays, stream_cases

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("framework", arrays.FRAMEWORKS)
@pytest.mark.parametrize("n", (1, 2, 4))
def test_stream_ordering(pools, n, framework):
    arrays.need(framework)
    results = pools.call(n, stream_cases.all_stream_cases, (framework,), deadline=90.0)
    assert all(result for result in results), "no stream case ran"
    problems = [text for result in results for texts in result.values() for text in texts]
    assert not problems, "\n".join(problems)
