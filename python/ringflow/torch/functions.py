"""Broadcasting model and optimizer state, and moving picklable objects between ranks.

Objects travel as pickles (the standard library's, not cloudpickle as in Horovod: lambdas and
local classes do not pickle). When a rank cannot pickle its object, every rank raises instead
of the others waiting for it.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ringflow import _core
from ringflow._process_sets import global_process_set, set_id
from ringflow._state import auto_name, engine
from ringflow.torch import _ops
from ringflow.torch.mpi_ops import broadcast_, broadcast_async_, synchronize

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
        raise ValueError(f"invalid params of type {type(params).__name__}")
    handles = [
        broadcast_async_(p, root_rank, None if n is None else f"broadcast.{n}", process_set)
        for n, p in items
    ]
    for handle in handles:
        synchronize(handle)


def _layout(value: Any) -> tuple:
    """How one optimizer state entry travels: tensors by shape and dtype (their data by
    broadcast), anything else (ints, floats, lists) inside the pickled skeleton."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    return ("value", value)


def broadcast_optimizer_state(optimizer: Any, root_rank: int, process_set=global_process_set):
    """Give every rank root_rank's optimizer state: per-parameter state (tensors such as
    momentum buffers, and scalars such as 'step') and the param groups' options (lr, betas, …).

    Unlike Horovod, ranks whose optimizer has no state yet are not stepped with zero gradients
    to create it (which moves parameters under weight decay): root_rank's state is loaded as it
    is, so a root restored from a checkpoint may give state to fresh ranks, and any optimizer
    (LBFGS included) works.
    """
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


def _pickle(obj: Any) -> tuple[bytes, BaseException | None]:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), None
    except Exception as error:  # any pickling failure: tell the other ranks, then raise
        return b"", error


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, np.uint8).copy())


def broadcast_object(obj: Any, root_rank: int = 0, name=None, process_set=global_process_set):
    """root_rank's obj on every rank (root_rank gets obj itself back).

    name defaults to an automatic one (Horovod uses the object's type name, which differs
    between ranks that pass None).
    """
    base = auto_name("broadcast_object", name, set_id(process_set))
    me = engine().rank
    payload, error = _pickle(obj) if me == root_rank else (b"", None)
    size = torch.tensor([-1 if error else len(payload)], dtype=torch.int64)
    broadcast_(size, root_rank, f"{base}.size", process_set)
    count = int(size[0])
    if count < 0:
        who = "this rank's" if me == root_rank else f"root rank {root_rank}'s"
        raise _core.InvalidArgumentError(
            f"rank {me}: broadcast_object '{base}': {who} object cannot be pickled: {error}"
        ) from error
    data = _bytes_tensor(payload) if me == root_rank else torch.empty(count, dtype=torch.uint8)
    broadcast_(data, root_rank, f"{base}.data", process_set)
    return obj if me == root_rank else pickle.loads(data.numpy().tobytes())


def allgather_object(obj: Any, name=None, process_set=global_process_set) -> list:
    """Every rank's obj (of process_set), in rank order."""
    ps = set_id(process_set)
    base = auto_name("allgather_object", name, ps)
    payload, error = _pickle(obj)
    size = torch.tensor([-1 if error else len(payload)], dtype=torch.int64)
    sizes = _ops.allgather([size], f"{base}.size", process_set, sync=True).tolist()
    if min(sizes) < 0:
        ranks = engine().process_set_ranks(ps)
        bad = [r for r, s in zip(ranks, sizes) if s < 0]
        raise _core.InvalidArgumentError(
            f"rank {engine().rank}: allgather_object '{base}': the objects of ranks {bad} "
            f"cannot be pickled{f': {error}' if error else ''}"
        ) from error
    data = _ops.allgather([_bytes_tensor(payload)], f"{base}.data", process_set, sync=True).numpy()
    offsets = np.cumsum([0, *sizes])
    return [pickle.loads(data[a:b].tobytes()) for a, b in zip(offsets[:-1], offsets[1:])]
