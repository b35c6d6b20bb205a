"""Rank-side checks of the numpy-level collectives on CUDA arrays (CuPy and torch).

One `Case` is one call: collective x framework x dtype x op x size. Every rank rebuilds every
rank's input from the case's seed (tests/reference.py), runs the call on a CUDA array, and
checks its own result on the host:

- integers, and floats on inputs where the order cannot matter: exact against numpy;
- floats on random positive inputs (Sum, Average, Product): within `ref.float_rtol` of the
  float64 reference; scaled calls: bit for bit equal to the same call on the host path;
- every float result bit-identical on all ranks (a digest of the result bytes is allgathered
  through ringflow's host path; on a mismatch the bytes themselves are, to name the first
  difference); integer results are exact against numpy, hence equal everywhere;
- the result is the input's framework type on the input's device; out-of-place calls leave the
  input untouched and return a new array; in-place calls return the input object itself.

`run_cases` runs a list of cases and returns the failures as text, so that pytest (through
tests/harness.py) and the device check (tools/device_check/collectives.py, under `ringflow
run`) share every check. A ringflow error that poisons the job stops the list.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import ringflow as rf
from tests import reference as ref
from tests.gpu import arrays

LARGE = 2**20 + 3
SIZES = (0, 1, 7, 1023, LARGE)
SMALL_SIZES = (0, 1, 7, 1023)
REDUCING = ("allreduce", "allreduce_", "grouped_allreduce", "reducescatter")
COPYING = ("broadcast", "broadcast_", "allgather", "alltoall", "sendrecv")
COLLECTIVES = (*REDUCING, "allreduce_scaled", *COPYING, "barrier")
SCALED_OPS = ("Sum", "Average")
PRESCALE, POSTSCALE = 0.5, 4.0
_MAX_TEXT = 700


@dataclass(frozen=True)
class Case:
    """One call to check (op is '' for collectives that do not reduce)."""

    collective: str
    framework: str
    dtype: str
    size: int
    op: str = ""

    def label(self, n: int) -> str:
        op = f" {self.op}" if self.op else ""
        return f"{self.collective} {self.framework} {self.dtype}{op} size {self.size} n {n}"

    def seed(self, n: int) -> int:
        return ref.seed_of(
            "gpu", self.collective, self.framework, self.dtype, self.op, self.size, n
        )


def matrix(
    n: int,
    frameworks: tuple[str, ...] = arrays.FRAMEWORKS,
    sizes: tuple[int, ...] = SIZES,
    collectives: tuple[str, ...] = COLLECTIVES,
    dtypes: tuple[str, ...] = arrays.DTYPES,
    large_ops: tuple[str, ...] | None = None,
) -> list[Case]:
    """Every case of these collectives for world size n (the same list on every rank).

    large_ops: if given, the only ops of the reducing collectives at LARGE elements or more
    (the device check's time budget: what depends on the size does not depend on the op).
    """
    cases = []
    for framework in frameworks:
        for dtype in dtypes:
            if not arrays.supports(framework, dtype):
                continue
            for collective in collectives:
                if collective == "barrier" or (collective == "sendrecv" and n < 2):
                    continue
                ops = ref.OPS if collective in REDUCING else ("",)
                ops = SCALED_OPS if collective == "allreduce_scaled" else ops
                for size in sizes:
                    chosen = ops
                    if large_ops is not None and size >= LARGE and collective in REDUCING:
                        chosen = tuple(op for op in ops if op in large_ops)
                    elif (
                        large_ops is not None and size >= LARGE and collective == "allreduce_scaled"
                    ):
                        chosen = ops[:1]
                    cases += [Case(collective, framework, dtype, size, op) for op in chosen]
    if "barrier" in collectives:
        cases.append(Case("barrier", "none", "uint8", 0))  # no array involved
    return cases


# -- helpers --------------------------------------------------------------------------------------


def _kind(dtype_name: str, op: str) -> str:
    """'positive' (checked within a tolerance) for float Sum/Average/Product, else 'exact'."""
    if dtype_name in ref.FLOAT_DTYPES and op in ("Sum", "Average", "Product"):
        return "positive"
    return "exact"


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _check(problems: list[str], fn: Callable[[], None]) -> None:
    """Run an assertion from tests/reference.py, keeping its message instead of raising."""
    try:
        fn()
    except AssertionError as error:
        problems.append(_short(str(error)))


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(ref.bits(a), ref.bits(b))


def _pointer(x: Any) -> int:
    """The device address of a torch tensor or CuPy array (-1 for anything else)."""
    if hasattr(x, "data_ptr"):
        return int(x.data_ptr())
    if type(x).__module__.startswith("cupy"):
        return int(x.data.ptr)
    return -1


def same_on_all_ranks(result: np.ndarray, name: str) -> str:
    """'' if every rank holds the same bytes (and shape) as this one, else the difference.

    Called by every rank for every checked result, in the same order: the allgathers pair up.
    """
    raw = np.ascontiguousarray(result).reshape(-1).view(np.uint8)
    digest = hashlib.sha256(repr((result.shape, str(result.dtype))).encode() + raw.tobytes())
    digests = rf.allgather(np.frombuffer(digest.digest(), np.uint8).copy(), name=f"{name}.digest")
    rows = digests.reshape(-1, 32)
    if all(np.array_equal(row, rows[0]) for row in rows):
        return ""
    everything = rf.allgather(raw, name=f"{name}.bytes")
    mine, start = rf.rank(), 0
    sizes = rf.allgather(np.array([raw.size], np.int64), name=f"{name}.sizes")
    parts = []
    for size in sizes.tolist():
        parts.append(everything[start : start + size])
        start += size
    for rank, part in enumerate(parts):
        if not np.array_equal(part, parts[0]):
            if part.size != parts[0].size:
                return f"rank {rank} result has {part.size} bytes, rank 0 {parts[0].size}"
            first = int(np.flatnonzero(part != parts[0])[0])
            return (
                f"rank {rank} result differs from rank 0 (this is rank {mine}) first at byte "
                f"{first}: {part[first]} != {parts[0][first]}"
            )
    return "result digests differ between ranks"


class _Context:
    """What one case's check needs: world, device, the case's inputs."""

    def __init__(self, case: Case, index: int, device: int) -> None:
        self.case = case
        self.n = rf.size()
        self.rank = rf.rank()
        self.device = device
        self.name = f"gpu{index}.{case.collective}"
        self.seed = case.seed(self.n)
        self.problems: list[str] = []

    def on_device(self, host: np.ndarray) -> Any:
        return arrays.to_device(host, self.case.framework, self.device)

    def expect_kind(self, result: Any, what: str) -> bool:
        problem = arrays.kind_problem(result, self.case.framework, self.device, what)
        if problem:
            self.problems.append(problem)
        return not problem

    def untouched(self, dev: Any, host: np.ndarray) -> None:
        if not _bits_equal(arrays.to_host(dev), host):
            self.problems.append("the call modified its input")

    def distinct(self, result: Any, dev: Any) -> None:
        same = self.case.size and _pointer(result) == _pointer(dev) != -1
        if result is dev or same:
            self.problems.append("an out-of-place call returned its input's memory")

    def reduction_inputs(self, shape: tuple[int, ...]) -> tuple[str, list[np.ndarray]]:
        kind = _kind(self.case.dtype, self.case.op)
        make = ref.reduction_input
        return kind, [
            make(kind, self.seed, r, shape, self.case.dtype, self.case.op) for r in range(self.n)
        ]

    def compare_reduced(self, got: np.ndarray, inputs: list[np.ndarray], kind: str, block=None):
        """got against the reduction of inputs (block: this rank's reducescatter block)."""
        op, dt = self.case.op, inputs[0].dtype

        def cut(full: np.ndarray) -> np.ndarray:
            return full if block is None else ref.reducescatter_block(full, self.n, self.rank)

        if kind == "exact":
            expected = cut(ref.allreduce_exact(inputs, op))
            _check(self.problems, lambda: ref.assert_exact(got, expected, self.case.label(self.n)))
        else:
            expected64 = cut(ref.allreduce_float64(inputs, op))
            rtol = ref.float_rtol(dt, self.n)
            _check(
                self.problems,
                lambda: ref.assert_close(got, expected64, dt, rtol, self.case.label(self.n)),
            )

    def all_ranks_agree(self, got: np.ndarray, suffix: str = "") -> None:
        """Floats only: integer results are exact against numpy, hence equal everywhere."""
        if not ref.is_float(got.dtype):
            return
        problem = same_on_all_ranks(got, self.name + suffix)
        if problem:
            self.problems.append(problem)


# -- one function per collective -----------------------------------------------------------------


def _allreduce(c: _Context, in_place: bool) -> None:
    kind, inputs = c.reduction_inputs((c.case.size,))
    dev = c.on_device(inputs[c.rank])
    op = getattr(rf, c.case.op)
    if in_place:
        result = rf.allreduce_(dev, op=op, name=c.name)
        if result is not dev:
            c.problems.append("allreduce_ did not return its argument")
        result = dev
    else:
        result = rf.allreduce(dev, op=op, name=c.name)
        c.untouched(dev, inputs[c.rank])
        c.distinct(result, dev)
    if c.expect_kind(result, "result"):
        got = arrays.to_host(result)
        c.compare_reduced(got, inputs, kind)
        c.all_ranks_agree(got)


def _allreduce_scaled(c: _Context) -> None:
    """prescale/postscale on exact inputs: bit for bit the host path's result."""
    shape, op = (c.case.size,), getattr(rf, c.case.op)
    mine = ref.exact_input(c.seed, c.rank, shape, c.case.dtype, c.case.op)
    scaling = {"prescale_factor": PRESCALE, "postscale_factor": POSTSCALE}
    result = rf.allreduce(c.on_device(mine), op=op, name=c.name, **scaling)
    host = rf.allreduce(mine.copy(), op=op, name=c.name + ".host", **scaling)
    if c.expect_kind(result, "result"):
        got = arrays.to_host(result)
        if not _bits_equal(got, host):
            wrong = (
                int(np.count_nonzero(ref.bits(got) != ref.bits(host)))
                if got.shape == host.shape
                else -1
            )
            c.problems.append(f"differs from the host path in {wrong} elements")
        c.all_ranks_agree(got)


def _grouped_allreduce(c: _Context) -> None:
    shapes = [(c.case.size,), (c.case.size // 2 + 1,), (3,)]
    grouped = [c.reduction_inputs(shape) for shape in shapes]
    devs = [c.on_device(inputs[c.rank]) for _, inputs in grouped]
    results = rf.grouped_allreduce(devs, op=getattr(rf, c.case.op), name=c.name)
    if len(results) != len(devs):
        c.problems.append(f"{len(results)} results for {len(devs)} tensors")
        return
    for i, (result, (kind, inputs)) in enumerate(zip(results, grouped)):
        if c.expect_kind(result, f"result {i}"):
            got = arrays.to_host(result)
            c.compare_reduced(got, inputs, kind)
            c.all_ranks_agree(got, f".{i}")


def _reducescatter(c: _Context) -> None:
    kind, inputs = c.reduction_inputs((c.case.size,))
    dev = c.on_device(inputs[c.rank])
    result = rf.reducescatter(dev, op=getattr(rf, c.case.op), name=c.name)
    c.untouched(dev, inputs[c.rank])
    if c.expect_kind(result, "result"):
        c.compare_reduced(arrays.to_host(result), inputs, kind, block=True)


def _broadcast(c: _Context, in_place: bool) -> None:
    root = c.n - 1
    inputs = [ref.bit_patterns(c.seed, r, (c.case.size,), c.case.dtype) for r in range(c.n)]
    dev = c.on_device(inputs[c.rank])
    if in_place:
        result = rf.broadcast_(dev, root, name=c.name)
        if result is not dev:
            c.problems.append("broadcast_ did not return its argument")
        result = dev
    else:
        result = rf.broadcast(dev, root, name=c.name)
        c.untouched(dev, inputs[c.rank])
        c.distinct(result, dev)
    if c.expect_kind(result, "result"):
        got = arrays.to_host(result)
        _check(c.problems, lambda: ref.assert_bits_equal(got, inputs[root], c.case.label(c.n)))


def _allgather(c: _Context) -> None:
    """First dimensions differ by rank (size + rank rows)."""
    inputs = [ref.bit_patterns(c.seed, r, (c.case.size + r,), c.case.dtype) for r in range(c.n)]
    dev = c.on_device(inputs[c.rank])
    result = rf.allgather(dev, name=c.name)
    c.untouched(dev, inputs[c.rank])
    if c.expect_kind(result, "result"):
        got, expected = arrays.to_host(result), np.concatenate(inputs)
        _check(c.problems, lambda: ref.assert_bits_equal(got, expected, c.case.label(c.n)))


def _alltoall(c: _Context) -> None:
    rows = c.case.size
    inputs = [ref.bit_patterns(c.seed, r, (rows,), c.case.dtype) for r in range(c.n)]
    splits = [ref.alltoall_splits(c.seed, r, c.n, rows) for r in range(c.n)]
    dev = c.on_device(inputs[c.rank])
    result, received = rf.alltoall(dev, splits=splits[c.rank], name=c.name)
    c.untouched(dev, inputs[c.rank])
    expected, expected_splits = ref.alltoall_expected(inputs, splits, c.rank)
    got_splits = np.asarray(
        received if isinstance(received, np.ndarray) else arrays.to_host(received)
    )
    if got_splits.tolist() != expected_splits.tolist():
        c.problems.append(f"received splits {got_splits.tolist()} != {expected_splits.tolist()}")
    if c.expect_kind(result, "result"):
        got = arrays.to_host(result)
        _check(c.problems, lambda: ref.assert_bits_equal(got, expected, c.case.label(c.n)))


def _sendrecv(c: _Context) -> None:
    """Pairs (0, 1), (2, 3), ...: the lower rank sends first. An odd last rank sits out."""
    partner = c.rank ^ 1
    if partner >= c.n:
        return
    mine = ref.bit_patterns(c.seed, c.rank, (c.case.size,), c.case.dtype)
    theirs = ref.bit_patterns(c.seed, partner, (c.case.size,), c.case.dtype)
    dev = c.on_device(mine)
    buf = arrays.empty((c.case.size,), c.case.dtype, c.case.framework, c.device)
    if c.rank < partner:
        rf.send(dev, partner, name=c.name)
        got = rf.recv(buf, partner, name=c.name)
    else:
        got = rf.recv(buf, partner, name=c.name)
        rf.send(dev, partner, name=c.name)
    if got is not buf:
        c.problems.append("recv did not return its buffer")
    _check(
        c.problems, lambda: ref.assert_bits_equal(arrays.to_host(buf), theirs, c.case.label(c.n))
    )


def _barrier(c: _Context) -> None:
    rf.barrier()


_CHECKS: dict[str, Callable[[_Context], None]] = {
    "allreduce": lambda c: _allreduce(c, False),
    "allreduce_": lambda c: _allreduce(c, True),
    "allreduce_scaled": _allreduce_scaled,
    "grouped_allreduce": _grouped_allreduce,
    "reducescatter": _reducescatter,
    "broadcast": lambda c: _broadcast(c, False),
    "broadcast_": lambda c: _broadcast(c, True),
    "allgather": _allgather,
    "alltoall": _alltoall,
    "sendrecv": _sendrecv,
    "barrier": _barrier,
}


def _poisons(error: BaseException) -> bool:
    return isinstance(error, (rf.PeerFailureError, rf.TimeoutError))


def run_cases(cases: list[Case]) -> dict[str, Any]:
    """Run every case on this rank; returns counts and the failures (at most 50, as text)."""
    device = arrays.select_device(rf.local_rank())
    n = rf.size()
    failures: list[str] = []
    counts: dict[str, list[int]] = {}
    start = time.monotonic()
    aborted = ""
    for index, case in enumerate(cases):
        tally = counts.setdefault(case.collective, [0, 0])
        tally[1] += 1
        context = _Context(case, index, device)
        try:
            _CHECKS[case.collective](context)
        except Exception as error:  # the case failed; a poisoned job ends the list
            context.problems.append(f"raised {type(error).__name__}: {_short(str(error))}")
            if _poisons(error):
                aborted = f"stopped after {case.label(n)}: the job is poisoned"
        if context.problems:
            if len(failures) < 50:
                failures.append(
                    f"rank {rf.rank()}: {case.label(n)}: " + "; ".join(context.problems)
                )
        else:
            tally[0] += 1
        if aborted:
            break
    failed = sum(total - passed for passed, total in counts.values())
    return {
        "rank": rf.rank(),
        "size": n,
        "device": device,
        "cases": len(cases),
        "run": sum(total for _, total in counts.values()),
        "failed": failed,
        "by_collective": counts,
        "failures": failures,
        "aborted": aborted,
        "seconds": round(time.monotonic() - start, 3),
    }
