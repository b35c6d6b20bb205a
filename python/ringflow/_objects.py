"""Moving picklable objects between ranks (Horovod's ``broadcast_object`` and
``allgather_object``), shared by every framework binding.

Objects travel as cloudpickle pickles, as in Horovod (the standard library's pickle when
cloudpickle is not installed: then lambdas and local classes do not pickle). When a rank cannot
pickle its object, every rank raises instead of the others waiting for it.
"""

from __future__ import annotations

from typing import Any

try:
    import cloudpickle as pickle
except ImportError:  # pragma: no cover - cloudpickle comes with the framework extras
    import pickle  # type: ignore[no-redef]

import numpy as np

from ringflow import _core
from ringflow._collectives import allgather, broadcast_
from ringflow._process_sets import global_process_set, set_id
from ringflow._state import auto_name, engine

__all__ = ["allgather_object", "broadcast_object"]


def _pickle(obj: Any) -> tuple[bytes, BaseException | None]:
    try:
        return pickle.dumps(obj), None
    except Exception as error:  # any pickling failure: tell the other ranks, then raise
        return b"", error


def broadcast_object(obj: Any, root_rank: int = 0, name=None, process_set=global_process_set):
    """root_rank's obj on every rank (root_rank gets obj itself back).

    name defaults to an automatic one (Horovod uses the object's type name, which differs
    between ranks that pass None).
    """
    base = auto_name("broadcast_object", name, set_id(process_set))
    me = engine().rank
    payload, error = _pickle(obj) if me == root_rank else (b"", None)
    size = np.array([-1 if error else len(payload)], dtype=np.int64)
    broadcast_(size, root_rank, f"{base}.size", process_set)
    count = int(size[0])
    if count < 0:
        who = "this rank's" if me == root_rank else f"root rank {root_rank}'s"
        raise _core.InvalidArgumentError(
            f"rank {me}: broadcast_object '{base}': {who} object cannot be pickled: {error}"
        ) from error
    data = np.frombuffer(payload, np.uint8).copy() if me == root_rank else np.empty(count, np.uint8)
    broadcast_(data, root_rank, f"{base}.data", process_set)
    return obj if me == root_rank else pickle.loads(data.tobytes())


def allgather_object(obj: Any, name=None, process_set=global_process_set) -> list:
    """Every rank's obj (of process_set), in rank order."""
    ps = set_id(process_set)
    base = auto_name("allgather_object", name, ps)
    payload, error = _pickle(obj)
    size = np.array([-1 if error else len(payload)], dtype=np.int64)
    sizes = allgather(size, f"{base}.size", process_set).tolist()
    if min(sizes) < 0:
        ranks = engine().process_set_ranks(ps)
        bad = [r for r, s in zip(ranks, sizes) if s < 0]
        raise _core.InvalidArgumentError(
            f"rank {engine().rank}: allgather_object '{base}': the objects of ranks {bad} "
            f"cannot be pickled{f': {error}' if error else ''}"
        ) from error
    data = allgather(np.frombuffer(payload, np.uint8).copy(), f"{base}.data", process_set)
    offsets = np.cumsum([0, *sizes])
    return [pickle.loads(data[a:b].tobytes()) for a, b in zip(offsets[:-1], offsets[1:])]
