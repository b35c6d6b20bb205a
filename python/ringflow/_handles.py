"""Handles of asynchronous operations: `synchronize` returns the result, `poll` says if done."""

from __future__ import annotations

from typing import Any, Callable

from ringflow import _core
from ringflow._state import engine, state

__all__ = ["Handle", "finish", "poll", "synchronize", "wait"]

_PENDING = object()


class Handle:
    """One submitted operation (or a group): its core handles, the arrays the engine reads and
    writes (kept alive until it finishes) and how to build the result from them."""

    __slots__ = ("__weakref__", "_core", "_keep", "_make_result", "_result")

    def __init__(
        self,
        handles: list[_core.Handle],
        keep: tuple[Any, ...],
        make_result: Callable[[list[_core.Handle]], Any],
    ) -> None:
        self._core = handles
        self._keep = keep
        self._make_result = make_result
        self._result: Any = _PENDING
        state.inflight[id(self)] = self

    def done(self) -> bool:
        return all(h.done() for h in self._core)

    def __call__(self) -> Any:
        """``handle()`` is `synchronize(handle)`: Horovod's sparse allreduce returns a callable."""
        return synchronize(self)


def poll(handle: Handle) -> bool:
    """Whether the operation has finished (successfully or not); never blocks or raises."""
    return handle.done()


def synchronize(handle: Handle) -> Any:
    """Wait for the operation and return its result; raises the error it failed with."""
    if handle._result is not _PENDING:
        return handle._result
    engine = state.engine
    for h in handle._core:
        if not h.done():
            if engine is None:
                raise _core.Error("ringflow was shut down before this operation finished")
            engine.wait(h)
    state.inflight.pop(id(handle), None)
    for h in handle._core:
        h.rethrow()
    handle._result = handle._make_result(handle._core)
    handle._keep = ()
    return handle._result


def wait(handles: list[_core.Handle]) -> None:
    """Block until every handle is done (driving the engine), then raise the first error."""
    eng = engine()
    for h in handles:
        eng.wait(h)
    for h in handles:
        h.rethrow()


def finish(
    handles: list[_core.Handle],
    sync: bool,
    keep: tuple[Any, ...],
    make_result: Callable[[list[_core.Handle]], Any],
) -> Any:
    """What every collective returns: the result now (blocking forms) or a Handle that builds
    it at synchronize (async forms); errors raise on every rank either way."""
    if not sync:
        return Handle(handles, keep, make_result)
    wait(handles)
    return make_result(handles)
