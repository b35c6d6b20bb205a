"""DistributedOptimizer as an object: the optimizer's own class, Horovod's construction errors,
synchronize() with clipping between it and step(), and the misuse Horovod users are warned of.
The training helpers come from test_torch_optimizer."""

from __future__ import annotations

import time
import warnings
import weakref

import pytest

torch = pytest.importorskip("torch")

import ringflow as rf  # noqa: E402
import ringflow.torch as hvd  # noqa: E402
from tests.test_torch_optimizer import (  # noqa: E402
    BATCH,
    STEPS,
    TOL,
    _arrays,
    _check_same_everywhere,
    _data,
    _loss,
    _max_diff,
    _model,
    _pair,
    semantics,
)

# -- the wrapper ----------------------------------------------------------------------------------


def _wrapper_facts():
    model = _model(1, torch.float64)
    plain = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    opt = hvd.DistributedOptimizer(plain, named_parameters=model.named_parameters())
    other = hvd.DistributedOptimizer(torch.optim.SGD(_model(2, torch.float64).parameters(), lr=1))
    adam = hvd.DistributedOptimizer(torch.optim.Adam(_model(3, torch.float64).parameters()))
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data(1, hvd.size(), torch.float64)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        for step in range(2):
            opt.zero_grad()
            _loss(model, x[step], y[step]).backward()
            opt.step()
            scheduler.step()
    lr_after = opt.param_groups[0]["lr"]
    for group in opt.param_groups:
        group["lr"] = 0.05
    state = opt.state_dict()
    restored = torch.optim.SGD(model.parameters(), lr=1.0)
    restored.load_state_dict(state)
    again = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0))
    again.load_state_dict(state)
    bufs = [
        [o.state[p]["momentum_buffer"].clone() for p in model.parameters()]
        for o in (opt, restored, again)
    ]
    return {
        "name": type(opt).__name__,
        "adam name": type(adam).__name__,
        "isinstance": isinstance(opt, torch.optim.SGD) and isinstance(adam, torch.optim.Adam),
        "subclass": type(opt) is not torch.optim.SGD and type(opt) is type(other),
        "lr kept": opt.defaults["lr"] == 0.05 and opt.param_groups[0]["lr"] == 0.05,
        "lr restored": restored.param_groups[0]["lr"] == 0.05 == again.param_groups[0]["lr"],
        "state restored": all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(*bufs)),
        "repr": repr(opt).startswith("SGD ("),
        "step hooks once each": calls == ["pre", "post"] * 2,
        "scheduler": lr_after == 0.05 * 0.25,
        "no warnings": [str(w.message) for w in records] == [],
    }


def test_wrapper_is_the_optimizer_class(pools):
    for rank, facts in enumerate(pools.call(2, _wrapper_facts)):
        assert facts["name"] == "SGD" and facts["adam name"] == "Adam", f"rank {rank}: {facts}"
        bad = [k for k, v in facts.items() if v is False]  # the names are strings
        assert not bad, f"rank {rank}: {bad}"


def _construction_error(case: str) -> str:
    model = _model(1, torch.float64)
    params = list(model.named_parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {
        "duplicate": {"named_parameters": [("w", p) for _, p in params]},
        "missing": {"named_parameters": params[1:]},
        "not pairs": {"named_parameters": [p for _, p in params]},
        "group twice": {"groups": [[params[0][1]], [params[0][1]]]},
        "zero groups": {"groups": 0},
        "passes": {"backward_passes_per_step": 0},
        "predivide with Sum": {"op": hvd.Sum, "gradient_predivide_factor": 2.0},
    }[case]
    try:
        hvd.DistributedOptimizer(sgd, **kwargs)
    except ValueError as error:
        return str(error)
    return "no error"


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("duplicate", "Found duplicates: w"),
        ("missing", "param group 0 index 0 (shape [8, 6])"),
        ("not pairs", "tuples (name, parameter)"),
        ("group twice", "only appear once in groups"),
        ("zero groups", "groups should be"),
        ("passes", "backward_passes_per_step must be > 0"),
        ("predivide with Sum", "op != Average"),
    ],
)
def test_construction_errors(pools, case, fragment):
    for rank, message in enumerate(pools.call(2, _construction_error, case)):
        assert fragment in message, f"rank {rank}, {case}: {message!r}"


# -- synchronize, clipping, misuse ----------------------------------------------------------------


