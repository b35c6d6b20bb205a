"""Rank-side checks of ``ringflow.torch`` on CUDA tensors.

- Every op on CUDA tensors equals, bit for bit, the same op on the same values as CPU tensors
  (the host path, which the CPU suite checks against numpy and Horovod), and returns a CUDA
  tensor on the input's device. Inputs are exact (order-independent) values.
- `DistributedOptimizer` on CUDA: N ranks, each on its shard, end within 1e-5 of one process
  training on the concatenated batch, with bit-identical parameters on every rank.
- Mixed host and device tensors in one operation (in one grouped call, or across ranks) raise
  `ringflow.InvalidArgumentError` / `MismatchError` on every rank, naming the tensor.

Every function returns a list of problems (text); empty means the check passed.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

import ringflow as rf
from tests import reference as ref
from tests.gpu import arrays
from tests.gpu.cases import same_on_all_ranks

STEPS = 10
BATCH = 4
TOL = 1e-5
COMPRESSION_TOL = 2e-3  # fp16 wire: see tests/test_torch_optimizer.py::test_compression


def _torch():
    import torch

    return torch


def _hvd():
    import ringflow.torch as hvd

    return hvd


def _cuda(host: np.ndarray, device: int):
    return arrays.to_device(host, "torch", device)


def _bits_safe(host: np.ndarray) -> np.ndarray:
    return host.view(np.int16) if host.dtype == ref.BFLOAT16 else host


def _host_tensor(host: np.ndarray):
    """A CPU torch tensor with host's values (bfloat16 through its bits)."""
    torch = _torch()
    tensor = torch.from_numpy(np.ascontiguousarray(_bits_safe(host)).copy())
    return tensor.view(torch.bfloat16) if host.dtype == ref.BFLOAT16 else tensor


def _as_numpy(tensor) -> np.ndarray:
    return arrays.to_host(tensor)


def _compare(problems: list[str], what: str, got, expected, device: int) -> None:
    """got (CUDA) against expected (CPU result of the same call), bit for bit."""
    kind = arrays.kind_problem(got, "torch", device, what)
    if kind:
        problems.append(kind)
        return
    a, b = _as_numpy(got), _as_numpy(expected)
    if a.shape != b.shape or a.dtype != b.dtype:
        problems.append(f"{what}: {a.dtype}{a.shape} != host path {b.dtype}{b.shape}")
    elif not np.array_equal(ref.bits(a), ref.bits(b)):
        wrong = int(np.count_nonzero(ref.bits(a) != ref.bits(b)))
        problems.append(f"{what}: {wrong} of {a.size} elements differ from the host path")


def _outcome(call) -> tuple[Any, BaseException | None]:
    """(value, None) or (None, the exception); errors that poison the job propagate."""
    try:
        return call(), None
    except (rf.PeerFailureError, rf.TimeoutError):
        raise
    except Exception as error:
        return None, error


def _same_as_host(problems: list[str], what: str, on_device, on_host, device: int) -> Any:
    """Run a call on the CUDA tensors, then on their CPU copies: the same values, or the same
    kind of error (e.g. an op Horovod refuses); returns the device result (None on errors)."""
    got, got_error = _outcome(on_device)
    want, want_error = _outcome(on_host)
    if got_error is not None or want_error is not None:
        if type(got_error) is not type(want_error):
            problems.append(
                f"{what}: device path {type(got_error).__name__}: {got_error} but host path "
                f"{type(want_error).__name__}: {want_error}"
            )
        return None
    if isinstance(want, tuple):  # alltoall with splits: (output, received splits)
        _compare(problems, what, got[0], want[0], device)
        if _as_numpy(got[1]).tolist() != _as_numpy(want[1]).tolist():
            problems.append(f"{what}: received splits differ from the host path")
    else:
        _compare(problems, what, got, want, device)
    return got


