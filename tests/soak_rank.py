"""The soak inside a rank: submit batches of the schedule, synchronize, check, measure.

`run_batches` is the function the harness calls on every rank. Per batch, a rank submits the
steps in its own order (`soak_plan.rank_order`), polls a few handles, synchronizes them all in
another order of its own, and checks each result against numpy (`soak_plan.expected`): values,
dtype and shape; in-place forms give back the argument itself; other forms leave their input
untouched and share no memory with it. A mismatch is counted and described, and the soak goes
on; a ringflow error ends it with the seed, batch and step in the message.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
from typing import Any

import numpy as np

import ringflow as rf
from tests import reference as ref
from tests import soak_plan as plan

MAX_REPORTED = 10
"""Mismatch descriptions a rank sends back (all of them are counted)."""

_libc = ctypes.CDLL(None)
_malloc_trim = getattr(_libc, "malloc_trim", None)  # glibc only
_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS.split()]


_mallinfo2 = getattr(_libc, "mallinfo2", None)
if _mallinfo2 is not None:
    _mallinfo2.restype = _Mallinfo2


def _malloc_in_use() -> int:
    """Bytes malloc has handed out and not got back, in every arena (-1 without mallinfo2)."""
    if _mallinfo2 is None:
        return -1
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


def fill_caches() -> None:
    """Bring two bounded caches to their steady state before the warm-up.

    numpy keeps up to 7 freed data blocks of every size under 1 KiB for reuse (``NBUCKETS``,
    ``NCACHE`` in numpy/_core/src/multiarray/alloc.c): up to 3.7 MB, filled slowly as random
    small sizes come by. ringflow's response cache keeps an entry per tensor name up to
    ``RINGFLOW_CACHE_CAPACITY`` (1024, a few hundred bytes each); the soak's unnamed
    steps add auto-numbered names until it is full. Full from the start, neither grows after.
    """
    blocks = [np.empty(size, np.uint8) for size in range(1, 1024) for _ in range(7)]
    del blocks
    one = np.ones(1, np.int32)
    capacity = int(os.environ.get("RINGFLOW_CACHE_CAPACITY", "1024"))
    for _ in range(0, capacity + 64, 64):
        for handle in [rf.allreduce_async(one, op=rf.Sum) for _ in range(64)]:
            rf.synchronize(handle)


def _private_rss() -> int:
    """Resident bytes of this process, its shared-memory mappings (RssShmem) left out."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssShmem:")):
                name, value, _unit = line.split()
                fields[name] = int(value) * 1024
    return fields["VmRSS:"] - fields.get("RssShmem:", 0)


def resources() -> dict[str, int]:
    """Open file descriptors and resident memory of this process.

    ``rss`` is measured after a garbage collection and ``malloc_trim(0)``, which hands the
    allocator's free pages back to the OS: what remains is memory something still holds, so a
    leak shows in it and allocator caching does not. ``rss_raw`` is before the trim. Both leave
    out shared memory (the ranks' /dev/shm segments, whose pages count once first touched by a
    collective that reaches deeper into a peer's area than any before, not by a leak).
    """
    rss_raw = _private_rss()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    rss = _private_rss()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": rss,
        "rss_raw": rss_raw,
        "malloc": _malloc_in_use(),
        "py_blocks": sys.getallocatedblocks(),
    }


def _call(step: plan.Step, xs: list[np.ndarray], rank: int) -> Any:
    """Issue one step: its result if blocking, else its handle."""
    if step.kind == "barrier":
        return rf.barrier()
    fn = getattr(
        rf, step.kind + ("" if step.blocking else "_async") + ("_" if step.in_place else "")
    )
    arg = xs if step.kind.startswith("grouped") else xs[0]
    if step.kind in plan.REDUCING:
        pre, post = step.scale
        op = getattr(rf, step.op)
        return fn(arg, op=op, name=step.name, prescale_factor=pre, postscale_factor=post)
    if step.kind == "broadcast":
        return fn(arg, step.root, name=step.name)
    if step.kind == "alltoall":
        splits = None if step.splits is None else list(step.splits[rank])
        return fn(arg, splits=splits, name=step.name)
    return fn(arg, name=step.name)


