"""The reasons GPU tests skip with (these run everywhere: no GPU needed)."""

from __future__ import annotations

import pytest

import ringflow
from tests.gpu import arrays


def test_reason_when_ringflow_has_no_cuda_query(monkeypatch):
    monkeypatch.delattr(ringflow, "cuda_available", raising=False)
    assert arrays.why_cuda_unusable() == (
        "ringflow has no cuda_available(): this build predates device buffers"
    )


@pytest.mark.parametrize(("answer", "reason"), [(False, "no CUDA device"), (True, "")])
def test_reason_follows_cuda_available(monkeypatch, answer, reason):
    monkeypatch.setattr(ringflow, "cuda_available", lambda: answer, raising=False)
    assert arrays.why_cuda_unusable().startswith(reason)
    assert bool(arrays.why_cuda_unusable()) is not answer


def test_missing_framework_is_named():
    assert arrays.why_framework_missing("no_such_framework_here") == (
        "no_such_framework_here is not importable"
    )
    reason = arrays.why_framework_missing("torch")
    torch = pytest.importorskip("torch")
    assert reason == ("" if torch.version.cuda else f"torch {torch.__version__} is a CPU build")
