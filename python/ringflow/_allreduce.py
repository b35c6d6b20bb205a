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
from ringflow._handles import Handle, finish
from ringflow._process_sets import ProcessSet, set_id
from ringflow._state import auto_name, engine, state

Average = _core.ReduceOp.Average
_K = _core.OpKind
_NO_SPLITS: list[int] = []
_HOST_DTYPES = _arrays.host_dtypes()
_UNNAMED = ("allreduce", 0)  # auto_name's counter of unnamed allreduces on the global set
_allreduce_now = _core.allreduce_now_fast  # Engine.allreduce_now without pybind11's dispatch


# -- allreduce ---------------------------------------------------------------------------------


def _now(x, op, name, pre, post, in_place):
    """The commonest call in one trip into the core: a usable host array (what _arrays.describe
    would accept as is), blocking, on the global set. None when x is not such an array.
    Written out (no host_dtype / engine / auto_name calls): it is most of a small call's Python."""
    flags = x.flags
    if not flags.c_contiguous or (in_place and not flags.writeable):
        return None
    dtype = _HOST_DTYPES.get(x.dtype)
    if dtype is None:
        return None
    core = state.engine
    if core is None:
        engine()  # raises: not initialized
    if name is None:
        name = f"allreduce.noname.{next(state.unnamed[_UNNAMED])}"  # as auto_name names it
    out = x if in_place else np.empty(x.shape, x.dtype)
    _allreduce_now(core, x, dtype, name, out, op, pre, post)  # it converts pre, post as float()
    return out


def _allreduce(x, op, name, pre, post, process_set, *, in_place, sync, grouped=False):
    """Every allreduce form: one tensor or a group, in place or not, blocking or a Handle."""
    if sync and not grouped and process_set is None and type(x) is np.ndarray:
        out = _now(x, op, name, pre, post, in_place)
        if out is not None:
            return out
    ps = set_id(process_set)
    xs = list(x) if grouped else [x]
    base = auto_name("allreduce", name, ps)
    tensors, outs, arrays, results = [], [], [], []
    for i, item in enumerate(xs):
        array, tensor = _arrays.describe(
            item, f"{base}.{i}" if grouped else base, writable=in_place
        )
        tensors.append(tensor)
        if in_place:
            results.append(item)
            outs.append(_arrays.core_out(array))
        else:
            result, out = _arrays.new_output(array)
            results.append(result)
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
        base if grouped else "",
        sync,
    )
    return finish(
        handles, sync, (xs, arrays, outs, results), lambda _: results if grouped else results[0]
    )


def allreduce_(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Any:
    """Reduce x over the ranks (of process_set) in place and return x itself.

    Average is the sum scaled by 1/size, as Horovod computes it: floats multiply by 1/size
    rounded to their type (float32 for 16-bit floats), integers multiply in float64 and
    truncate toward zero. prescale_factor multiplies each rank's input first (the same rule),
    postscale_factor the result (in one multiplication by postscale_factor/size for Average).
    """
    if process_set is None and type(x) is np.ndarray:  # the fast path, one call fewer
        out = _now(x, op, name, prescale_factor, postscale_factor, True)
        if out is not None:
            return out
    return _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, in_place=True, sync=True
    )


def allreduce(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> np.ndarray:
    """Reduce x over the ranks into a new array (see `allreduce_`)."""
    if process_set is None and type(x) is np.ndarray:  # the fast path, one call fewer
        out = _now(x, op, name, prescale_factor, postscale_factor, False)
        if out is not None:
            return out
    return _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, in_place=False, sync=True
    )


def allreduce_async_(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start an in-place allreduce; `synchronize` returns x."""
    return _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, in_place=True, sync=False
    )


def allreduce_async(
    x: Any,
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start an allreduce into a new array; `synchronize` returns it."""
    return _allreduce(
        x, op, name, prescale_factor, postscale_factor, process_set, in_place=False, sync=False
    )


def grouped_allreduce_async(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start one fused allreduce of several tensors; `synchronize` returns the new arrays."""
    return _allreduce(
        tensors,
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=False,
        sync=False,
        grouped=True,
    )


def grouped_allreduce_async_(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> Handle:
    """Start one fused in-place allreduce of several tensors; `synchronize` returns them."""
    return _allreduce(
        tensors,
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=True,
        sync=False,
        grouped=True,
    )


def grouped_allreduce(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> list:
    """Allreduce several tensors as one fused operation; returns new arrays."""
    return _allreduce(
        tensors,
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=False,
        sync=True,
        grouped=True,
    )


def grouped_allreduce_(
    tensors: Sequence[Any],
    op=Average,
    name=None,
    prescale_factor=1.0,
    postscale_factor=1.0,
    process_set: ProcessSet | None = None,
) -> list:
    """Allreduce several tensors in place as one fused operation; returns them."""
    return _allreduce(
        tensors,
        op,
        name,
        prescale_factor,
        postscale_factor,
        process_set,
        in_place=True,
        sync=True,
        grouped=True,
    )
