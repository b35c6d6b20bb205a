"""ringflow.torch's helpers: broadcast_parameters, broadcast_optimizer_state, broadcast_object,
allgather_object, SyncBatchNorm, Compression, and Horovod's names and capability queries."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest

torch = pytest.importorskip("torch")

import ringflow as rf  # noqa: E402
import ringflow.torch as hvd  # noqa: E402


def _shipped(fn):
    """Run fn on the ranks and return their values: torch tensors travel as plain pickles (the
    harness's multiprocessing pickler would try to share their memory)."""

    def call(pools, n, *args):
        return [pickle.loads(v) for v in pools.call(n, _ship, fn, *args)]

    return call


def _ship(fn, *args):
    return pickle.dumps(fn(*args))


# -- broadcast_parameters and broadcast_optimizer_state ---------------------------------------


def _model(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )


def _optimizer(name: str, model, rank: int):
    """Options differ per rank (rank >= 0): the root's must win; rank -1: rank 0's structure
    with the same options everywhere."""
    if rank < 0:
        return _optimizer(name, model, 0)
    lr = 0.01 * (rank + 1)
    params = [
        {"params": model[0].parameters()},
        {"params": list(model[1].parameters()) + list(model[2].parameters()), "lr": lr / 2},
    ]
    return {
        "SGD": lambda: torch.optim.SGD(params, lr=lr, momentum=0.5 + 0.1 * rank),
        "Adam": lambda: torch.optim.Adam(params, lr=lr, betas=(0.8, 0.9 + 0.01 * rank)),
        "AdamW": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=0.1 * (rank + 1)),
        "RMSprop": lambda: torch.optim.RMSprop(params, lr=lr, momentum=0.2, centered=rank == 0),
    }[name]()


def _step(model, optimizer, seed: int) -> None:
    torch.manual_seed(seed)
    optimizer.zero_grad()
    model(torch.randn(5, 3)).pow(2).sum().backward()
    optimizer.step()


def _broadcast_state(name: str, root: int, steps: list[int], load_root_state: bool):
    """Ranks diverge (seeds, number of steps: 0 means no state yet; options too with
    load_root_state), then take root's model and optimizer; returns the optimizer state and
    the parameters after one more step."""
    me = hvd.rank()
    model = _model(me)
    optimizer = _optimizer(name, model, me if load_root_state else -1)
    for i in range(steps[me]):
        _step(model, optimizer, 100 * me + i)
    if load_root_state:
        for p in model[0].parameters():  # a scalar (non-tensor) state entry of our own
            if p in optimizer.state:
                optimizer.state[p]["custom"] = 7 + me
    before = copy.deepcopy(optimizer.state_dict())
    hvd.broadcast_parameters(model.state_dict(), root_rank=root)
    hvd.broadcast_optimizer_state(optimizer, root_rank=root, load_root_state=load_root_state)
    after = copy.deepcopy(optimizer.state_dict())
    _step(model, optimizer, 999)  # the same batch everywhere: the loaded state must be usable
    return before, after, [p.detach().clone() for p in model.parameters()]


def _same(a, b, where: str) -> None:
    """Deep equality of state dicts: tensors bitwise (dtype and shape too), others by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {b!r}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b}"
        assert torch.equal(a, b), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
@pytest.mark.parametrize(
    ("root", "steps"),
    [(1, [0, 2, 1]), (0, [0, 0, 0])],
    ids=["root-stepped-others-fresh-or-behind", "all-fresh"],
)
def test_broadcast_optimizer_state_load_root_state(pools, name, root, steps):
    """The opt-in: root's state loaded as it is, no step on zero gradients."""
    results = _shipped(_broadcast_state)(pools, 3, name, root, steps, True)
    root_before = results[root][0]
    if steps[root]:
        assert root_before["state"], "the root should have state to give"
    for rank, (_, after, params) in enumerate(results):
        _same(after, root_before, f"rank {rank}, {name} state_dict")
        for i, (p, q) in enumerate(zip(params, results[root][2])):
            assert torch.equal(p, q), f"rank {rank}: parameter {i} differs from the root's"


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
@pytest.mark.parametrize(
    ("root", "steps"),
    [(1, [1, 2, 1]), (0, [0, 0, 0])],
    ids=["all-stepped", "all-fresh"],
)
def test_broadcast_optimizer_state_horovod(pools, name, root, steps):
    """Horovod's default: fresh optimizers step once on zero gradients (the root too), then
    root's state tensors and options overwrite everyone's. (Options alike on every rank: with
    per-rank weight decay, fresh ranks' parameters decay differently, as in Horovod; with a
    different state structure, Horovod's ranks wait for tensors the others never send.)"""
    results = _shipped(_broadcast_state)(pools, 3, name, root, steps, False)
    root_after = results[root][1]
    assert root_after["state"], "every optimizer here keeps state"
    for rank, (_, after, params) in enumerate(results):
        _same(after, root_after, f"rank {rank}, {name} state_dict")
        for i, (p, q) in enumerate(zip(params, results[root][2])):
            assert torch.equal(p, q), f"rank {rank}: parameter {i} differs from the root's"


