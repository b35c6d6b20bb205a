"""The CUDA kernels' math on the CPU: their host reference path (`_core._cuda_reference`, which
shares csrc/ringflow/cuda/element_math.h with the kernels) against the numpy rules in
tests/kernel_reference.py, bit for bit; scale/divide against the CPU collectives' scale_by /
Average; and the build facts (the extension imports; cuda_available() is False without a GPU).
tools/device_check/kernels.py runs the same rules against the kernels on a GPU."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ringflow as rf
from ringflow import _core
from tests import kernel_reference as kr

SIZES = (0, 1, 7, 1023, 2**20 + 3)
WIDTHS = (1, 2, 3, 4, 8)


def address(x: np.ndarray) -> int:
    return x.ctypes.data


def core_dtype(name: str):
    return getattr(_core.DType, name)


@functools.lru_cache(maxsize=2)
def fold_inputs(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Eight inputs of the largest size (smaller sizes are prefixes) and their widened copies."""
    srcs = kr.inputs(name, SIZES[-1], max(WIDTHS), seed=kr.DTYPES.index(name))
    return srcs, [kr.widen(name, s) for s in srcs]


def describe(name: str, op: str, width: int, size: int, i: int, srcs, got, want) -> str:
    values = [s[i] for s in srcs[:width]]
    return (
        f"{name} {op} width {width} size {size}: element {i} of {values} gave {got[i]!r}, "
        f"want {want[i]!r}"
    )


@pytest.mark.parametrize("op", kr.OPS)
@pytest.mark.parametrize("name", kr.DTYPES)
def test_reduce_fold(name, op):
    srcs, wide = fold_inputs(name)
    for width in WIDTHS:
        want_full = kr.fold(name, op, srcs[:width], wide[:width])
        for size in SIZES:
            out = np.full(size * kr.storage(name).itemsize, 0x5A, np.uint8).view(kr.storage(name))
            _core._cuda_reference(
                "reduce_fold",
                address(out),
                [address(s) for s in srcs[:width]],
                size,
                core_dtype(name),
                getattr(_core.ReduceOp, op),
            )
            bad = kr.first_difference(out, want_full[:size])
            assert bad is None, describe(name, op, width, size, bad, srcs, out, want_full)


@pytest.mark.parametrize("op", kr.OPS)
@pytest.mark.parametrize("name", kr.FLOAT_DTYPES)
def test_reduce_fold_float64_reference(name, op):
    """Values whose every partial result is exact in float32 (integers in [-8, 8], at most 8 of
    them: |product| <= 2^24): the fold equals the float64 result rounded once to the dtype."""
    rng = np.random.default_rng(kr.OPS.index(op))
    srcs = [rng.integers(-8, 9, 4099).astype(kr.storage(name)) for _ in range(max(WIDTHS))]
    for width in WIDTHS:
        out = np.empty(4099, kr.storage(name))
        _core._cuda_reference(
            "reduce_fold",
            address(out),
            [address(s) for s in srcs[:width]],
            out.size,
            core_dtype(name),
            getattr(_core.ReduceOp, op),
        )
        exact = np.stack([s.astype(np.float64) for s in srcs[:width]])
        fn = {"Min": np.min, "Max": np.max, "Product": np.prod}.get(op, np.sum)
        with np.errstate(over="ignore"):
            want = fn(exact, axis=0).astype(kr.storage(name))
        bad = kr.first_difference(out, want)
        assert bad is None, describe(name, op, width, out.size, bad, srcs, out, want)


@pytest.mark.parametrize("name", ["float16", "int64", "bool"])
def test_reduce_fold_in_place(name):
    """dst may be one of the inputs (the ring folds a received chunk into its own)."""
    srcs = [s[:1023].copy() for s in fold_inputs(name)[0][:3]]
    want = kr.fold(name, "Sum", srcs)
    _core._cuda_reference(
        "reduce_fold", address(srcs[1]), [address(s) for s in srcs], 1023, core_dtype(name)
    )
    assert kr.first_difference(srcs[1], want) is None


