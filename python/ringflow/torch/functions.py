"""Broadcasting model and optimizer state; moving picklable objects between ranks
(`broadcast_object`, `allgather_object`) is framework-neutral, in `ringflow._objects`."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import torch

from ringflow._objects import allgather_object, broadcast_object
from ringflow._process_sets import global_process_set, set_id
from ringflow._state import auto_name, engine
from ringflow.torch.mpi_ops import broadcast_async_, synchronize

__all__ = [
    "allgather_object",
    "broadcast_object",
    "broadcast_optimizer_state",
    "broadcast_parameters",
]


def broadcast_parameters(params: Any, root_rank: int, process_set=global_process_set) -> None:
    """Overwrite every rank's parameters in place with root_rank's.

    params is a ``state_dict()`` (sorted by name, as Horovod does), ``named_parameters()``, or
    any iterable of tensors or (name, tensor) pairs; every rank passes them in the same order.
    """
    if isinstance(params, dict):
        items = sorted(params.items())
    elif isinstance(params, Iterable) and not isinstance(params, torch.Tensor):
        items = [p if isinstance(p, tuple) else (None, p) for p in params]
    else:
        raise ValueError(f"invalid params of type: {type(params)}")  # Horovod's message
    handles = [
        broadcast_async_(p, root_rank, None if n is None else f"broadcast.{n}", process_set)
        for n, p in items
    ]
    for handle in handles:
        synchronize(handle)


def broadcast_optimizer_state(
    optimizer: Any,
    root_rank: int,
    model: Any = None,
    process_set=global_process_set,
    *,
    load_root_state: bool = False,
) -> None:
    """Give every rank root_rank's optimizer state: per-parameter state (momentum buffers,
    'step', …) and the param groups' options (lr, betas, …).

    By default as Horovod does it: a rank whose optimizer has no state yet first creates it
    with one step on zero gradients (which moves parameters under weight decay, and leaves
    those zero gradients in ``p.grad``; ``model`` marks sparse embeddings for it); then each
    state tensor is broadcast in place and the other entries and options travel pickled.
    LBFGS raises ValueError; a stateless optimizer (plain SGD) is left alone.

    ``load_root_state=True`` (ringflow's): no step; root_rank's state is loaded as it is, with
    its structure, so a root restored from a checkpoint gives state to fresh ranks, parameters
    never move, and any optimizer (LBFGS included) works.
    """
    if load_root_state:
        return _load_root_state(optimizer, root_rank, process_set)
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("cannot broadcast torch.optim.LBFGS state")
    state_dict = optimizer.state_dict()
    if not state_dict["state"]:
        _create_state(optimizer, state_dict, _sparse_parameters(model))
        state_dict = optimizer.state_dict()
    if not state_dict["state"]:
        return  # a stateless optimizer: nothing to broadcast
    tensors: list = []
    scalars: dict = {}
    assign: dict = {}
    occurrences: collections.defaultdict = collections.defaultdict(int)
    for index, group in enumerate(state_dict["param_groups"]):
        for option, value in group.items():
            if option != "params":
                scalars[f"{option}.{index}"] = value
                assign[f"{option}.{index}"] = _setter(optimizer.param_groups[index], option)
        for pid in group["params"]:
            for name, value in state_dict["state"].get(pid, {}).items():
                occurrences[name] += 1  # a name recurs once per parameter: number them
                key = f"{name}.{occurrences[name]}"
                if torch.is_tensor(value):
                    tensors.append((key, value))
                else:
                    scalars[key] = value
                    assign[key] = _setter(state_dict["state"][pid], name)
    base = auto_name("broadcast_optimizer_state", None, set_id(process_set))
    handles = [broadcast_async_(t, root_rank, f"{base}.{key}", process_set) for key, t in tensors]
    for handle in handles:
        synchronize(handle)
    scalars = broadcast_object(scalars, root_rank, f"{base}.scalars", process_set)
    for key, value in scalars.items():
        assign[key](value)


def _sparse_parameters(model: Any) -> set[int]:
    """ids of the parameters of model's sparse embeddings (their gradients are sparse)."""
    if model is None:
        return set()
    return {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and m.sparse
        for p in m.parameters()
    }


def _create_state(optimizer: Any, state_dict: dict, sparse: set[int]) -> None:
    """Horovod's state initialisation: zero gradients and one step of the wrapped optimizer
    (not the DistributedOptimizer's, which would reduce gradients collectively)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in state_dict["state"]:
                p.grad = p.data.new(p.size()).zero_()
                if isinstance(optimizer, torch.optim.SparseAdam) or (
                    isinstance(optimizer, torch.optim.SGD) and id(p) in sparse
                ):
                    p.grad = p.grad.to_sparse()
    from ringflow.torch.optimizer import _DistributedOptimizer

    if isinstance(optimizer, _DistributedOptimizer):
        super(_DistributedOptimizer, optimizer).step()
    else:
        optimizer.step()


def _setter(container: dict, key: Any):
    def assign(value: Any) -> None:
        container[key] = value

    return assign


def _layout(value: Any) -> tuple:
    """How one optimizer state entry travels: tensors by shape and dtype (their data by
    broadcast), anything else (ints, floats, lists) inside the pickled skeleton."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    return ("value", value)


def _load_root_state(optimizer: Any, root_rank: int, process_set) -> None:
    """root_rank's optimizer state and options loaded on every rank, structure included."""
    state_dict = optimizer.state_dict()
    skeleton = None
    if engine().rank == root_rank:
        skeleton = {
            "param_groups": state_dict["param_groups"],
            "state": {
                pid: {key: _layout(v) for key, v in entry.items()}
                for pid, entry in state_dict["state"].items()
            },
        }
    skeleton = broadcast_object(skeleton, root_rank, process_set=process_set)
    base = auto_name("broadcast_optimizer_state", None, set_id(process_set))
    state: dict = {}
    handles = []
    for pid, layouts in skeleton["state"].items():
        mine = state_dict["state"].get(pid, {})
        entry = state[pid] = {}
        for key, layout in layouts.items():
            if layout[0] == "value":
                entry[key] = layout[1]
                continue
            _, shape, dtype = layout
            t = mine.get(key)
            fits = isinstance(t, torch.Tensor) and tuple(t.shape) == shape and t.dtype == dtype
            entry[key] = t if fits and t.device.type == "cpu" else torch.empty(shape, dtype=dtype)
            name = f"{base}.{pid}.{key}"
            handles.append(broadcast_async_(entry[key], root_rank, name, process_set))
    for handle in handles:
        synchronize(handle)
    optimizer.load_state_dict({"state": state, "param_groups": skeleton["param_groups"]})
