"""allreduce in Horovod's three forms: blocking (`allreduce`), asynchronous (`allreduce_async`
-> Handle) and grouped (`grouped_allreduce`: several tensors as one fused operation). Every form
hands requests to the engine, which matches them across ranks by name; the blocking form drives
the engine from the calling thread (no hand-off to another thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ringflow import _arrays, _core
from ringflow._handles import Handle, wait
from ringflow._process_sets import ProcessSet, set_id
from ringflow._state import auto_name, engine

Average = _core.ReduceOp.Average
_K = _core.OpKind
_NO_SPLITS: list[int] = []


# -- allreduce ---------------------------------------------------------------------------------


def _allreduce(x, op, name, pre, post, process_set, in_place, sync, group=""):
    ps = set_id(process_set)
    xs = x if group else [x]
    base = auto_name("allreduce", name, ps)
    tensors, outs, arrays = [], [], []
    for i, item in enumerate(xs):
        array, tensor = _arrays.describe(item, f"{base}.{i}" if group else base, writable=in_place)
        out = array if in_place else np.empty(array.shape, array.dtype)
        tensors.append(tensor)
        outs.append(out)
        arrays.append(array)
    handles = engine().submit(
        _K.allreduce,
        tensors,
        outs,
        op,
        0,
        0,
        float(pre),
        float(post),
        ps,
        _NO_SPLITS,
        [],
        base if group else "",
        sync,
    )
    results = list(xs) if in_place else outs
    return handles, results, (xs, arrays, outs)


def allreduce_(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Any:
    """Reduce x over the ranks (of process_set) in place and return x itself.

    Average divides the sum by the set's size: floats in their type (float32 for 16-bit
    floats), integers rounding to nearest, ties to even. prescale_factor multiplies the input
    first, postscale_factor the result.
    """
    handles, results, _ = _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, True, True
    )
    wait(handles)
    return results[0]


def allreduce(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> np.ndarray:
    """Reduce x over the ranks into a new array (see `allreduce_`)."""
    handles, results, _ = _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, False, True
    )
    wait(handles)
    return results[0]


def allreduce_async_(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start an in-place allreduce; `synchronize` returns x."""
    handles, results, keep = _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, True, False
    )
    return Handle(handles, keep, lambda _: results[0])


def allreduce_async(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start an allreduce into a new array; `synchronize` returns it."""
    handles, results, keep = _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, False, False
    )
    return Handle(handles, keep, lambda _: results[0])


def grouped_allreduce_async(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start one fused allreduce of several tensors; `synchronize` returns the new arrays."""
    handles, results, keep = _allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        False,
        False,
        group="group",
    )
    return Handle(handles, keep, lambda _: results)


def grouped_allreduce_async_(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start one fused in-place allreduce of several tensors; `synchronize` returns them."""
    handles, results, keep = _allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        True,
        False,
        group="group",
    )
    return Handle(handles, keep, lambda _: results)


def grouped_allreduce(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> list:
    """Allreduce several tensors as one fused operation; returns new arrays."""
    handles, results, _ = _allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        False,
        True,
        group="group",
    )
    wait(handles)
    return results


def grouped_allreduce_(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> list:
    """Allreduce several tensors in place as one fused operation; returns them."""
    handles, results, _ = _allreduce(
        list(tensors),
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        True,
        True,
        group="group",
    )
    wait(handles)
    return results