@pytest.mark.parametrize("factor", [0.5, 2.5, -1.75, 1.0, 1e-3, 1e30, float("nan")])
@pytest.mark.parametrize("name", [d for d in kr.DTYPES if d != "bool"])
def test_scale(name, factor):
    x = kr.inputs(name, 4099, 1, seed=11)[0]
    want = kr.scale(name, x, factor)
    _core._cuda_reference("scale", address(x), count=x.size, dtype=core_dtype(name), factor=factor)
    bad = kr.first_difference(x, want)
    assert bad is None, f"{name} x {factor}: element {bad} gave {x[bad]!r}, want {want[bad]!r}"


@pytest.mark.parametrize("divisor", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("name", [d for d in kr.DTYPES if d != "bool"])
def test_divide(name, divisor):
    x = kr.inputs(name, 4099, 1, seed=12)[0]
    want = kr.divide(name, x, divisor)
    _core._cuda_reference(
        "divide", address(x), count=x.size, dtype=core_dtype(name), divisor=divisor
    )
    bad = kr.first_difference(x, want)
    assert bad is None, f"{name} / {divisor}: element {bad} gave {x[bad]!r}, want {want[bad]!r}"


def test_truncation_literals():
    """Horovod 0.28.1's integer rule: (T)((double)x * factor), truncated toward zero; we saturate
    where the C++ cast would be undefined, and NaN gives 0."""
    cases = [
        ("int32", [7, -7, 5, -5], 0.5, [3, -3, 2, -2]),
        ("int8", [100, -100, 3], 2.5, [127, -128, 7]),
        ("uint8", [200, 3], -1.0, [0, 0]),
        ("int64", [2**62, -(2**62)], 4.0, [2**63 - 1, -(2**63)]),
        ("int16", [1, -1], float("nan"), [0, 0]),
    ]
    for name, values, factor, expected in cases:
        x = np.array(values, kr.storage(name))
        _core._cuda_reference(
            "scale", address(x), count=x.size, dtype=core_dtype(name), factor=factor
        )
        assert x.tolist() == expected, f"{name} {values} x {factor}"
    x = np.array([29, -29, 2**53 + 1], np.int64)
    _core._cuda_reference("divide", address(x), count=3, dtype=_core.DType.int64, divisor=3)
    assert x.tolist() == [9, -9, (2**53 + 1) // 3 - 1]  # 2^53 + 1 is 2^53 in float64
    x = np.array([2**53 + 1], np.int64)  # divisor 1 leaves it alone, exact
    _core._cuda_reference("divide", address(x), count=1, dtype=_core.DType.int64, divisor=1)
    assert x.tolist() == [2**53 + 1]


@pytest.mark.parametrize("narrow", ["float16", "bfloat16"])
def test_cast(narrow):
    rng = np.random.default_rng(5)
    # Random float32 values over the narrow type's range, its specials, and exact ties: the
    # midpoints between neighbouring narrow values (ties go to the even one).
    wide = (rng.standard_normal(50_000) * np.float32(4) ** rng.integers(-12, 12, 50_000)).astype(
        np.float32
    )
    grid = kr.inputs(narrow, 20_000, 1, seed=6)[0]
    grid = grid[np.isfinite(grid.astype(np.float32))]
    neighbour = (kr.unsigned_view(grid) + np.uint16(1)).view(grid.dtype).astype(np.float64)
    ties = ((grid.astype(np.float64) + neighbour) / 2).astype(np.float32)  # exact in float32
    ties = ties[np.isfinite(ties)]
    grid = grid.astype(np.float32)
    specials = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 65504.0, 65520.0, 1e-8, -3e38], np.float32
    )
    src = np.concatenate([wide, grid, ties, specials])
    down = np.empty(src.size, kr.storage(narrow))
    _core._cuda_reference(
        "cast",
        address(down),
        [address(src)],
        src.size,
        core_dtype(narrow),
        src_dtype=_core.DType.float32,
    )
    want = kr.cast(narrow, src)
    bad = kr.first_difference(down, want)
    assert bad is None, f"float32 {src[bad]!r} -> {narrow}: got {down[bad]!r}, want {want[bad]!r}"
    up = np.empty(src.size, np.float32)
    _core._cuda_reference(
        "cast",
        address(up),
        [address(down)],
        src.size,
        _core.DType.float32,
        src_dtype=core_dtype(narrow),
    )
    bad = kr.first_difference(up, kr.cast("float32", down))
    assert bad is None, f"{narrow} {down[bad]!r} -> float32: got {up[bad]!r}"


