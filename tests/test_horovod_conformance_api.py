"""Horovod conformance, API shapes: every name horovod.torch 0.28.1 exports exists in
``ringflow.torch`` with Horovod's parameters (names, order, defaults), returns what Horovod's
returns, and fails with Horovod's exception types and messages where ringflow does not support
something. Run at N = 2 and 3.

The signatures below are written from Horovod 0.28.1's horovod/torch/{mpi_ops,functions,
optimizer,sync_batch_norm}.py and horovod/common/basics.py. ringflow may add parameters after
Horovod's (process_set=, load_root_state=); it must not move, rename or re-default Horovod's.
"""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ringflow.torch as hvd  # noqa: E402
from tests.conformance import WORLD  # noqa: E402

R = object()  # a required parameter
NONE, PS, AVG = hvd.Compression.none, hvd.global_process_set, hvd.Average
_AR = [("average", None), ("name", None), ("op", None)]
_SCALE = [("prescale_factor", 1.0), ("postscale_factor", 1.0), ("process_set", PS)]
_ARC = [("average", None), ("name", None), ("compression", NONE), ("op", None)]
_RS = [("name", None), ("op", AVG), ("process_set", PS), *_SCALE[:2]]
_RSC = [("name", None), ("compression", NONE), ("op", AVG), ("process_set", PS), *_SCALE[:2]]
SIGNATURES = {
    "allreduce": [("tensor", R), *_ARC, *_SCALE],
    "allreduce_async": [("tensor", R), *_AR, *_SCALE],
    "allreduce_": [("tensor", R), *_AR, *_SCALE],
    "allreduce_async_": [("tensor", R), *_AR, *_SCALE],
    "grouped_allreduce": [("tensors", R), *_ARC, *_SCALE],
    "grouped_allreduce_async": [("tensors", R), *_AR, *_SCALE],
    "grouped_allreduce_": [("tensors", R), *_AR, *_SCALE],
    "grouped_allreduce_async_": [("tensors", R), *_AR, *_SCALE],
    "sparse_allreduce_async": [("tensor", R), ("name", R), ("op", R), ("process_set", PS)],
    "allgather": [("tensor", R), ("name", None), ("process_set", PS)],
    "allgather_async": [("tensor", R), ("name", None), ("process_set", PS)],
    "grouped_allgather": [("tensors", R), ("name", None), ("process_set", PS)],
    "grouped_allgather_async": [("tensors", R), ("name", None), ("process_set", PS)],
    "broadcast": [("tensor", R), ("root_rank", R), ("name", None), ("process_set", PS)],
    "broadcast_async": [("tensor", R), ("root_rank", R), ("name", None), ("process_set", PS)],
    "broadcast_": [("tensor", R), ("root_rank", R), ("name", None), ("process_set", PS)],
    "broadcast_async_": [("tensor", R), ("root_rank", R), ("name", None), ("process_set", PS)],
    "alltoall": [("tensor", R), ("splits", None), ("name", None), ("process_set", PS)],
    "alltoall_async": [("tensor", R), ("splits", None), ("name", None), ("process_set", PS)],
    "reducescatter": [("tensor", R), *_RSC],
    "reducescatter_async": [("tensor", R), *_RS],
    "grouped_reducescatter": [("tensors", R), *_RSC],
    "grouped_reducescatter_async": [("tensors", R), *_RS],
    "join": [("device", -1)],
    "barrier": [("process_set", PS)],
    "poll": [("handle", R)],
    "synchronize": [("handle", R)],
    "init": [("comm", None), ("process_sets", None)],
    "shutdown": [],
    "is_initialized": [],
    "start_timeline": [("file_path", R), ("mark_cycles", False)],
    "stop_timeline": [],
    "add_process_set": [("process_set", R)],
    "remove_process_set": [("process_set", R)],
    "broadcast_parameters": [("params", R), ("root_rank", R)],
    "broadcast_optimizer_state": [("optimizer", R), ("root_rank", R), ("model", None)],
    "broadcast_object": [("obj", R), ("root_rank", 0), ("name", None), ("process_set", PS)],
    "allgather_object": [("obj", R), ("name", None)],
    "DistributedOptimizer": [
        ("optimizer", R),
        ("named_parameters", None),
        ("compression", NONE),
        ("backward_passes_per_step", 1),
        ("op", AVG),
        ("gradient_predivide_factor", 1.0),
        ("num_groups", 0),
        ("groups", None),
        ("sparse_as_dense", False),
        ("process_set", PS),
    ],
}
QUERIES = ["size", "local_size", "cross_size", "rank", "local_rank", "cross_rank"]
QUERIES += ["mpi_threads_supported", "mpi_enabled", "mpi_built", "gloo_enabled", "gloo_built"]
QUERIES += ["nccl_built", "ddl_built", "ccl_built", "cuda_built", "rocm_built"]
OTHER_NAMES = ["Average", "Sum", "Adasum", "Min", "Max", "Product", "ProcessSet"]
OTHER_NAMES += ["global_process_set", "HorovodInternalError", "SyncBatchNorm", "Compression"]
HOROVOD_TORCH_API = [*SIGNATURES, *QUERIES, *OTHER_NAMES]
"""Every name ``horovod/torch/__init__.py`` 0.28.1 imports, but its ``elastic`` module."""


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_signature(name):
    params = list(inspect.signature(getattr(hvd, name)).parameters.values())
    for i, (expected, default) in enumerate(SIGNATURES[name]):
        assert i < len(params), f"{name}: no parameter {expected!r} at position {i}"
        p = params[i]
        assert p.name == expected, f"{name}: parameter {i} is {p.name!r}, Horovod's {expected!r}"
        assert p.kind == p.POSITIONAL_OR_KEYWORD, f"{name}({expected}): {p.kind}"
        if default is not R:
            assert p.default is default or p.default == default, f"{name}({expected})={p.default!r}"
    for p in params[len(SIGNATURES[name]) :]:  # ringflow's additions: optional
        assert p.default is not p.empty or p.kind == p.VAR_KEYWORD, f"{name}: {p.name} required"


