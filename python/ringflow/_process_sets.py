"""Process sets: sub-groups of ranks with their own collectives (Horovod's `ProcessSet`).

Adding and removing a set are collective operations: every rank of the job calls them, with
the same ranks, in the same order. Every collective takes ``process_set=``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from ringflow import _core
from ringflow._state import auto_name, engine

__all__ = ["ProcessSet", "add_process_set", "global_process_set", "remove_process_set"]


class ProcessSet:
    """The ranks of a sub-group; usable once `add_process_set` registered it."""

    def __init__(self, ranks: Iterable[int]) -> None:
        self._ranks: list[int] = sorted({int(r) for r in ranks})
        self.process_set_id: int | None = None

    @property
    def ranks(self) -> list[int]:
        """The member ranks, sorted (every rank of the job for the global set)."""
        if self is global_process_set:
            return list(range(engine().size))
        return list(self._ranks)

    def size(self) -> int | None:
        """How many ranks the set has; None until it is registered (as in Horovod)."""
        if self.process_set_id is None:
            return None
        return len(self.ranks)

    def rank(self) -> int | None:
        """This process' rank within the set; None until it is registered. Raises ValueError
        on a rank outside the set (Horovod's message)."""
        if self.process_set_id is None:
            return None
        me = engine().rank
        ranks = self.ranks
        if me not in ranks:
            raise ValueError("Process is not part of provided process set.")
        return ranks.index(me)

    def included(self) -> bool:
        """Whether this process is one of the set's ranks."""
        return engine().rank in self.ranks

    def __repr__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"


_EMPTY = np.empty(0, np.uint8)

global_process_set = ProcessSet([])
"""Every rank of the job (id 0)."""
global_process_set.process_set_id = 0


def set_id(process_set: ProcessSet | None) -> int:
    """The id a collective runs on; raises for a set that was never added or was removed."""
    if process_set is None:
        return 0
    if process_set.process_set_id is None:
        raise _core.InvalidArgumentError(
            f"{process_set!r} is not registered: call ringflow.add_process_set() on every rank"
        )
    return process_set.process_set_id


def add_process_set(process_set: ProcessSet | Iterable[int]) -> ProcessSet:
    """Register a process set on every rank (all ranks call it, alike); returns it."""
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if process_set.process_set_id is not None:
        raise _core.InvalidArgumentError(f"{process_set!r} is already registered")
    world = engine().size
    ranks = process_set.ranks
    if not ranks or ranks[0] < 0 or ranks[-1] >= world:
        raise _core.InvalidArgumentError(
            f"process set ranks {ranks} must be a non-empty subset of 0 … {world - 1}"
        )
    # The ranks travel as the request's shape and checksum, so ranks that pass different lists
    # get a MismatchError instead of waiting for each other.
    members = np.asarray(ranks, np.int32)
    checksum = zlib.crc32(members.tobytes()) & 0x7FFFFFFF
    tensor = _core.Tensor(members, _core.DType.int32, auto_name("process_set.add", None))
    (handle,) = engine().submit(
        _core.OpKind.add_process_set,
        [tensor],
        [None],
        root=checksum,
        set_ranks=ranks,
        synchronous=True,
    )
    engine().wait(handle)
    handle.rethrow()
    process_set.process_set_id = handle.value
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Unregister a set on every rank (all ranks call it, alike). Returns whether it was
    removed: False, as in Horovod, for the global set or a set that is not registered."""
    ident = process_set.process_set_id
    if ident is None or ident == 0:
        return False
    tensor = _core.Tensor(_EMPTY, _core.DType.uint8, f"process_set.remove:{ident}")
    (handle,) = engine().submit(
        _core.OpKind.remove_process_set, [tensor], [None], root=ident, synchronous=True
    )
    engine().wait(handle)
    handle.rethrow()
    process_set.process_set_id = None
    return True
