"""broadcast, allgather, reducescatter, alltoall, barrier and send/recv, blocking and
asynchronous (and grouped for allgather and reducescatter). See `_allreduce` for the pattern."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ringflow import _arrays, _core, _device
from ringflow._allreduce import Average
from ringflow._handles import Handle, finish, wait
from ringflow._process_sets import ProcessSet, set_id
from ringflow._state import auto_name, engine

_K = _core.OpKind
_NONE: list[int] = []


def _submit(
    kind,
    tensors,
    outs,
    op=Average,
    root=0,
    peer=0,
    ps=0,
    splits=_NONE,
    group="",
    sync=False,
    pre=1.0,
    post=1.0,
):
    return engine().submit(
        kind, tensors, outs, op, root, peer, float(pre), float(post), ps, splits, [], group, sync
    )


# -- broadcast ---------------------------------------------------------------------------------


def _broadcast(x, root_rank, name, process_set, in_place, sync):
    ps = set_id(process_set)
    name = auto_name("broadcast", name, ps)
    array, tensor = _arrays.describe(x, name, writable=in_place)
    result = x if in_place else array
    if not in_place and array is not _arrays.EMPTY:  # broadcast into a copy: x stays as it was
        result, array, tensor = _arrays.copied(array, name)
    handles = _submit(_K.broadcast, [tensor], [None], root=int(root_rank), ps=ps, sync=sync)
    return finish(handles, sync, (x, array), lambda _: result)


def broadcast_(x: Any, root_rank: int, name=None, process_set: ProcessSet | None = None) -> Any:
    """Overwrite x on every rank with root_rank's x (root_rank is a rank of the job, as in
    Horovod, and must belong to process_set); returns x itself."""
    return _broadcast(x, root_rank, name, process_set, True, True)


def broadcast(x: Any, root_rank: int, name=None, process_set: ProcessSet | None = None):
    """A new array holding root_rank's x, on every rank."""
    return _broadcast(x, root_rank, name, process_set, False, True)


def broadcast_async_(x, root_rank, name=None, process_set=None) -> Handle:
    return _broadcast(x, root_rank, name, process_set, True, False)


def broadcast_async(x, root_rank, name=None, process_set=None) -> Handle:
    return _broadcast(x, root_rank, name, process_set, False, False)


# -- allgather ---------------------------------------------------------------------------------


def _allgather(xs, name, process_set, grouped, sync):
    ps = set_id(process_set)
    base = auto_name("allgather", name, ps)
    described = [_arrays.describe(x, f"{base}.{i}" if grouped else base) for i, x in enumerate(xs)]
    tensors = [t for _, t in described]
    handles = _submit(
        _K.allgather, tensors, [None] * len(xs), ps=ps, group=base if grouped else "", sync=sync
    )

    def result(hs):
        outs = [_arrays.result_of(h, a) for h, (a, _) in zip(hs, described)]
        return outs if grouped else outs[0]

    return finish(handles, sync, (xs, described), result)


def allgather(x: Any, name=None, process_set: ProcessSet | None = None) -> np.ndarray:
    """Concatenate every rank's x along the first dimension, in rank order.

    The first dimension may differ between ranks; the others and the dtype must match.
    """
    return _allgather([x], name, process_set, False, True)


def allgather_async(x, name=None, process_set=None) -> Handle:
    return _allgather([x], name, process_set, False, False)


def grouped_allgather(tensors: Sequence[Any], name=None, process_set=None) -> list[np.ndarray]:
    return _allgather(list(tensors), name, process_set, True, True)


def grouped_allgather_async(tensors: Sequence[Any], name=None, process_set=None) -> Handle:
    return _allgather(list(tensors), name, process_set, True, False)


# -- reducescatter -----------------------------------------------------------------------------


