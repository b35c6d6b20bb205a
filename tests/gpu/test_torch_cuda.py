"""ringflow.torch on CUDA tensors: every op equals the host path bit for bit, compression,
DistributedOptimizer equal to one-process training within 1e-5, and mixed host/device tensors
rejected with the tensor's name."""

from __future__ import annotations

import pytest

from tests.gpu import arrays, torch_cases

pytestmark = pytest.mark.gpu

WORLD_SIZES = (1, 2, 4)
DEADLINE_S = 90.0


def assert_none(results: list[list[str]]) -> None:
    problems = [text for result in results for text in result]
    assert not problems, "\n".join(problems)


def _ops_all_sizes(dtype_name: str) -> list[str]:
    return [p for size in (0, 7, 1023) for p in torch_cases.ops_match_host(dtype_name, size)]


@pytest.mark.parametrize("dtype_name", arrays.DTYPES)
@pytest.mark.parametrize("n", WORLD_SIZES)
def test_ops_match_host_path(pools, n, dtype_name):
    arrays.need("torch")
    assert_none(pools.call(n, _ops_all_sizes, dtype_name, deadline=DEADLINE_S))


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compression_matches_host_path(pools, compression):
    arrays.need("torch")
    assert_none(pools.call(2, torch_cases.compression_matches_host, compression))


OPTIMIZER_CASES = [(n, "sgd", 1, "none") for n in WORLD_SIZES] + [
    (2, "adam", 1, "none"),
    (4, "sgd", 2, "none"),
    (2, "sgd", 1, "fp16"),
]


@pytest.mark.parametrize(("n", "kind", "passes", "compression"), OPTIMIZER_CASES)
def test_distributed_optimizer_matches_one_process(pools, n, kind, passes, compression):
    arrays.need("torch")
    results = pools.call(
        n, torch_cases.optimizer_matches_one_process, kind, passes, compression, deadline=DEADLINE_S
    )
    assert_none(results)


@pytest.mark.parametrize("framework", arrays.FRAMEWORKS)
@pytest.mark.parametrize("n", (1, 2))
def test_mixed_host_and_device_is_an_error_naming_the_tensor(pools, n, framework):
    arrays.need(framework)
    assert_none(pools.call(n, torch_cases.mixed_host_and_device, framework))