def test_cast_same_dtype_copies_and_others_refuse():
    src = np.arange(9, dtype=np.float64)
    dst = np.zeros(9, np.float64)
    _core._cuda_reference(
        "cast", address(dst), [address(src)], 9, _core.DType.float64, src_dtype=_core.DType.float64
    )
    assert np.array_equal(dst, src)
    with pytest.raises(rf.InvalidArgumentError, match="float64 to float16 is not supported"):
        _core._cuda_reference(
            "cast",
            address(dst),
            [address(src)],
            9,
            _core.DType.float16,
            src_dtype=_core.DType.float64,
        )


def test_batched_copy():
    """Regions of every length and alignment, empty ones, more than one launch's worth (128);
    bytes outside the regions stay untouched."""
    rng = np.random.default_rng(9)
    src = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    dst = np.zeros(src.size + 4096, np.uint8)
    want = dst.copy()
    regions, cursor = [], 0
    for length in [0, 1, 3, 15, 16, 17, 4095, 65536, 65537, 200_000, *rng.integers(0, 3000, 300)]:
        start = int(rng.integers(0, src.size - length + 1))
        regions.append((address(dst) + cursor, address(src) + start, int(length)))
        want[cursor : cursor + length] = src[start : start + length]
        cursor += int(length) + int(rng.integers(0, 5))
    _core._cuda_reference("batched_copy", regions=regions)
    assert np.array_equal(dst, want)


def test_argument_errors():
    x = np.zeros(4, np.float32)
    with pytest.raises(rf.InvalidArgumentError, match="9 inputs"):
        _core._cuda_reference("reduce_fold", address(x), [address(x)] * 9, 4)
    with pytest.raises(rf.InvalidArgumentError, match="0 inputs"):
        _core._cuda_reference("reduce_fold", address(x), [], 4)
    with pytest.raises(rf.InvalidArgumentError, match="scale: not defined for dtype bool"):
        _core._cuda_reference("scale", address(x), count=4, dtype=_core.DType.bool, factor=2.0)
    with pytest.raises(rf.InvalidArgumentError, match="divisor 0 is not positive"):
        _core._cuda_reference("divide", address(x), count=4, divisor=0)
    with pytest.raises(rf.InvalidArgumentError, match="no CUDA kernel named 'nope'"):
        _core._cuda_reference("nope")


# -- the same math as the CPU collectives' scale_by / divide_by --------------------------------

CPU_PATH_DTYPES = [d for d in kr.DTYPES if d != "bool"]


def _allreduce(per_rank, op, postscale=1.0):
    return rf.allreduce(per_rank[rf.rank()].copy(), op=getattr(rf, op), postscale_factor=postscale)


def _bounded(name: str, seed: int) -> np.ndarray:
    """Values whose scaled results stay in range (saturation is ours alone), no -0."""
    if kr.is_float(name):
        x = kr.inputs(name, 2000, 1, seed)[0]
        return np.where(x == 0, np.zeros(1, x.dtype), x)
    low = 0 if name == "uint8" else -50
    return np.random.default_rng(seed).integers(low, 51, 2000).astype(kr.storage(name))


