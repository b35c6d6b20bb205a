"""Two-process CUDA IPC smoke test: what ringflow's one-GPU ring relies on.

The exporter (this process) cudaMallocs a buffer through CuPy (a plain allocation, not CuPy's
pool, so the handle names exactly this buffer), fills it with a pattern and exports
``cudaIpcGetMemHandle``. The importer (a second python process, started here) reads the
64-byte handle and the expected pattern's parameters from a pipe (its stdin), opens the handle,
checks every element, times a copy of the whole mapped buffer into its own memory, writes a
second pattern back into the mapped buffer and answers with JSON on its stdout. The exporter
then checks that it sees the importer's writes. Both processes use device 0.

``ipc_smoke.py --figures FILE`` writes the figures (open time, copy rate through the mapping,
the local device-to-device copy rate for comparison); exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ELEMENTS = 64 * 2**20  # uint32: 256 MiB
TIMEOUT_S = 60


def _pattern(cupy: Any, count: int, salt: int) -> Any:
    index = cupy.arange(count, dtype=cupy.uint32)
    return index * cupy.uint32(2654435761) + cupy.uint32(salt)


def _copy_rate(cupy: Any, dst: Any, src: Any, repeats: int = 5) -> float:
    """GB/s of dst[...] = src, counting bytes read and written (one warm-up copy first)."""
    dst[...] = src
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        dst[...] = src
    end.record()
    end.synchronize()
    seconds = cupy.cuda.get_elapsed_time(start, end) / 1e3 / repeats
    return 2 * src.nbytes / seconds / 1e9


def importer() -> int:
    """The second process: open the handle from stdin, check, copy, write back, answer."""
    import cupy

    request = json.loads(sys.stdin.readline())
    cupy.cuda.Device(0).use()
    began = time.perf_counter()
    runtime = cupy.cuda.runtime
    pointer = runtime.ipcOpenMemHandle(
        bytes.fromhex(request["handle"]), runtime.cudaIpcMemLazyEnablePeerAccess
    )
    opened_s = time.perf_counter() - began
    count = request["count"]
    memory = cupy.cuda.UnownedMemory(pointer, count * 4, None, 0)
    mapped = cupy.ndarray((count,), cupy.uint32, cupy.cuda.MemoryPointer(memory, 0))
    wrong = int(cupy.count_nonzero(mapped != _pattern(cupy, count, request["salt"])))
    local = cupy.empty_like(mapped)
    rate = _copy_rate(cupy, local, mapped)
    mapped[...] = _pattern(cupy, count, request["salt"] + 1)
    cupy.cuda.Device(0).synchronize()
    del mapped, memory
    runtime.ipcCloseMemHandle(pointer)
    print(json.dumps({"wrong": wrong, "open_s": opened_s, "mapped_copy_gbps": rate}), flush=True)
    return 0


def exporter(figures_path: str) -> int:
    import cupy

    cupy.cuda.Device(0).use()
    figures: dict[str, Any] = {"bytes": ELEMENTS * 4}
    memory = cupy.cuda.Memory(ELEMENTS * 4)  # a cudaMalloc of its own
    buffer = cupy.ndarray((ELEMENTS,), cupy.uint32, cupy.cuda.MemoryPointer(memory, 0))
    salt = 12345
    buffer[...] = _pattern(cupy, ELEMENTS, salt)
    cupy.cuda.Device(0).synchronize()
    figures["local_copy_gbps"] = _copy_rate(cupy, cupy.empty_like(buffer), buffer)
    handle = cupy.cuda.runtime.ipcGetMemHandle(memory.ptr)
    request = {"handle": bytes(handle).hex(), "count": ELEMENTS, "salt": salt}
    child = subprocess.run(
        [sys.executable, __file__, "--import"],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    problems = []
    if child.returncode != 0:
        problems.append(f"importer exited {child.returncode}: {child.stderr.strip()[-500:]}")
    else:
        answer = json.loads(child.stdout.strip().splitlines()[-1])
        figures.update(answer)
        if answer["wrong"]:
            problems.append(f"importer read {answer['wrong']} wrong elements through the mapping")
        seen = int(cupy.count_nonzero(buffer != _pattern(cupy, ELEMENTS, salt + 1)))
        figures["exporter_sees_writes_wrong"] = seen
        if seen:
            problems.append(f"exporter sees {seen} elements not written by the importer")
    figures["ok"] = not problems
    figures["problems"] = problems
    Path(figures_path).write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--figures", help="write the figures here (exporter)")
    parser.add_argument("--import", dest="importer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.importer:
        return importer()
    if not args.figures:
        parser.error("--figures is required")
    return exporter(args.figures)


if __name__ == "__main__":
    sys.exit(main())