def test_every_horovod_name_is_exported_and_conformance_tested():
    missing = [name for name in HOROVOD_TORCH_API if not hasattr(hvd, name)]
    assert not missing, missing
    sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_horovod_conf*.py"))
    called = set(re.findall(r"hvd\.(\w+)", sources)) | set(QUERIES)  # _shapes calls those
    untested = [name for name in HOROVOD_TORCH_API if name not in called]
    assert not untested, f"no conformance test uses {untested}"
    assert (hvd.Average, hvd.Sum, hvd.Adasum, hvd.Min, hvd.Max, hvd.Product) == (0, 1, 2, 3, 4, 5)
    assert issubclass(hvd.HorovodInternalError, RuntimeError)


# -- return types and errors, on every rank ---------------------------------------------------


def _caught(fn):
    """(exception type name, message) of what fn raises, with the warnings it gave."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            value = fn()
            outcome = ("returned", type(value).__name__)
        except Exception as error:
            kind = "HorovodInternalError" if isinstance(error, hvd.HorovodInternalError) else ""
            outcome = (type(error).__name__, kind, str(error))
    return outcome, [(w.category.__name__, str(w.message)) for w in records]


def _shapes(timeline: str):
    n, me = hvd.size(), hvd.rank()
    hvd.start_timeline(timeline)
    t = torch.arange(2.0 * n)
    out = {}
    out["allreduce"] = type(hvd.allreduce(t)).__name__
    y = t.clone()
    out["allreduce_ returns it"] = hvd.allreduce_(y) is y
    y = t.clone()
    out["broadcast_ returns it"] = hvd.broadcast_(y, 0) is y
    handles = {
        "allreduce_async": hvd.allreduce_async(t),
        "allreduce_async_": hvd.allreduce_async_(t.clone()),
        "grouped_allreduce_async": hvd.grouped_allreduce_async([t, t]),
        "grouped_allreduce_async_": hvd.grouped_allreduce_async_([t.clone(), t.clone()]),
        "allgather_async": hvd.allgather_async(t),
        "grouped_allgather_async": hvd.grouped_allgather_async([t, t]),
        "broadcast_async": hvd.broadcast_async(t, 0),
        "broadcast_async_": hvd.broadcast_async_(t.clone(), 0),
        "alltoall_async": hvd.alltoall_async(t),
        "reducescatter_async": hvd.reducescatter_async(t),
        "grouped_reducescatter_async": hvd.grouped_reducescatter_async([t, t]),
    }
    for key, handle in handles.items():
        result = hvd.synchronize(handle)
        out[key] = (type(hvd.poll(handle)).__name__, type(result).__name__)
        if isinstance(result, (list, tuple)):
            out[key] += tuple(type(r).__name__ for r in result)
    out["grouped_allreduce"] = type(hvd.grouped_allreduce([t])).__name__
    out["grouped_allreduce_"] = type(hvd.grouped_allreduce_([t.clone()])).__name__
    out["grouped_allgather"] = type(hvd.grouped_allgather([t])).__name__
    out["grouped_reducescatter"] = type(hvd.grouped_reducescatter([t])).__name__
    out["allgather"] = tuple(hvd.allgather(t).shape)
    out["broadcast"] = hvd.broadcast(t + me, 1).tolist()
    out["reducescatter"] = tuple(hvd.reducescatter(t).shape)
    out["alltoall"] = type(hvd.alltoall(t)).__name__
    _, splits = hvd.alltoall(t, splits=[2] * n)
    out["alltoall splits"] = (splits.dtype, splits.tolist())
    fewer, _ = hvd.alltoall(t + me, splits=[1] * n)  # Horovod sends the first sum(splits) rows
    out["alltoall fewer rows"] = fewer.tolist()
    sparse = torch.sparse_coo_tensor([[me]], [1.0], (n,))
    handle = hvd.sparse_allreduce_async(sparse, "sparse", hvd.Sum)
    out["sparse callable"] = callable(handle)
    out["sparse"] = handle().to_dense().tolist()
    out["barrier"] = hvd.barrier()
    out["barrier(process_set)"] = hvd.barrier(process_set=hvd.global_process_set)
    out["broadcast_object"] = hvd.broadcast_object(lambda v: v + me, root_rank=1)(10)
    out["allgather_object"] = hvd.allgather_object({"rank": me})
    ps = hvd.add_process_set(hvd.ProcessSet([0, 1]))
    out["process set"] = (ps.size(), ps.included(), hvd.remove_process_set(ps))
    out["remove again"] = hvd.remove_process_set(ps)
    out["remove global"] = hvd.remove_process_set(hvd.global_process_set)
    out["queries"] = [
        type(getattr(hvd, q)()).__name__ for q in QUERIES if q != "mpi_threads_supported"
    ]
    out["is_initialized"] = hvd.is_initialized()
    out["join"] = hvd.join()
    out["stop_timeline"] = hvd.stop_timeline()
    return out


@pytest.mark.parametrize("n", WORLD)
def test_return_types(pools, n, tmp_path):
    timeline = tmp_path / "timeline.json"
    for rank, out in enumerate(pools.call(n, _shapes, str(timeline))):
        context = f"rank {rank} of {n}"
        assert out["allreduce"] == "Tensor" and out["allreduce_ returns it"], context
        assert out["broadcast_ returns it"], context
        assert out["allreduce_async"] == ("bool", "Tensor"), (context, out)
        assert out["grouped_allreduce_async"] == ("bool", "list", "Tensor", "Tensor"), context
        assert out["alltoall_async"] == ("bool", "tuple", "Tensor", "Tensor"), context
        for key in ("grouped_allreduce", "grouped_allreduce_", "grouped_allgather"):
            assert out[key] == "list", (context, key, out[key])
        assert out["grouped_reducescatter"] == "list", context
        assert out["allgather"] == (2 * n * n,) and out["alltoall"] == "Tensor", context
        assert out["broadcast"] == [1.0 + i for i in range(2 * n)], context
        assert out["reducescatter"] == (2,), context
        assert out["alltoall splits"] == (torch.int32, [2] * n), context
        assert out["alltoall fewer rows"] == [float(src + rank) for src in range(n)], context
        assert out["sparse callable"] and out["sparse"] == [1.0] * n, context
        assert out["barrier"] is None and out["barrier(process_set)"] is None, context
        assert out["broadcast_object"] == 11, context  # a lambda: cloudpickle, as Horovod
        assert out["allgather_object"] == [{"rank": r} for r in range(n)], context
        assert out["process set"] == (2, rank < 2, True), context
        assert out["remove again"] is False and out["remove global"] is False, context
        assert out["queries"] == ["int"] * 6 + ["bool"] * 4 + ["int"] + ["bool"] * 4, out
        assert out["is_initialized"] is True and out["join"] in range(n), context
        assert out["stop_timeline"] is None, context
    assert timeline.exists(), "start_timeline wrote nothing"


def _errors():
    t = torch.ones(4)
    calls = {
        "allreduce Adasum": lambda: hvd.allreduce(t, op=hvd.Adasum),
        "grouped_allreduce Adasum": lambda: hvd.grouped_allreduce([t], op=hvd.Adasum),
        "reducescatter Adasum": lambda: hvd.reducescatter(t, op=hvd.Adasum),
        "reducescatter_async Adasum": lambda: hvd.reducescatter_async(t, op=hvd.Adasum),
        "grouped_reducescatter Adasum": lambda: hvd.grouped_reducescatter([t], op=hvd.Adasum),
        "op and average": lambda: hvd.allreduce(t, average=True, op=hvd.Sum),
        "average": lambda: hvd.allreduce(t, average=False),
        "optimizer Adasum": lambda: hvd.DistributedOptimizer(
            torch.optim.SGD([torch.nn.Parameter(t)], lr=1), op=hvd.Adasum
        ),
        "predivide with Sum": lambda: hvd.DistributedOptimizer(
            torch.optim.SGD([torch.nn.Parameter(t)], lr=1), op=hvd.Sum, gradient_predivide_factor=2
        ),
        "num_groups": lambda: hvd.DistributedOptimizer(
            torch.optim.SGD([torch.nn.Parameter(t)], lr=1), num_groups=1
        ),
        "broadcast_parameters": lambda: hvd.broadcast_parameters(5, root_rank=0),
        "LBFGS": lambda: hvd.broadcast_optimizer_state(
            torch.optim.LBFGS([torch.nn.Parameter(t)]), root_rank=0
        ),
        "mpi_threads_supported": hvd.mpi_threads_supported,
    }
    out = {key: _caught(fn) for key, fn in calls.items()}
    ps = hvd.add_process_set([0])
    out["outside rank"] = _caught(ps.rank)
    hvd.remove_process_set(ps)
    return out


@pytest.mark.parametrize("n", WORLD)
def test_errors_as_horovod(pools, n):
    adasum = (
        "NotImplementedError",
        "",
        "Adasum is not supported by ringflow; use op=Average or op=Sum",
    )
    rs = ("Error", "HorovodInternalError", "Reducescatter currently only supports AVERAGE and SUM.")
    for rank, out in enumerate(pools.call(n, _errors)):
        context = f"rank {rank} of {n}"
        assert out["allreduce Adasum"] == (adasum, []), (context, out["allreduce Adasum"])
        assert out["grouped_allreduce Adasum"] == (adasum, []), context
        for key in ("reducescatter", "reducescatter_async", "grouped_reducescatter"):
            assert out[f"{key} Adasum"] == (rs, []), (context, key, out[f"{key} Adasum"])
        message = "The op parameter supersedes average. Please provide only one of them."
        assert out["op and average"] == (("ValueError", "", message), []), context
        deprecated = (
            "DeprecationWarning",
            "Parameter `average` has been replaced with `op` and will be removed in v1.0",
        )
        assert out["average"] == (("returned", "Tensor"), [deprecated]), context
        assert out["optimizer Adasum"][0] == adasum, context
        message = "gradient_predivide_factor not supported with op != Average"
        assert out["predivide with Sum"] == (("ValueError", "", message), []), context
        outcome, caught = out["num_groups"]
        assert outcome == ("returned", "SGD") and caught[0][0] == "DeprecationWarning", context
        message = "invalid params of type: <class 'int'>"
        assert out["broadcast_parameters"] == (("ValueError", "", message), []), context
        message = "cannot broadcast torch.optim.LBFGS state"
        assert out["LBFGS"] == (("ValueError", "", message), []), context
        assert out["mpi_threads_supported"][0][0] == "ValueError", context
        message = "Process is not part of provided process set."
        want = ("returned", "int") if rank == 0 else ("ValueError", "", message)
        assert out["outside rank"][0] == want, context