def _clipping(seed):
    """Horovod's documented pattern: synchronize, clip, step inside skip_synchronize."""
    rank, n = hvd.rank(), hvd.size()
    x, y = _data(seed, n, torch.float64)
    ref, ref_opt, model, opt = _pair(seed, "sgd")
    # A replaced optimizer goes away at once (no reference cycles), and its hooks with it.
    replaced = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0))
    gone = weakref.ref(replaced)
    del replaced
    assert gone() is None, "a dropped DistributedOptimizer is still alive"
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for step in range(STEPS):
        ref_opt.zero_grad()
        _loss(ref, x[step], y[step]).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.1)
        ref_opt.step()
        opt.zero_grad()
        _loss(model, x[step][mine], y[step][mine]).backward()
        opt.synchronize()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        with opt.skip_synchronize():
            opt.step()
    return _max_diff(model, ref), _arrays(model)


def _step_after_synchronize(seed, mode):
    """step() after a manual synchronize() warns (Horovod's text) and, with op=Sum, sums the
    gradients a second time as Horovod does (n times the sum); with
    RINGFLOW_TORCH_OPTIMIZER=ringflow not: the result equals n times the mean gradient."""
    rank, n = hvd.rank(), hvd.size()
    x, y = _data(seed, n, torch.float64)
    with semantics(mode):
        ref, ref_opt, model, opt = _pair(seed, "sgd", op=hvd.Sum)
    factor = n if mode == "ringflow" else n * n
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    caught = []
    for step in range(3):
        ref_opt.zero_grad()
        (_loss(ref, x[step], y[step]) * factor).backward()
        ref_opt.step()
        opt.zero_grad()
        _loss(model, x[step][mine], y[step][mine]).backward()
        opt.synchronize()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            opt.step()
        caught += [str(w.message) for w in records]
    return _max_diff(model, ref), caught


def test_clipping_between_synchronize_and_step(pools):
    results = pools.call(2, _clipping, 30)
    for rank, (diff, _) in enumerate(results):
        assert diff <= TOL, f"rank {rank}: {diff:.3g} from the single process"
    _check_same_everywhere([(d, a, None) for d, a in results], "clipping")


@pytest.mark.parametrize("mode", ["horovod", "ringflow"])
def test_step_after_manual_synchronize_warns_and_reduces_again(pools, mode):
    for rank, (diff, caught) in enumerate(pools.call(2, _step_after_synchronize, 31, mode)):
        assert diff <= TOL, f"rank {rank}: {diff:.3g} from the single process (reduced twice?)"
        assert len(caught) == 3, f"rank {rank}: warnings {caught}"
        assert all("skip_synchronize() context after" in w for w in caught), caught


def _misuse():
    """zero_grad() while allreduces are in flight, and one backward pass too many, raise
    AssertionError as in Horovod; after synchronize() both are fine again."""
    x, y = _data(3, hvd.size(), torch.float64)
    model = _model(3, torch.float64)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    out = {}
    before = rf.engine_stats()["rounds"]
    _loss(model, x[0], y[0]).backward()
    # The hooks started the allreduces: the engine negotiates them with no synchronize().
    deadline = time.monotonic() + 10
    while rf.engine_stats()["rounds"] == before and time.monotonic() < deadline:
        time.sleep(0.001)
    out["ran during backward"] = rf.engine_stats()["rounds"] > before
    try:
        opt.zero_grad()
        out["zero_grad"] = "no error"
    except AssertionError as error:
        out["zero_grad"] = str(error)
    try:
        _loss(model, x[1], y[1]).backward()
        out["second backward"] = "no error"
    except AssertionError as error:
        out["second backward"] = str(error)
    opt.synchronize()
    with opt.skip_synchronize():
        opt.step()
    opt.zero_grad()
    _loss(model, x[2], y[2]).backward()
    opt.step()
    opt.zero_grad()
    return out


def test_misuse_raises_like_horovod(pools):
    for rank, out in enumerate(pools.call(2, _misuse)):
        assert "before optimizer.step() or optimizer.synchronize()" in out["zero_grad"], (
            f"rank {rank}: {out}"
        )
        assert "more than backward_passes_per_step" in out["second backward"], f"rank {rank}: {out}"
        assert out["ran during backward"], f"rank {rank}: no allreduce started before synchronize()"
