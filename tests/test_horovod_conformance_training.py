"""Horovod conformance, training helpers: broadcast_optimizer_state, DistributedOptimizer, join,
SyncBatchNorm and init/shutdown behave as Horovod 0.28.1's by default (quirks included), and as
ringflow's with the opt-ins (``load_root_state=True``, ``RINGFLOW_TORCH_OPTIMIZER=ringflow``).
Run at N = 2 and 3; values are checked against torch replaying Horovod's steps on one process.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ringflow.torch as hvd  # noqa: E402
from tests import reference as ref  # noqa: E402
from tests.conformance import WORLD, assert_bitwise, env  # noqa: E402

LR, DECAY = 0.1, 0.5


def _params(seed: int, rank: int) -> list[torch.nn.Parameter]:
    """Two float32 parameters that differ per rank (broadcast_parameters makes them alike)."""
    gen = ref.rng(seed, 1000 + rank)
    arrays = [gen.standard_normal(shape).astype(np.float32) for shape in ((3, 2), (2,))]
    return [torch.nn.Parameter(torch.from_numpy(a)) for a in arrays]


def _after_zero_step(params, make):
    """What Horovod's broadcast_optimizer_state does to a fresh optimizer: one step on zero
    gradients (replayed here on copies)."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = make(copies)
    for p in copies:
        p.grad = torch.zeros_like(p)
    opt.step()
    return [p.detach() for p in copies], opt.state_dict()


def _numpy_state(opt) -> dict:
    """The optimizer's per-parameter state as numpy (results travel pickled, not shared)."""
    return {
        pid: {key: v.numpy().copy() if torch.is_tensor(v) else v for key, v in entry.items()}
        for pid, entry in opt.state_dict()["state"].items()
    }


def _optimizer_state(seed: int):
    n, me, out = hvd.size(), hvd.rank(), {}
    adamw = lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=DECAY)  # noqa: E731
    # A fresh AdamW: Horovod steps it on zero gradients, which decays the parameters.
    params = _params(seed, me)
    hvd.broadcast_parameters(list(params), root_rank=n - 1)
    out["root params"] = [p.detach().numpy().copy() for p in params]
    opt = adamw(params)
    hvd.broadcast_optimizer_state(opt, root_rank=n - 1)
    out["adamw params"] = [p.detach().numpy().copy() for p in params]
    out["adamw grads"] = [None if p.grad is None else p.grad.numpy().copy() for p in params]
    out["adamw state"] = _numpy_state(opt)
    # The opt-in: nothing moves, no gradients are made.
    params = _params(seed, me)
    hvd.broadcast_parameters(list(params), root_rank=n - 1)
    opt = adamw(params)
    hvd.broadcast_optimizer_state(opt, root_rank=n - 1, load_root_state=True)
    out["root state params"] = [p.detach().numpy().copy() for p in params]
    out["root state grads"] = [p.grad for p in params]
    # Some parameters never had a gradient: their state is missing everywhere (the issue's
    # "NoneType is not a torch.Tensor"); the others' momentum comes from the root.
    params = _params(seed, me)
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9)
    (params[0] * (me + 1)).sum().backward()  # params[1] gets no gradient
    opt.step()
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    out["partial state"] = _numpy_state(opt)
    # A sparse embedding with SparseAdam, named through model= as Horovod takes it.
    model = torch.nn.Embedding(5, 2, sparse=True)
    opt = torch.optim.SparseAdam(model.parameters(), lr=LR)
    hvd.broadcast_optimizer_state(opt, root_rank=0, model=model)
    out["sparse state"] = sorted(opt.state_dict()["state"][0])
    return out


