"""GPU check of ringflow's CUDA kernels (issue 14): correctness, then the reduce bandwidth.

Correctness: `_core._cuda_kernel` on CuPy buffers, bit for bit against the numpy rules of
tests/kernel_reference.py (the ones the CPU tests hold the host reference to):
reduce_fold for every dtype x op x sizes {0, 1, 7, 1023, 2^20+3, 64 MiB} x fold widths {2, 4},
with aligned buffers, every buffer one element off 16 bytes (scalar head), the output aligned
but the inputs not (all scalar) and in place; scale, divide, cast and batched_copy likewise. A
guard after each output must stay untouched.

Benchmark: out = a + b on 256 MiB float32 and bfloat16 (one launch, timed with CUDA events over
back-to-back launches) against cudaMemcpyAsync device-to-device in the same run, both counted
as bytes read + written; target ratio >= 0.85.

    kernels.py --out FILE [--host] [--quick]

--host runs everything on the host reference path with numpy buffers (tests the script itself
on a machine without a GPU; no benchmark); --quick keeps only sizes up to 1023 (for the CPU test
of this script). Writes a JSON dict to
FILE and prints a short summary. Exit status: 0 all equal, 1 a mismatch or an error, 77 skipped
(cuda_available() is False and --host not given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.kernel_reference, when run from anywhere

import numpy as np  # noqa: E402
from tests import kernel_reference as kr  # noqa: E402

MiB = 1 << 20
BIG_BYTES = 64 * MiB
SIZES = (0, 1, 7, 1023, 2**20 + 3)
WIDTHS = (2, 4)
VARIANT_SIZES = (1023, 2**20 + 3)  # also run one element off, mixed alignment, in place
GUARD = 64  # bytes after each output that must stay as filled
FILL = 0x5A
FACTORS = (0.5, 2.5, -1.75, 1e30, float("nan"))
DIVISORS = (2, 3, 7)
BENCH_BYTES = 256 * MiB
BENCH_LAUNCHES = 20
TARGET_RATIO = 0.85


class HostBuffers:
    """Buffers as numpy bytes, kernels through the host reference (for --host)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def upload(self, x: np.ndarray) -> np.ndarray:
        return x.view(np.uint8).copy()

    def alloc(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)

    def address(self, buf: np.ndarray, offset: int = 0) -> int:
        return buf.ctypes.data + offset

    def fill(self, buf: np.ndarray, value: int) -> None:
        buf[:] = value

    def copy(self, dst: np.ndarray, src: np.ndarray, nbytes: int) -> None:
        dst[:nbytes] = src[:nbytes]

    def download(self, buf: np.ndarray, offset: int, nbytes: int) -> np.ndarray:
        return buf[offset : offset + nbytes].copy()

    def run(self, name: str, **kwargs: Any) -> None:
        self.core._cuda_reference(name, **kwargs)


class DeviceBuffers:
    """CuPy byte buffers on one non-blocking stream; only copies and memsets, never a CuPy
    kernel (which would compile with NVRTC on a fresh machine)."""

    def __init__(self, core: Any, cupy: Any) -> None:
        self.core, self.cp = core, cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.stream.use()

    def upload(self, x: np.ndarray) -> Any:
        return self.cp.asarray(x.view(np.uint8))

    def alloc(self, nbytes: int) -> Any:
        return self.cp.empty(nbytes, self.cp.uint8)

    def address(self, buf: Any, offset: int = 0) -> int:
        return int(buf.data.ptr) + offset

    def fill(self, buf: Any, value: int) -> None:
        buf.data.memset_async(value, buf.nbytes, self.stream)

    def copy(self, dst: Any, src: Any, nbytes: int) -> None:
        dst.data.copy_from_device_async(src.data, nbytes, self.stream)

    def download(self, buf: Any, offset: int, nbytes: int) -> np.ndarray:
        out = buf[offset : offset + nbytes].get(stream=self.stream)
        self.stream.synchronize()
        return out

    def run(self, name: str, **kwargs: Any) -> None:
        self.core._cuda_kernel(name, stream=self.stream.ptr, **kwargs)