def _check(step: plan.Step, xs: list[np.ndarray], result: Any, n: int, rank: int) -> list[str]:
    """What is wrong with one step's result on this rank (nothing: an empty list)."""
    context = f"rank {rank}, n {n}, {step}"
    if step.kind == "barrier":
        return [] if result is None else [f"{context}: barrier returned {result!r}"]
    received = None
    if step.kind == "alltoall":
        result, received = result
    outs = list(result) if step.kind.startswith("grouped") else [result]
    want, want_received = plan.expected(step, n, rank)
    if len(outs) != len(want):
        return [f"{context}: {len(outs)} outputs, expected {len(want)}"]
    problems = []
    for m, (out, x, expected) in enumerate(zip(outs, xs, want)):
        try:
            if step.in_place:
                assert out is x, f"{context}: member {m} is not the argument itself"
            else:
                assert not np.shares_memory(out, x), f"{context}: member {m} shares its input"
                ref.assert_bits_equal(x, plan.step_input(step, m, rank), f"{context}: input {m}")
            if step.kind in plan.REDUCING and not step.random:
                ref.assert_exact(out, expected, f"{context}, member {m}")
            else:
                ref.assert_bits_equal(out, expected, f"{context}, member {m}")
            if received is not None:
                ref.assert_exact(np.asarray(received), want_received, f"{context}: splits")
        except AssertionError as exc:
            problems.append(str(exc)[:1500])
    return problems


def _run_batch(seed: int, index: int, batch: tuple[plan.Step, ...], rank: int, n: int) -> list:
    gen = np.random.default_rng([seed, 11, index, rank])
    inputs: dict[int, list[np.ndarray]] = {}
    pending: dict[int, Any] = {}
    results: dict[int, Any] = {}
    problems: list[str] = []
    step = None
    try:
        for position in plan.rank_order(seed, index, batch, rank):
            step = batch[position]
            xs = [plan.step_input(step, m, rank) for m in range(len(step.rows))]
            inputs[position] = xs
            issued = _call(step, xs, rank)
            if step.blocking:
                results[position] = issued
            else:
                pending[position] = issued
        positions = list(pending)
        for j in gen.permutation(len(positions)):
            if gen.random() < 0.2:
                rf.poll(pending[positions[j]])  # either answer; must disturb nothing
        for j in gen.permutation(len(positions)):
            step = batch[positions[j]]
            handle = pending[positions[j]]
            results[positions[j]] = rf.synchronize(handle)
            if rf.poll(handle) is not True:
                problems.append(f"rank {rank}, {step}: poll() after synchronize() is not True")
    except rf.Error as exc:
        raise AssertionError(
            f"rank {rank}: seed {seed}, n {n}, batch {index}, while at {step}: {exc!r}"
        ) from exc
    for position, step in enumerate(batch):
        problems += _check(step, inputs[position], results[position], n, rank)
    return problems


def run_batches(seed: int, n_ops: int, start: int, stop: int) -> dict[str, Any]:
    """Run batches [start, stop) of ``schedule(seed, size, n_ops)`` on this rank.

    Returns the mismatch count and the first descriptions, the ops and input bytes issued, the
    seconds spent, and `resources` at the end.
    """
    rank, n = rf.rank(), rf.size()
    batches = plan.schedule(seed, n, n_ops)
    began = time.perf_counter()
    problems: list[str] = []
    mismatches = ops = nbytes = 0
    for index in range(start, stop):
        found = _run_batch(seed, index, batches[index], rank, n)
        mismatches += len(found)
        problems += found[: MAX_REPORTED - len(problems)]
        ops += len(batches[index])
        nbytes += sum(step.input_bytes(rank) for step in batches[index])
    return {
        "mismatches": mismatches,
        "problems": problems,
        "ops": ops,
        "bytes": nbytes,
        "seconds": time.perf_counter() - began,
        "resources": resources(),
    }
