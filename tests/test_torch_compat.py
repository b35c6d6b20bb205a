"""Horovod patterns around DistributedOptimizer and init that scripts rely on: a scheduler made
before wrapping, add_param_group, join on uneven batches, init(process_sets=...)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import ringflow.torch as hvd  # noqa: E402
from tests.test_torch_optimizer import semantics  # noqa: E402


def _scheduler_then_param_group(mode: str) -> tuple[list, list]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.optim.lr_scheduler.StepLR(opt, 10)  # patches opt.step before the wrapping
    with semantics(mode):
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    x = torch.full((1, 2), float(hvd.rank() + 1))
    model(x).sum().backward()
    opt.step()
    first = model.weight.grad.tolist()
    extra = torch.nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra]})
    opt.zero_grad()
    (model(x).sum() + (extra * x[0]).sum()).backward()
    opt.step()
    return first, extra.grad.tolist()


@pytest.mark.parametrize("mode", ["horovod", "ringflow"])
def test_scheduler_before_wrapping_and_add_param_group(pools, mode):
    """A group added after wrapping is reduced with RINGFLOW_TORCH_OPTIMIZER=ringflow; as in
    Horovod, by default it keeps each rank's own gradient."""
    for rank, (first, extra) in enumerate(pools.call(2, _scheduler_then_param_group, mode)):
        assert first == [[1.5, 1.5]], f"rank {rank}: gradient not averaged: {first}"
        want = [1.5, 1.5] if mode == "ringflow" else [rank + 1.0] * 2
        assert extra == want, f"rank {rank}: added group: {extra}, want {want}"


def _uneven_training(batches: list[int]) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters()
    )
    for step in range(batches[hvd.rank()]):
        opt.zero_grad()
        x = torch.full((2, 3), float(hvd.rank() + step + 1))
        model(x).pow(2).mean().backward()
        opt.step()
    hvd.join()
    return [float(v) for v in torch.cat([p.detach().reshape(-1) for p in model.parameters()])]


def _expected(batches: list[int]) -> list[float]:
    """One process replaying it: each step averages the gradients of the ranks still training
    over the whole job, as Horovod does (joined ranks stand in with zeros)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(max(batches)):
        active = [r for r, b in enumerate(batches) if b > step]
        grads = []
        for r in active:
            model.zero_grad()
            model(torch.full((2, 3), float(r + step + 1))).pow(2).mean().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for p, *gs in zip(model.parameters(), *grads):
            p.grad = sum(gs) / len(batches)
        opt.step()
    return [float(v) for v in torch.cat([p.detach().reshape(-1) for p in model.parameters()])]


def test_join_with_uneven_batches(pools):
    """The rank with more batches trains on alone after the other joined; both finish."""
    batches = [3, 1]
    results = pools.call(2, _uneven_training, batches)
    want = _expected(batches)
    assert results[0] == pytest.approx(want, rel=1e-6), results[0]
    assert results[1] == pytest.approx(_expected([1, 1]), rel=1e-6), results[1]


def _init_with_sets() -> list[int]:
    hvd.shutdown()
    sets = [hvd.ProcessSet([0]), hvd.ProcessSet([1])]
    hvd.init(process_sets=sets)
    mine = sets[hvd.rank()]
    total = hvd.allreduce(torch.ones(2), op=hvd.Sum, name="own", process_set=mine)
    for s in sets:
        hvd.remove_process_set(s)
    return total.tolist()


def test_init_with_process_sets(make_job):
    job = make_job(2).start()
    assert job.call(_init_with_sets) == [[1.0, 1.0], [1.0, 1.0]]