@pytest.mark.parametrize("n", WORLD)
def test_broadcast_optimizer_state(pools, n):
    seed = ref.seed_of("conformance optimizer state", n)
    results = pools.call(n, _optimizer_state, seed)
    root = [torch.from_numpy(p) for p in results[n - 1]["root params"]]
    decayed, state = _after_zero_step(
        root, lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=DECAY)
    )
    for rank, out in enumerate(results):
        context = f"rank {rank} of {n}"
        for i, (got, want) in enumerate(zip(out["adamw params"], decayed)):
            assert_bitwise(got, want.numpy(), f"{context}: parameter {i}, Horovod's decayed one")
            assert not np.array_equal(got, root[i].numpy()), f"{context}: parameter {i} stayed"
        for g in out["adamw grads"]:  # Horovod leaves its zero gradients behind
            assert_bitwise(g, np.zeros_like(g), f"{context}: gradient")
        for pid, entry in state["state"].items():
            for key, value in entry.items():
                assert_bitwise(out["adamw state"][pid][key], value.numpy(), f"{context}: {key}")
        for got, want in zip(out["root state params"], root):
            assert_bitwise(got, want.numpy(), f"{context}: load_root_state moved a parameter")
        assert out["root state grads"] == [None, None], context
        partial = out["partial state"]
        assert list(partial) == [0], f"{context}: state for {list(partial)}"
        ones = np.ones((3, 2), np.float32)  # the root's momentum buffer
        assert_bitwise(partial[0]["momentum_buffer"], ones, f"{context}: partial state")
        assert out["sparse state"] == ["exp_avg", "exp_avg_sq", "step"], context


# -- DistributedOptimizer: Horovod's semantics, and ringflow's opt-in ----------------------------


def _grads_of(seed: int, rank: int) -> list[np.ndarray]:
    """Integer-valued float32 gradients per rank: sums over ranks are exact."""
    return [
        ref.rng(seed, rank).integers(-9, 10, size=(3, 2)).astype(np.float32),
        ref.rng(seed + 1, rank).integers(-9, 10, size=2).astype(np.float32),
    ]


def _distributed(seed: int, mode: str):
    """What the optimizer does with: a parameter frozen after wrapping, one unfrozen after
    wrapping, a second synchronize with op=Sum, and gradient_predivide_factor=3 with and
    without groups (loss = sum of <p, w_r>: the gradient of p is w_r)."""
    me, out = hvd.rank(), {}
    w = [torch.from_numpy(g) for g in _grads_of(seed, me)]

    def backward(params):
        sum((p * g).sum() for p, g in zip(params, w)).backward()

    with env(RINGFLOW_TORCH_OPTIMIZER=mode):
        params = _params(seed, 0)
        params[1].requires_grad_(False)  # unfrozen after wrapping
        opt = hvd.DistributedOptimizer(
            torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=DECAY)
        )
        params[0].requires_grad_(False)  # frozen after wrapping
        params[1].requires_grad_(True)
        before = params[0].detach().clone()
        (params[1] * w[1]).sum().backward()
        opt.step()
        out["frozen moved"] = not torch.equal(params[0].detach(), before)
        out["unfrozen grad"] = params[1].grad.numpy().copy()
        params = _params(seed, 0)
        opt = hvd.DistributedOptimizer(torch.optim.SGD(params, lr=LR), op=hvd.Sum)
        backward(params)
        opt.synchronize()
        opt.synchronize()
        out["twice"] = [p.grad.numpy().copy() for p in params]
        for grouped in (False, True):
            params = _params(seed, 0)
            opt = hvd.DistributedOptimizer(
                torch.optim.SGD(params, lr=LR),
                gradient_predivide_factor=3.0,
                groups=[params[:1]] if grouped else None,  # params[1]: a group of its own
            )
            backward(params)
            opt.synchronize()
            out["predivided", grouped] = [p.grad.numpy().copy() for p in params]
    return out