@pytest.mark.parametrize("name", CPU_PATH_DTYPES)
def test_scale_matches_cpu_scale_by(pools, name):
    """One rank, Sum with a postscale: the CPU path is exactly scale_by(x, factor)."""
    x = _bounded(name, seed=21)
    for factor in (0.5, 2.5, -0.3):
        cpu = pools.call(1, _allreduce, [x], "Sum", factor)[0]
        ours = x.copy()
        _core._cuda_reference(
            "scale", address(ours), count=x.size, dtype=core_dtype(name), factor=factor
        )
        bad = kr.first_difference(ours, cpu)
        assert bad is None, f"{name} x {factor}: {x[bad]!r} gave {ours[bad]!r}, CPU {cpu[bad]!r}"


@pytest.mark.parametrize("name", CPU_PATH_DTYPES)
def test_average_is_scale_by_one_nth(pools, name):
    """Three ranks, Average of (x, -0, -0): the CPU path finishes with scale_by(x, 1/3)
    (Horovod's Average; adding -0 changes no value, not even -0 itself), which the device path
    launches as the scale kernel."""
    x = _bounded(name, seed=22)
    zero = np.zeros_like(x)
    if kr.is_float(name):
        zero = kr.cast(name, np.full(x.size, -0.0, np.float32))
    cpu = pools.call(3, _allreduce, [x, zero, zero], "Average")[0]
    ours = x.copy()
    _core._cuda_reference(
        "scale", address(ours), count=x.size, dtype=core_dtype(name), factor=1.0 / 3.0
    )
    bad = kr.first_difference(ours, cpu)
    assert bad is None, f"{name} / 3: {x[bad]!r} gave {ours[bad]!r}, CPU {cpu[bad]!r}"


# -- build facts ---------------------------------------------------------------------------------


def _nvcc_present() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").exists()


def test_cuda_build_facts():
    """Built with CUDA exactly when nvcc is here (RINGFLOW_CUDA=AUTO, the default); the
    extension imported; without a GPU driver no device is seen and nothing is available."""
    wanted = os.environ.get("RINGFLOW_CUDA", "AUTO").upper()
    if wanted != "OFF":
        assert rf.cuda_built() == (_nvcc_present() or wanted == "ON"), (
            f"cuda_built() is {rf.cuda_built()} with nvcc {'present' if _nvcc_present() else 'absent'}"
        )
    else:
        assert not rf.cuda_built()
    assert rf.cuda_available() == (rf.cuda_built() and _core.cuda_device_count() > 0)
    if not Path("/dev/nvidiactl").exists():  # no NVIDIA driver on this machine
        assert _core.cuda_device_count() == 0
        assert rf.cuda_available() is False


@pytest.mark.skipif(rf.cuda_available(), reason="a GPU is present: tools/device_check/kernels.py")
def test_kernel_without_gpu_raises():
    x = np.zeros(4, np.float32)
    with pytest.raises(rf.InvalidArgumentError, match="no usable CUDA device for kernel 'scale'"):
        _core._cuda_kernel("scale", address(x), count=4, factor=2.0)


# -- tools/device_check/kernels.py, as far as it runs without a GPU -----------------------------

KERNELS_CHECK = Path(__file__).resolve().parent.parent / "tools" / "device_check" / "kernels.py"


def _run_kernels_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "kernels.json"
    proc = subprocess.run(
        [sys.executable, str(KERNELS_CHECK), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, json.loads(out.read_text())


@pytest.mark.skipif(rf.cuda_available(), reason="a GPU is present: the check runs for real")
def test_device_check_skips_without_gpu(tmp_path):
    proc, result = _run_kernels_check(tmp_path)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert result["status"] == "skipped"
    assert "cuda_available() is False" in proc.stdout


def test_device_check_logic_on_host_reference(tmp_path):
    """The check's whole flow (variants, guards, expectations) on the host reference path."""
    proc, result = _run_kernels_check(tmp_path, "--host", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "passed" and result["mismatch_count"] == 0
    assert result["checks"] > 1000