def ops_match_host(dtype_name: str, size: int) -> list[str]:
    """Every ringflow.torch op on a CUDA tensor == the same op on the CPU copy, bit for bit."""
    hvd, torch = _hvd(), _torch()
    device = arrays.select_device(rf.local_rank())
    n, rank = rf.size(), rf.rank()
    seed = ref.seed_of("torch-cuda", dtype_name, size, n)
    problems: list[str] = []
    tag = f"{dtype_name} size {size}"

    def check(what: str, call, host: np.ndarray) -> Any:
        """call(tensor, name) on a CUDA copy of host and on a CPU copy of it."""
        dev, cpu = _cuda(host, device), _host_tensor(host)
        name = f"t.{what}.{tag}".replace(" ", "_")
        result = _same_as_host(
            problems,
            f"{what} {tag}",
            lambda: call(dev, name),
            lambda: call(cpu, name + ".h"),
            device,
        )
        if what.split()[0].endswith("_") and result is not None and result is not dev:
            problems.append(f"{what} {tag}: did not return its argument")
        return result

    for op_name in ref.OPS:
        op = getattr(hvd, op_name)
        exact = ref.exact_input(seed, rank, (size,), dtype_name, op_name)
        check(f"allreduce {op_name}", lambda t, nm, o=op: hvd.allreduce(t, op=o, name=nm), exact)
        check(f"allreduce_ {op_name}", lambda t, nm, o=op: hvd.allreduce_(t, op=o, name=nm), exact)
        check(
            f"reducescatter {op_name}",
            lambda t, nm, o=op: hvd.reducescatter(t, op=o, name=nm),
            exact,
        )
    if dtype_name in ref.FLOAT_DTYPES:
        exact = ref.exact_input(seed, rank, (size,), dtype_name, "Sum")
        for factor in ("prescale_factor", "postscale_factor"):
            scaling = {factor: 0.5 if factor == "prescale_factor" else 4.0}
            check(
                f"allreduce {factor}",
                lambda t, nm, sc=scaling: hvd.allreduce(t, op=hvd.Sum, name=nm, **sc),
                exact,
            )

    hosts = [ref.exact_input(seed + i, rank, (size + i,), dtype_name, "Sum") for i in range(3)]
    devs, cpus = [_cuda(h, device) for h in hosts], [_host_tensor(h) for h in hosts]
    got, error = _outcome(lambda: hvd.grouped_allreduce(devs, op=hvd.Sum, name=f"t.g.{tag}"))
    want, host_error = _outcome(
        lambda: hvd.grouped_allreduce(cpus, op=hvd.Sum, name=f"t.g.{tag}.h")
    )
    if error or host_error:
        problems.append(f"grouped_allreduce {tag}: device {error!r}, host {host_error!r}")
    else:
        for i, (a, b) in enumerate(zip(got, want)):
            _compare(problems, f"grouped_allreduce[{i}] {tag}", a, b, device)

    uneven = ref.bit_patterns(seed, rank, (size + rank, 2), dtype_name)
    check("allgather", lambda t, nm: hvd.allgather(t, name=nm), uneven)
    patterns = ref.bit_patterns(seed, rank, (size,), dtype_name)
    root = n - 1
    check("broadcast", lambda t, nm: hvd.broadcast(t, root, name=nm), patterns)
    check("broadcast_", lambda t, nm: hvd.broadcast_(t, root, name=nm), patterns)
    splits = torch.tensor(ref.alltoall_splits(seed, rank, n, size))
    check("alltoall", lambda t, nm: hvd.alltoall(t, splits=splits, name=nm), patterns)
    return problems


def compression_matches_host(compression: str) -> list[str]:
    """float32 CUDA tensors through fp16/bf16 compression == the host path: bit for bit at two
    ranks, within the compression tolerance beyond."""
    hvd = _hvd()
    device = arrays.select_device(rf.local_rank())
    seed = ref.seed_of("torch-cuda-compression", compression, rf.size())
    host = ref.positive_input(seed, rf.rank(), (1023,), "float32")
    chosen = getattr(hvd.Compression, compression)
    problems: list[str] = []
    what = f"allreduce compression={compression}"
    got = hvd.allreduce(_cuda(host, device), compression=chosen, name=f"t.comp.{compression}")
    expected = hvd.allreduce(
        _host_tensor(host), compression=chosen, name=f"t.comp.{compression}.host"
    )
    if rf.size() <= 2:
        _compare(problems, what, got, expected, device)
        return problems
    # Beyond two ranks the 16-bit sums differ in their last bits: the device path folds every
    # rank in float32 and rounds once, the host ring rounds after each addition (README, "GPU").
    a, b = _as_numpy(got).astype(np.float64), _as_numpy(expected).astype(np.float64)
    tolerance = COMPRESSION_TOL if compression == "fp16" else 16 * 2.0**-10  # 2 bf16 ulps
    if not np.allclose(a, b, rtol=tolerance, atol=0):
        worst = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))
        problems.append(f"{what}: relative difference {worst:.2e} from the host path")
    return problems


