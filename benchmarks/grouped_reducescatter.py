"""Median time of a grouped (fused) reducescatter of 64 float32 tensors, 64 KiB and 512 KiB each.

Run as ``ringflow run -np N python benchmarks/grouped_reducescatter.py``; set
RINGFLOW_REDUCESCATTER_ALGORITHM=ring|direct to compare (docs/performance.md).
"""

import os
import statistics
import time

import numpy as np

import ringflow as rf


def main() -> None:
    rf.init()
    results = []
    for count, each in ((64, 64 << 10), (64, 512 << 10)):
        xs = [np.ones(((each // 4) // 16, 16), dtype=np.float32) for _ in range(count)]
        for _ in range(3):
            rf.grouped_reducescatter(xs, op=rf.Sum, name="g")
        times = []
        for _ in range(15):
            start = time.perf_counter()
            rf.grouped_reducescatter(xs, op=rf.Sum, name="g")
            times.append(time.perf_counter() - start)
        results.append(f"{count}x{each >> 10}KiB {statistics.median(times) * 1e3:.2f} ms")
    if rf.rank() == 0:
        algorithm = os.environ.get("RINGFLOW_REDUCESCATTER_ALGORITHM", "auto")
        print(algorithm, "N", rf.size(), " | ".join(results), flush=True)
    rf.shutdown()


if __name__ == "__main__":
    main()