def _reducescatter(xs, op, name, process_set, grouped, sync, pre=1.0, post=1.0):
    ps = set_id(process_set)
    eng = engine()
    ranks = eng.process_set_ranks(ps)
    world = len(ranks)
    me = ranks.index(eng.rank) if eng.rank in ranks else 0
    base = auto_name("reducescatter", name, ps)
    tensors, outs, results = [], [], []
    for i, x in enumerate(xs):
        array, tensor = _arrays.describe(x, f"{base}.{i}" if grouped else base)
        rows = array.shape[0] if array.ndim else 0
        mine = rows // world + (1 if me < rows % world else 0)
        tensors.append(tensor)
        result, out = _arrays.new_output(array, (mine, *array.shape[1:]))
        results.append(result)
        outs.append(out)
    handles = _submit(
        _K.reducescatter,
        tensors,
        outs,
        op=op,
        ps=ps,
        group=base if grouped else "",
        sync=sync,
        pre=pre,
        post=post,
    )
    return finish(handles, sync, (xs, outs, results), lambda _: results if grouped else results[0])


def reducescatter(
    x: Any, op=Average, name=None, process_set=None, prescale_factor=1.0, postscale_factor=1.0
) -> np.ndarray:
    """Reduce x over the ranks and return this rank's block of the first dimension.

    Blocks are as `np.array_split` makes them: the first (rows % size) ranks get one more row.
    prescale_factor multiplies the input first, postscale_factor the result (as for allreduce).
    """
    return _reducescatter(
        [x], op, name, process_set, False, True, prescale_factor, postscale_factor
    )


def reducescatter_async(
    x, op=Average, name=None, process_set=None, prescale_factor=1.0, postscale_factor=1.0
) -> Handle:
    return _reducescatter(
        [x], op, name, process_set, False, False, prescale_factor, postscale_factor
    )


def grouped_reducescatter(
    tensors, op=Average, name=None, process_set=None, prescale_factor=1.0, postscale_factor=1.0
) -> list:
    return _reducescatter(
        list(tensors), op, name, process_set, True, True, prescale_factor, postscale_factor
    )


def grouped_reducescatter_async(
    tensors, op=Average, name=None, process_set=None, prescale_factor=1.0, postscale_factor=1.0
) -> Handle:
    return _reducescatter(
        list(tensors), op, name, process_set, True, False, prescale_factor, postscale_factor
    )


# -- alltoall ----------------------------------------------------------------------------------