# -- DistributedOptimizer ------------------------------------------------------------------------


def _model(seed: int, device: str):
    torch = _torch()
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(
        torch.float64
    )
    return net.to(device)


def _train(kind: str, seed: int, passes: int, compression: str) -> tuple[float, Any]:
    torch, hvd = _torch(), _hvd()
    device = arrays.torch_device(arrays.select_device(rf.local_rank()))
    n, rank = rf.size(), rf.rank()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(STEPS, n * BATCH, 6, generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(STEPS, n * BATCH, 3, generator=gen, dtype=torch.float64).to(device)
    dtype = torch.float32 if compression != "none" else torch.float64
    x, y = x.to(dtype), y.to(dtype)
    reference = _model(seed, device).to(dtype)
    model = copy.deepcopy(reference)

    def make(params):
        if kind == "adam":
            return torch.optim.Adam(params, lr=0.01)
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    ref_opt = make(reference.parameters())
    opt = hvd.DistributedOptimizer(
        make(model.parameters()),
        named_parameters=model.named_parameters(),
        backward_passes_per_step=passes,
        compression=getattr(hvd.Compression, compression),
    )
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    loss = torch.nn.functional.mse_loss
    for step in range(STEPS):
        ref_opt.zero_grad()
        loss(reference(x[step]), y[step]).backward()
        ref_opt.step()
        opt.zero_grad()
        for xs, ys in zip(x[step][mine].chunk(passes), y[step][mine].chunk(passes)):
            (loss(model(xs), ys) / passes).backward()
        opt.step()
    diff = max(
        float((p - q).detach().abs().max())
        for p, q in zip(model.parameters(), reference.parameters())
    )
    params = np.concatenate([p.detach().double().cpu().numpy().ravel() for p in model.parameters()])
    return diff, params


def optimizer_matches_one_process(
    kind: str, passes: int = 1, compression: str = "none"
) -> list[str]:
    """DistributedOptimizer on CUDA vs one process on the concatenated batch (1e-5)."""
    seed = ref.seed_of("optimizer-cuda", kind, passes, compression)
    diff, params = _train(kind, seed, passes, compression)
    tol = TOL if compression == "none" else COMPRESSION_TOL
    what = f"DistributedOptimizer {kind} passes={passes} compression={compression}"
    problems = []
    if not diff <= tol:
        problems.append(f"{what}: parameters {diff:.3g} from one-process training (> {tol})")
    differ = same_on_all_ranks(params, f"opt.{kind}.{passes}.{compression}")
    if differ:
        problems.append(f"{what}: {differ}")
    return problems


# -- mixed host and device -----------------------------------------------------------------------


def _expect_error(problems: list[str], what: str, name: str, call) -> None:
    try:
        call()
    except (rf.InvalidArgumentError, rf.MismatchError) as error:
        if name not in str(error):
            problems.append(f"{what}: the error does not name tensor '{name}': {error}")
    except Exception as error:
        problems.append(
            f"{what}: raised {type(error).__name__} (expected InvalidArgumentError "
            f"or MismatchError): {error}"
        )
    else:
        problems.append(f"{what}: no error")


def mixed_host_and_device(framework: str) -> list[str]:
    """Host and device tensors in one operation fail on every rank, naming the tensor."""
    device = arrays.select_device(rf.local_rank())
    rank, problems = rf.rank(), []
    host = np.arange(7, dtype=np.float32)
    dev = arrays.to_device(host, framework, device)
    _expect_error(
        problems,
        "grouped_allreduce([device, host])",
        "mixed.grouped",
        lambda: rf.grouped_allreduce([dev, host.copy()], op=rf.Sum, name="mixed.grouped"),
    )
    if rf.size() > 1:  # rank 0 passes device memory, the others host memory, under one name
        mine = dev if rank == 0 else host.copy()
        _expect_error(
            problems,
            "allreduce with device memory on rank 0 only",
            "mixed.across",
            lambda: rf.allreduce(mine, op=rf.Sum, name="mixed.across"),
        )
    # The job must still work afterwards: user errors never poison it.
    after = rf.allreduce(arrays.to_device(host, framework, device), op=rf.Sum, name="mixed.after")
    got = arrays.to_host(after)
    if not np.array_equal(got, host * rf.size()):
        problems.append("an allreduce after the mixed-memory errors gave wrong values")
    return [f"rank {rank}: {p}" for p in problems]