@pytest.mark.parametrize("mode", ["horovod", "ringflow"])
@pytest.mark.parametrize("n", WORLD)
def test_distributed_optimizer(pools, n, mode):
    seed = ref.seed_of("conformance optimizer", n)
    results = pools.call(n, _distributed, seed, mode)
    ws = [_grads_of(seed, r) for r in range(n)]
    sums = [np.sum([w[i] for w in ws], axis=0) for i in range(2)]
    horovod = mode == "horovod"
    for rank, out in enumerate(results):
        context = f"rank {rank} of {n}, {mode}"
        # Horovod reduces a zero gradient for the frozen parameter: weight decay moves it.
        assert out["frozen moved"] is horovod, context
        unfrozen = ws[rank][1] if horovod else ref.scale(sums[1], 1 / n)
        assert_bitwise(out["unfrozen grad"], unfrozen, f"{context}: unfrozen")
        for i, g in enumerate(out["twice"]):
            want = sums[i] * n if horovod else sums[i]  # Horovod sums the sum again
            assert_bitwise(g, want, f"{context}: synchronize twice, parameter {i}")
        for grouped in (False, True):
            where = f"{context}: predivide 3, grouped {grouped}"
            for i, g in enumerate(out["predivided", grouped]):
                if grouped and horovod:  # with groups, Horovod ignores the predivide factor
                    assert_bitwise(g, ref.scale(sums[i], 1 / n), where)
                elif n == 2:  # 1/3 on each rank, one rounding in the sum, then 3/2
                    pre = [ref.scale(w[i], 1 / 3) for w in ws]
                    assert_bitwise(g, ref.scale(pre[0] + pre[1], 3 / 2), where)
                else:  # three rounded summands: order-dependent
                    np.testing.assert_allclose(g, sums[i] / n, rtol=1e-6, err_msg=where)


# -- join, SyncBatchNorm, init/shutdown -----------------------------------------------------------


def _join_and_lifecycle(seed: int):
    me, out = hvd.rank(), {}
    x = torch.from_numpy(ref.rng(seed, me).integers(-50, 50, size=7).astype(np.float32))
    if me != 0:  # rank 0 alone brings data; the others joined and count as zeros
        out["last"] = hvd.join()
    else:
        out["average"] = hvd.allreduce(x, op=hvd.Average, name="joined.average").numpy()
        ints = x.to(torch.int32)
        out["int average"] = hvd.allreduce(ints, op=hvd.Average, name="joined.int").numpy()
        out["last"] = hvd.join()
    torch.manual_seed(0)
    bn = hvd.SyncBatchNorm(3)
    batch = torch.from_numpy(ref.rng(seed, 100 + me).standard_normal((me + 2, 3, 4)))
    out["bn"] = bn(batch).detach().numpy()
    hvd.shutdown()
    out["after shutdown"] = hvd.is_initialized()
    hvd.init()
    out["after init"] = (hvd.is_initialized(), hvd.size(), hvd.rank())
    return out


@pytest.mark.parametrize("n", WORLD)
def test_join_sync_batch_norm_and_init(pools, n):
    seed = ref.seed_of("conformance join", n)
    results = pools.call(n, _join_and_lifecycle, seed)
    x0 = ref.rng(seed, 0).integers(-50, 50, size=7).astype(np.float32)
    batches = [ref.rng(seed, 100 + r).standard_normal((r + 2, 3, 4)) for r in range(n)]
    bn = torch.nn.BatchNorm1d(3).double()
    whole = bn(torch.from_numpy(np.concatenate(batches))).detach().split([r + 2 for r in range(n)])
    for rank, out in enumerate(results):
        context = f"rank {rank} of {n}"
        if rank == 0:  # Horovod: joined ranks are zeros and Average still divides by n
            assert_bitwise(out["average"], ref.scale(x0, 1 / n), f"{context}: Average")
            want = ref.scale(x0.astype(np.int32), 1 / n)
            assert_bitwise(out["int average"], want, f"{context}: integer Average")
        assert out["last"] == 0, f"{context}: rank 0 joined last, not {out['last']}"
        np.testing.assert_allclose(out["bn"], whole[rank].numpy(), rtol=1e-10, atol=1e-10)
        assert out["after shutdown"] is False and out["after init"] == (True, n, rank), context
