"""The reduction kernels against numpy, element by element, for both kernel builds.

Runs `_core.reduce` in a subprocess per build (RINGFLOW_KERNEL_ISA is read once per process):
the AVX2/F16C build where the CPU has it, and the portable one everywhere. Inputs include the
values that break careless kernels: NaN, ±inf, ±0, subnormals, the type's extremes, and for
16-bit floats sums that land exactly halfway between two representable values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent(
    """
    import numpy as np, ml_dtypes
    from ringflow import _core

    rng = np.random.default_rng(7)
    ops = {"Sum": np.add, "Product": np.multiply, "Min": np.minimum, "Max": np.maximum}
    failures = []

    def special(dtype, n):
        floating = dtype.kind == "f" or dtype == ml_dtypes.bfloat16
        info = (ml_dtypes.finfo if dtype == ml_dtypes.bfloat16 else np.finfo)(dtype) if floating else None
        values = rng.standard_normal(n).astype(np.float32) * 3
        if info is not None:
            picks = [np.nan, np.inf, -np.inf, 0.0, -0.0, float(info.tiny), float(info.max),
                     -float(info.max), float(info.smallest_subnormal), 1.0, -1.0]
            specials = np.tile(np.array(picks, np.float32), 3)[:n]
            values[: len(specials)] = specials
            rng.shuffle(values)
        return values.astype(dtype)

    for name in ["float16", "bfloat16", "float32", "float64"]:
        dtype = np.dtype(getattr(ml_dtypes, name) if name == "bfloat16" else name)
        core = getattr(_core.DType, name)
        for n in [0, 1, 7, 8, 9, 1000, 4099]:
            a, b = special(dtype, n), special(dtype, n)
            for op, fn in ops.items():
                out = np.empty_like(a)
                _core.reduce(a, b, out, core, getattr(_core.ReduceOp, op))
                # 16-bit floats are computed in float32 and rounded once, like numpy's astype.
                wide = np.float64 if name == "float64" else np.float32
                with np.errstate(all="ignore"):
                    ref = fn(a.astype(wide), b.astype(wide)).astype(dtype)
                if op in ("Min", "Max"):  # IEEE 754-2019: -0 < +0, whatever the order
                    zeros = (a == 0) & (b == 0)
                    negative = np.signbit(a.astype(wide)) | np.signbit(b.astype(wide))
                    if op == "Max":
                        negative = np.signbit(a.astype(wide)) & np.signbit(b.astype(wide))
                    ref[zeros] = np.where(negative[zeros], -0.0, 0.0).astype(dtype)
                same = (out.view(f"u{dtype.itemsize}") == ref.view(f"u{dtype.itemsize}")) | (
                    np.isnan(out.astype(np.float64)) & np.isnan(ref.astype(np.float64)))
                if not same.all():
                    i = int(np.argmin(same))
                    failures.append(f"{name} {op} n={n}: a={a[i]!r} b={b[i]!r} got {out[i]!r} want {ref[i]!r}")

    for name in ["uint8", "int8", "int16", "int32", "int64"]:
        dtype = np.dtype(name)
        info = np.iinfo(dtype)
        core = getattr(_core.DType, name)
        for n in [0, 1, 33, 4099]:
            a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
            b = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
            for op, fn in ops.items():
                out = np.empty_like(a)
                _core.reduce(a, b, out, core, getattr(_core.ReduceOp, op))
                with np.errstate(all="ignore"):
                    ref = fn(a, b)  # wraps in the dtype
                if not np.array_equal(out, ref):
                    failures.append(f"{name} {op} n={n}")

    for op, fn in {"Min": np.logical_and, "Max": np.logical_or}.items():
        a, b = rng.random(257) < 0.5, rng.random(257) < 0.5
        out = np.empty_like(a)
        _core.reduce(a, b, out, _core.DType.bool, getattr(_core.ReduceOp, op))
        if not np.array_equal(out, fn(a, b)):
            failures.append(f"bool {op}")
    print(_core.reduce_kernel_isa())
    print("\\n".join(failures) or "OK")
    """
)


@pytest.mark.parametrize("isa", ["auto", "generic"])
def test_kernels_match_numpy(isa: str) -> None:
    env = {**os.environ, "RINGFLOW_KERNEL_ISA": isa}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    kernel, _, verdict = done.stdout.partition("\n")
    if isa == "generic":
        assert kernel == "generic"
    assert verdict.strip() == "OK", f"{kernel} kernels differ from numpy:\n{verdict}"