def _broadcast_parameters(form: str):
    me = hvd.rank()
    model = _model(me)
    if form == "state_dict":
        hvd.broadcast_parameters(model.state_dict(), root_rank=1)
    elif form == "named_parameters":
        hvd.broadcast_parameters(model.named_parameters(), root_rank=1)
    else:
        hvd.broadcast_parameters(list(model.parameters()), root_rank=1)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("form", ["state_dict", "named_parameters", "parameters"])
def test_broadcast_parameters(pools, form):
    results = _shipped(_broadcast_parameters)(pools, 2, form)
    reference = {k: v for k, v in _model(1).state_dict().items()}
    for rank, state in enumerate(results):
        for key, value in state.items():
            buffer = "running" in key or "num_batches" in key
            if form != "state_dict" and buffer:
                continue  # parameters only: buffers keep their own (equal) initial values
            assert torch.equal(value, reference[key]), f"rank {rank}: {key} ({form})"


# -- objects ------------------------------------------------------------------------------------


def _objects():
    me = hvd.rank()
    obj = {"rank": me, "tensor": torch.arange(3) * me} if me == 1 else None
    got = hvd.broadcast_object(obj, root_rank=1)
    gathered = hvd.allgather_object(list(range(me + 1)))
    return got["rank"], got["tensor"].tolist(), gathered


def test_objects(pools):
    for rank, (root, tensor, gathered) in enumerate(_shipped(_objects)(pools, 3)):
        assert (root, tensor) == (1, [0, 1, 2]), f"rank {rank}"
        assert gathered == [[0], [0, 1], [0, 1, 2]], f"rank {rank}"


def _unpicklable(which: str):
    me = hvd.rank()
    outcome = []
    obj = threading.Lock() if me == 1 else 1  # lambdas pickle (cloudpickle), locks do not
    for call in (
        lambda: hvd.broadcast_object(obj, root_rank=1),
        lambda: hvd.allgather_object(obj),
    ):
        try:
            call()
            outcome.append("returned")
        except rf.InvalidArgumentError as error:
            outcome.append(str(error))
    return outcome


def test_unpicklable_object_fails_every_rank(pools):
    for rank, (bcast, gather) in enumerate(pools.call(2, _unpicklable, "lock")):
        assert "cannot be pickled" in bcast, f"rank {rank}: {bcast}"
        assert "ranks [1]" in gather, f"rank {rank}: {gather}"


# -- SyncBatchNorm ------------------------------------------------------------------------------

BN_SHAPES = {1: (4, 5), 2: (4, 3, 2)}  # (C, L) for BatchNorm1d, (C, H, W) for BatchNorm2d


def _batches(dims: int, rank: int, step: int):
    """Rank r brings r + 2 samples (uneven), offset and scaled so mean/var matter."""
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank + dims)
    x = torch.randn((rank + 2, *BN_SHAPES[dims]), generator=gen) * 3 + 1.5
    w = torch.randn(x.shape, generator=gen)
    return x, w


