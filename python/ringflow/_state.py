"""This process' ringflow: the engine, and the counters that name unnamed tensors."""

from __future__ import annotations

import itertools
from collections import defaultdict

from ringflow import _core


class State:
    def __init__(self) -> None:
        self.engine: _core.Engine | None = None
        # The rank-0-hosted store of the last init() (0: none or the launcher's): a later
        # init() waits for rank 0's next store rather than join that one again.
        self.store_instance = 0
        self.pid = 0  # the process that called init() (a forked child must not shut it down)
        # Per (kind, process set): ranks outside a set do not count its collectives.
        self.unnamed: defaultdict[tuple[str, int], itertools.count] = defaultdict(itertools.count)
        # Handles not yet synchronized keep their arrays alive while the engine uses them.
        self.inflight: dict[int, object] = {}


state = State()


def engine() -> _core.Engine:
    if state.engine is None:
        # A ValueError too (InvalidArgumentError), as Horovod's "not initialized" error is.
        raise _core.InvalidArgumentError(
            "ringflow has not been initialized; call ringflow.init() first"
        )
    return state.engine


def auto_name(kind: str, name: str | None, process_set: int = 0) -> str:
    """name, or the next automatic one: alike on every rank that calls in the same order."""
    if name is not None:
        return name
    suffix = f"@{process_set}" if process_set else ""
    return f"{kind}.noname.{next(state.unnamed[(kind, process_set)])}{suffix}"