def _check_splits(splits: Any, rows: int, world: int) -> tuple[list[int], str]:
    if splits is None:
        if rows % world:
            return [0] * world, (
                f"first dimension {rows} is not divisible by {world} ranks; pass splits"
            )
        return [rows // world] * world, ""
    values = [int(s) for s in np.asarray(splits).reshape(-1)]
    if len(values) != world:
        return [0] * world, f"splits has {len(values)} entries, expected one per rank ({world})"
    if any(v < 0 for v in values):
        return [0] * world, f"splits {values} must be non-negative"
    if sum(values) > rows:  # Horovod's words; fewer rows than the first dimension is fine
        return [0] * world, (
            f"Sum of splits entries is greater than the first dimension of tensor "
            f"({sum(values)} > {rows})"
        )
    return values, ""


def _alltoall(x, splits, name, process_set, sync):
    ps = set_id(process_set)
    world = len(engine().process_set_ranks(ps))
    name = auto_name("alltoall", name, ps)
    array, tensor = _arrays.describe(x, name)
    rows = array.shape[0] if array.ndim else 0
    send_splits, reason = _check_splits(splits, rows, world)
    if reason and array is not _arrays.EMPTY:  # tell every rank, like any other invalid input
        array = _arrays.EMPTY
        tensor = _core.Tensor(array, _core.DType.uint8, name, reason)
        send_splits = [0] * world
    elif sum(send_splits) < rows:  # as Horovod: the rows after the splits are not sent
        if isinstance(array, _device.DeviceArray):
            array = array.first_rows(sum(send_splits))
            tensor = array.tensor(name)
        else:
            array, tensor = _arrays.describe(array[: sum(send_splits)], name)
    handles = _submit(_K.alltoall, [tensor], [None], ps=ps, splits=send_splits, sync=sync)

    def result(hs):
        return _arrays.result_of(hs[0], array), np.asarray(hs[0].received_splits, dtype=np.int64)

    return finish(handles, sync, (x, array), result)


def alltoall(x: Any, splits: Any = None, name=None, process_set=None):
    """Send splits[i] rows of x to rank i; returns (rows received in rank order, received splits).

    Without splits, x's first dimension is divided evenly and must be divisible by the set size;
    splits may add up to fewer rows than x has (the rest is not sent), as in Horovod.
    """
    return _alltoall(x, splits, name, process_set, True)


def alltoall_async(x, splits=None, name=None, process_set=None) -> Handle:
    return _alltoall(x, splits, name, process_set, False)


# -- barrier and point to point ----------------------------------------------------------------


def barrier(process_set: ProcessSet | None = None, name: str | None = None) -> None:
    """Return once every rank (of process_set) has called barrier()."""
    ps = set_id(process_set)
    tensor = _core.Tensor(_arrays.EMPTY, _core.DType.uint8, auto_name("barrier", name, ps))
    wait(_submit(_K.barrier, [tensor], [None], ps=ps, sync=True))


def join() -> int:
    """This rank has no more data (uneven batches): until every rank has joined, it takes part
    in the others' collectives with zeros (allreduce, reducescatter), no rows (allgather) or no
    rows to send (alltoall); Average still divides by the set's size, as in Horovod
    (RINGFLOW_JOIN_AVERAGE=contributors: by the ranks that brought data). Blocks until every
    rank has joined and returns the rank that joined last."""
    tensor = _core.Tensor(_arrays.EMPTY, _core.DType.uint8, auto_name("join", None))
    handles = _submit(_K.join, [tensor], [None], sync=True)
    wait(handles)
    return handles[0].value


def _bytes_tensor(x: Any, what: str, writable: bool, core_name: str) -> _core.Tensor:
    """x's bytes as a uint8 descriptor, or an error now: only this rank is at fault, its peer
    is not involved yet."""
    array, _ = _arrays.describe(x, what, writable=writable)
    if array is _arrays.EMPTY and x is not _arrays.EMPTY:
        device = _device.find(x)
        reason = (
            device.problem(writable)
            if device is not None
            else _arrays.problem(x, _arrays.as_ndarray(x), writable)
        )
        raise _core.InvalidArgumentError(f"rank {engine().rank}: {what}: {reason}")
    if isinstance(array, _device.DeviceArray):
        nbytes = int(np.prod(array.shape, dtype=np.int64)) * array.dtype.itemsize
        return _core.Tensor.cuda(
            array.address, array.device, array.stream, _core.DType.uint8, [nbytes], core_name
        )
    return _core.Tensor(array.reshape(-1).view(np.uint8), _core.DType.uint8, core_name)


def _check_peer(peer: int, what: str) -> None:
    eng = engine()
    if not (0 <= peer < eng.size) or peer == eng.rank:
        raise _core.InvalidArgumentError(
            f"rank {eng.rank}: {what} must be another rank in [0, {eng.size})"
        )


def send(x: Any, dst: int, name: str | None = None) -> None:
    """Send x to rank dst, which must call recv with a buffer of the same byte size."""
    _check_peer(dst, f"send to rank {dst}: destination")
    eng = engine()
    what = f"send of tensor '{name or 'send'}' to rank {dst}"
    tensor = _bytes_tensor(x, what, False, eng.next_send_name(dst))
    wait(_submit(_K.point_to_point, [tensor], [None], root=eng.rank, peer=dst, ps=-1, sync=True))


def recv(x: Any, src: int, name: str | None = None) -> Any:
    """Receive a message from rank src into x (same byte size as sent); returns x."""
    _check_peer(src, f"recv from rank {src}: source")
    eng = engine()
    what = f"recv of tensor '{name or 'recv'}' from rank {src}"
    tensor = _bytes_tensor(x, what, True, eng.next_recv_name(src))
    wait(_submit(_K.point_to_point, [tensor], [None], root=src, peer=eng.rank, ps=-1, sync=True))
    return x