class Checker:
    def __init__(self, buffers: Any, core: Any, big_bytes: int) -> None:
        self.b, self.core, self.big_bytes = buffers, core, big_bytes
        self.checks = 0
        self.mismatches: list[str] = []

    def sizes(self, itemsize: int) -> list[int]:
        big = self.big_bytes // itemsize
        return [s for s in SIZES if s <= big] + ([big] if big > SIZES[-1] else [])

    def expect(self, what: str, out: np.ndarray, want: np.ndarray, guard: np.ndarray) -> None:
        self.checks += 1
        bad = kr.first_difference(out, want)
        if bad is not None:
            self.mismatches.append(f"{what}: element {bad} is {out[bad]!r}, want {want[bad]!r}")
        elif np.any(guard != FILL):
            self.mismatches.append(f"{what}: wrote past the end (guard bytes changed)")

    def result(self, dst: Any, offset: int, count: int, dtype: np.dtype) -> tuple[np.ndarray, Any]:
        raw = self.b.download(dst, offset, count * dtype.itemsize + GUARD)
        return raw[: count * dtype.itemsize].view(dtype), raw[count * dtype.itemsize :]

    def reduce_fold(self, name: str, srcs: list[np.ndarray], dev: list[Any], dst: Any) -> None:
        dt, core_dtype = kr.storage(name), getattr(self.core.DType, name)
        wide = [kr.widen(name, s) for s in srcs]
        for op in kr.OPS:
            for width in WIDTHS:
                want = kr.fold(name, op, srcs[:width], wide[:width])
                for size in self.sizes(dt.itemsize):
                    variants = ["aligned"]
                    if size in VARIANT_SIZES:
                        variants += ["offset", "mixed", "in_place"]
                    for variant in variants:
                        shift = 0 if variant in ("aligned", "in_place") else 1
                        out_shift = 1 if variant == "offset" else 0
                        self.b.fill(dst, FILL)
                        inputs = [self.b.address(d, shift * dt.itemsize) for d in dev[:width]]
                        if variant == "in_place":
                            self.b.copy(dst, dev[0], size * dt.itemsize)
                            inputs[0] = self.b.address(dst)
                        self.b.run(
                            "reduce_fold",
                            dst=self.b.address(dst, out_shift * dt.itemsize),
                            srcs=inputs,
                            count=size,
                            dtype=core_dtype,
                            op=getattr(self.core.ReduceOp, op),
                        )
                        out, guard = self.result(dst, out_shift * dt.itemsize, size, dt)
                        what = f"reduce_fold {name} {op} width {width} size {size} {variant}"
                        self.expect(what, out, want[shift : shift + size], guard)

    def arithmetic(self, name: str, x: np.ndarray, dev_x: Any, dst: Any) -> None:
        """scale and divide in place; the largest size only for the first factor / divisor (the
        numpy side of the 64 MiB case costs seconds, the kernel path is the same)."""
        dt, core_dtype = kr.storage(name), getattr(self.core.DType, name)
        small = x[: SIZES[-1] + 1]
        cases = [("scale", f, {"factor": f}) for f in FACTORS]
        cases += [("divide", d, {"divisor": d}) for d in DIVISORS]
        for index, (kernel, arg, kwargs) in enumerate(cases):
            full = index in (0, len(FACTORS))
            rule = kr.scale if kernel == "scale" else kr.divide
            want = rule(name, x if full else small, arg)
            for size in self.sizes(dt.itemsize):
                if size + 1 > want.size:
                    continue
                for shift in (0, 1) if size in VARIANT_SIZES else (0,):
                    self.b.fill(dst, FILL)
                    self.b.copy(dst, dev_x, (size + shift) * dt.itemsize)
                    self.b.run(
                        kernel,
                        dst=self.b.address(dst, shift * dt.itemsize),
                        count=size,
                        dtype=core_dtype,
                        **kwargs,
                    )
                    out, guard = self.result(dst, shift * dt.itemsize, size, dt)
                    what = f"{kernel} {name} by {arg} size {size} shift {shift}"
                    self.expect(what, out, want[shift : shift + size], guard)

    def cast(self, src_name: str, dst_name: str, x: np.ndarray, dev_x: Any, dst: Any) -> None:
        want = kr.cast(dst_name, x)
        dt = kr.storage(dst_name)
        src_size = kr.storage(src_name).itemsize
        for size in self.sizes(max(dt.itemsize, src_size)):
            for shift in (0, 1) if size in VARIANT_SIZES else (0,):
                self.b.fill(dst, FILL)
                self.b.run(
                    "cast",
                    dst=self.b.address(dst, shift * dt.itemsize),
                    srcs=[self.b.address(dev_x, shift * src_size)],
                    count=size,
                    dtype=getattr(self.core.DType, dst_name),
                    src_dtype=getattr(self.core.DType, src_name),
                )
                out, guard = self.result(dst, shift * dt.itemsize, size, dt)
                what = f"cast {src_name} -> {dst_name} size {size} shift {shift}"
                self.expect(what, out, want[shift : shift + size], guard)

    def batched_copy(self, src: np.ndarray, dev_src: Any, dst: Any) -> None:
        rng = np.random.default_rng(3)
        raw = src.view(np.uint8)
        lengths = [0, 1, 15, 16, 17, 65535, 65537, 3 * MiB + 5, *rng.integers(0, 5000, 400)]
        want = np.full(dst.nbytes, FILL, np.uint8)
        regions, cursor = [], 0
        for length in lengths:
            length = int(min(length, raw.size // 2))
            start = int(rng.integers(0, raw.size - length + 1))
            cursor += int(rng.integers(0, 17))
            if cursor + length > want.size:
                break
            regions.append((self.b.address(dst, cursor), self.b.address(dev_src, start), length))
            want[cursor : cursor + length] = raw[start : start + length]
            cursor += length
        self.b.fill(dst, FILL)
        self.b.run("batched_copy", regions=regions)
        out = self.b.download(dst, 0, want.size)
        self.expect(f"batched_copy of {len(regions)} regions", out, want, np.full(1, FILL))


def correctness(buffers: Any, core: Any, big_bytes: int) -> Checker:
    check = Checker(buffers, core, big_bytes)
    spare = 16 + GUARD  # room for the one-element shift and the guard
    keep: dict[str, tuple[np.ndarray, Any]] = {}
    for index, name in enumerate(kr.DTYPES):
        count = big_bytes // kr.storage(name).itemsize + 1
        srcs = kr.inputs(name, count, max(WIDTHS), seed=100 + index)
        dev = [buffers.upload(s) for s in srcs]
        dst = buffers.alloc(count * kr.storage(name).itemsize + spare)
        check.reduce_fold(name, srcs, dev, dst)
        if name != "bool":
            check.arithmetic(name, srcs[0], dev[0], dst)
        if name in ("float32", "float16", "bfloat16"):
            keep[name] = (srcs[0], dev[0])
        if name == "uint8":
            check.batched_copy(srcs[0], dev[0], dst)
        del dev, dst
    f32, dev_f32 = keep["float32"]
    for narrow in ("float16", "bfloat16"):
        x, dev_x = keep[narrow]
        dst = buffers.alloc(f32.nbytes + spare)
        check.cast("float32", narrow, f32, dev_f32, dst)
        check.cast(narrow, "float32", x, dev_x, dst)
    return check


def bandwidth(core: Any, cp: Any) -> dict[str, Any]:
    """out = a + b against a device-to-device copy, in bytes read + written per second."""
    stream = cp.cuda.Stream(non_blocking=True)
    a, b, out = (cp.empty(BENCH_BYTES, cp.uint8) for _ in range(3))
    for buf, value in ((a, 0x3F), (b, 0x40), (out, 0)):
        buf.data.memset_async(value, BENCH_BYTES, stream)

    def seconds_each(launch) -> float:
        for _ in range(3):
            launch()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(BENCH_LAUNCHES):
            launch()
        end.record(stream)
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1e3 / BENCH_LAUNCHES

    copy_s = seconds_each(lambda: out.data.copy_from_device_async(a.data, BENCH_BYTES, stream))
    copy_rate = 2 * BENCH_BYTES / copy_s
    figures: dict[str, Any] = {"bytes": BENCH_BYTES, "copy_GBps": round(copy_rate / 1e9, 1)}
    for name in ("float32", "bfloat16"):
        count = BENCH_BYTES // kr.storage(name).itemsize
        kwargs = {
            "dst": int(out.data.ptr),
            "srcs": [int(a.data.ptr), int(b.data.ptr)],
            "count": count,
            "dtype": getattr(core.DType, name),
            "op": core.ReduceOp.Sum,
            "stream": stream.ptr,
            "synchronize": False,
        }
        reduce_s = seconds_each(lambda kwargs=kwargs: core._cuda_kernel("reduce_fold", **kwargs))
        rate = 3 * BENCH_BYTES / reduce_s
        figures[name] = {
            "reduce_GBps": round(rate / 1e9, 1),
            "ratio": round(rate / copy_rate, 3),
            "target": TARGET_RATIO,
            "met": rate / copy_rate >= TARGET_RATIO,
        }
    stream.synchronize()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON results file")
    parser.add_argument("--host", action="store_true", help="host reference path, no GPU")
    parser.add_argument("--quick", action="store_true", help="sizes up to 1023 only")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result: dict[str, Any] = {"mode": "host" if args.host else "device"}

    def finish(status: str, code: int, summary: list[str]) -> int:
        result.update(status=status, seconds=round(time.monotonic() - started, 1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        for line in summary:
            print(f"kernels: {line}")
        return code

    from ringflow import _core

    result.update(cuda_built=_core.cuda_built(), cuda_devices=_core.cuda_device_count())
    if not args.host and not _core.cuda_available():
        why = "built without CUDA" if not _core.cuda_built() else "no CUDA driver or GPU"
        result["reason"] = f"skipped: cuda_available() is False ({why})"
        return finish("skipped", 77, [result["reason"]])
    big_bytes = 64 << 10 if args.quick else BIG_BYTES
    try:
        if args.host:
            buffers: Any = HostBuffers(_core)
        else:
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"]
            result["device"] = name.decode() if isinstance(name, bytes) else str(name)
            buffers = DeviceBuffers(_core, cupy)
        check = correctness(buffers, _core, big_bytes)
        result.update(checks=check.checks, mismatches=check.mismatches[:50])
        result["mismatch_count"] = len(check.mismatches)
        result["correctness_seconds"] = round(time.monotonic() - started, 1)
        if not args.host:
            del buffers
            result["bandwidth"] = bandwidth(_core, cupy)
    except Exception as exc:  # recorded in the JSON, then a failed exit
        result["error"] = f"{type(exc).__name__}: {exc}"
        return finish("failed", 1, [f"error: {result['error']}"])
    summary = [f"{check.checks} checks, {len(check.mismatches)} mismatches ({result['mode']})"]
    summary += check.mismatches[:5]
    for name, fig in result.get("bandwidth", {}).items():
        if isinstance(fig, dict):
            summary.append(
                f"a+b {name}: {fig['reduce_GBps']} GB/s = {fig['ratio']:.0%} of the D2D copy "
                f"rate {result['bandwidth']['copy_GBps']} GB/s (target {TARGET_RATIO:.0%})"
            )
    ok = not check.mismatches
    return finish("passed" if ok else "failed", 0 if ok else 1, summary)


if __name__ == "__main__":
    sys.exit(main())
