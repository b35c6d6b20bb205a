"""What the machine has: GPU, driver, CUDA, Python, torch, CuPy, NCCL, OpenSSL headers.

``probe.py --figures FILE`` writes those as JSON (and prints them); it works without a GPU (the
fields it cannot read say why). ``probe.py --build-figures FILE`` checks the ringflow that the
build stage installed: it imports, says it was built with CUDA and sees the GPU; exit status 1
when it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any


def _run(*command: str) -> str:
    if shutil.which(command[0]) is None:
        return f"{command[0]} not found"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{command[0]} failed: {error}"
    return (done.stdout or done.stderr).strip()


def _nvidia_smi() -> dict[str, Any]:
    fields = "name,driver_version,memory.total,compute_cap"
    text = _run("nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader")
    if "not found" in text or "failed" in text or not text:
        return {"nvidia_smi": text or "no output"}
    gpus = [
        dict(zip(fields.split(","), (v.strip() for v in line.split(","))))
        for line in text.splitlines()
    ]
    return {"gpus": gpus, "driver": gpus[0].get("driver_version", "")}


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError as error:
        return {"torch": f"not importable: {error}"}
    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.version.cuda is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            device_count=torch.cuda.device_count(),
        )
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as error:  # no NCCL in this torch build
            info["nccl"] = f"unavailable: {error}"
    return info


def _cupy() -> dict[str, Any]:
    try:
        import cupy
    except ImportError as error:
        return {"cupy": f"not importable: {error}"}
    info: dict[str, Any] = {"cupy": cupy.__version__}
    try:
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as error:  # no driver here
        info["cuda_driver"] = f"unavailable: {type(error).__name__}"
    return info


def versions() -> dict[str, Any]:
    nvcc = _run("nvcc", "--version")
    release = re.search(r"release ([0-9.]+)", nvcc)
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nvcc": release.group(1) if release else nvcc.splitlines()[-1] if nvcc else "",
        "cmake": _run("cmake", "--version").splitlines()[0],
        "openssl_headers": Path("/usr/include/openssl/hmac.h").exists(),
        "python_headers": Path(sysconfig.get_paths()["include"], "Python.h").exists(),
        "devdeps_carried": Path(__file__).resolve().parents[2].joinpath(".devdeps").is_dir(),
    }
    for part in (_nvidia_smi(), _torch(), _cupy()):
        info.update(part)
    return info


def build_figures() -> tuple[dict[str, Any], str]:
    """The installed ringflow's CUDA answers, and why it is unusable ('' when fine)."""
    import ringflow
    from ringflow import _core

    available = getattr(ringflow, "cuda_available", None)
    info = {
        "ringflow": ringflow.__file__,
        "cuda_built": bool(_core.cuda_built()),
        "cuda_available": bool(available()) if available else "ringflow.cuda_available missing",
        "cuda_device_count": int(getattr(_core, "cuda_device_count", lambda: -1)()),
    }
    if not info["cuda_built"]:
        return info, "ringflow was built without CUDA (RINGFLOW_CUDA=ON ignored?)"
    if available is None:
        return info, "ringflow.cuda_available() is missing (a build without device buffers)"
    if info["cuda_available"] is not True:
        return info, "ringflow.cuda_available() is False on a machine with a GPU"
    return info, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--figures", help="write the machine's versions here (JSON)")
    group.add_argument("--build-figures", help="write the installed ringflow's answers here")
    args = parser.parse_args()
    if args.figures:
        info, problem = versions(), ""
        path = args.figures
    else:
        info, problem = build_figures()
        path = args.build_figures
    Path(path).write_text(json.dumps(info, indent=1) + "\n")
    for key, value in info.items():
        print(f"{key}: {value}")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