def _sync_bn(dims: int):
    me = hvd.rank()
    torch.manual_seed(0)
    bn = hvd.SyncBatchNorm(BN_SHAPES[dims][0], momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    out = []
    for step in range(2):
        x, w = _batches(dims, me, step)
        x.requires_grad_()
        bn.zero_grad()
        y = bn(x)
        (y * w).sum().backward()
        out.append((y.detach(), x.grad, bn.weight.grad.clone(), bn.bias.grad.clone()))
    bn.eval()
    x, _ = _batches(dims, me, 5)
    return out, bn.running_mean, bn.running_var, bn(x).detach()


@pytest.mark.parametrize("dims", [1, 2])
def test_sync_batch_norm(pools, dims):
    """Equal to torch's BatchNorm on the concatenated batch within 1e-5 (float32: the outputs
    are O(1), and both sides accumulate a few dozen terms; ours in float64)."""
    n = 3
    results = _shipped(_sync_bn)(pools, n, dims)
    torch.manual_seed(0)
    cls = torch.nn.BatchNorm1d if dims == 1 else torch.nn.BatchNorm2d
    bn = cls(BN_SHAPES[dims][0], momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    close = {"rtol": 1e-5, "atol": 1e-5}
    rows = [r + 2 for r in range(n)]
    for step in range(2):
        parts = [_batches(dims, r, step) for r in range(n)]
        x = torch.cat([p[0] for p in parts]).requires_grad_()
        w = torch.cat([p[1] for p in parts])
        bn.zero_grad()
        y = bn(x)
        (y * w).sum().backward()
        ys, gxs = y.detach().split(rows), x.grad.split(rows)
        for rank, (out, *_) in enumerate(results):
            got_y, got_gx, _, _ = out[step]
            torch.testing.assert_close(got_y, ys[rank], **close, msg=f"rank {rank} output")
            torch.testing.assert_close(got_gx, gxs[rank], **close, msg=f"rank {rank} input grad")
        weight_grad = sum(res[0][step][2] for res in results)
        bias_grad = sum(res[0][step][3] for res in results)
        torch.testing.assert_close(weight_grad, bn.weight.grad, **close)
        torch.testing.assert_close(bias_grad, bn.bias.grad, **close)
    bn.eval()
    for rank, (_, mean, var, evaluated) in enumerate(results):
        torch.testing.assert_close(mean, bn.running_mean, **close, msg=f"rank {rank}")
        torch.testing.assert_close(var, bn.running_var, **close, msg=f"rank {rank}")
        x, _ = _batches(dims, rank, 5)
        torch.testing.assert_close(evaluated, bn(x).detach(), **close, msg=f"rank {rank}")


# -- compression, names, capabilities -------------------------------------------------------------


def _compressed(name: str):
    x = (torch.arange(11, dtype=torch.float32) - 5.5) * (hvd.rank() + 1) / 7  # no zeros
    compression = getattr(hvd.Compression, name)
    return hvd.allreduce(x, op=hvd.Sum, compression=compression), x


@pytest.mark.parametrize(("name", "rtol"), [("none", 0.0), ("fp16", 2**-10), ("bf16", 2**-7)])
def test_compression_allreduce(pools, name, rtol):
    """Each rank rounds once to 16 bits, each sum of two rounds once more: 2 eps relative to the
    result covers both (inputs have the result's sign)."""
    results = _shipped(_compressed)(pools, 2, name)
    expected = sum(x for _, x in results)
    for rank, (out, _) in enumerate(results):
        assert out.dtype == torch.float32, f"rank {rank}: {out.dtype}"
        torch.testing.assert_close(out, expected, rtol=2 * rtol, atol=0, msg=f"rank {rank}")


def test_compressors_leave_integers_alone():
    for compressor in (hvd.Compression.none, hvd.Compression.fp16, hvd.Compression.bf16):
        t = torch.arange(4)
        packed, ctx = compressor.compress(t)
        assert packed is t and compressor.decompress(packed, ctx) is t
    packed, ctx = hvd.Compression.fp16.compress(torch.ones(2, dtype=torch.float64))
    assert packed.dtype == torch.float16
    assert hvd.Compression.fp16.decompress(packed, ctx).dtype == torch.float64


def test_horovod_names():
    assert hvd.HorovodInternalError is rf.Error
    assert issubclass(rf.PeerFailureError, hvd.HorovodInternalError)
    assert hvd.HostsUpdatedInterrupt(skip_sync=True).skip_sync
    for query in (
        "mpi_built",
        "mpi_enabled",
        "gloo_built",
        "gloo_enabled",
        "ddl_built",
        "ccl_built",
        "rocm_built",
    ):
        assert getattr(hvd, query)() is False, query
    assert hvd.cuda_built() is rf.cuda_built()
    assert hvd.nccl_built() == 0 and type(hvd.nccl_built()) is int  # Horovod: NCCL's version
    with pytest.raises(ValueError, match="MPI is not enabled"):
        hvd.mpi_threads_supported()
    missing = [name for name in hvd.__all__ if not hasattr(hvd, name)]
    assert not missing, missing
    ops = (hvd.Average, hvd.Sum, hvd.Adasum, hvd.Min, hvd.Max, hvd.Product)
    assert ops == (0, 1, 2, 3, 4, 5), ops  # Horovod's integers
    assert hvd.ProcessSet is rf.ProcessSet
    assert hvd.sparse_as_dense(torch.eye(2).to_sparse()).layout == torch.strided


def _process_set():
    me = hvd.rank()
    ps = hvd.add_process_set([0, 2])
    out = None
    if me in (0, 2):
        out = hvd.allreduce(torch.tensor([float(me)]), op=hvd.Sum, process_set=ps).tolist()
        out += hvd.broadcast(torch.tensor([me]), root_rank=2, process_set=ps).tolist()
    hvd.remove_process_set(ps)
    return out


def test_process_set(pools):
    assert pools.call(3, _process_set) == [[2.0, 2], None, [2.0, 2]]
