"""ringflow's engine (async, named, fused allreduces) against torch gloo used the way DDP uses it.

    python benchmarks/bench_engine.py -np 4 [--iters 10] [--warmup 2] [--json engine.json]
                                      [--transport tcp|auto|shm]

One command starts three jobs of N ranks on this host, one after the other, each with
``ringflow run --bind-to core``: torch gloo, ringflow, and ringflow with
``RINGFLOW_CACHE_CAPACITY=0``. What they measure (every time is the median over iterations of
the slowest rank; every result is checked once before the timed iterations):

1. A ResNet-50 gradient set (161 float32 tensors, 97.5 MiB): ringflow submits
   ``allreduce_async_`` on each, named, in reverse order (as backward produces them), then
   synchronizes all; gloo flattens 25 MiB buckets in the same order (torch.cat), starts one
   ``all_reduce(async_op=True)`` per bucket, waits for all and copies back; ringflow also reduces
   one 97.5 MiB buffer with a single ``allreduce_`` (the bound fusion should reach).
2. 1000 tiny tensors (4 B - 4 KiB, seeded): ringflow async + synchronize against 1000
   sequential gloo ``all_reduce`` calls.
3. ``synchronize`` of a handle that has already finished, timed call by call in-process.
4. Item 1 with the response cache off: time and ``engine_stats()["negotiation_bytes"]`` per step.

Ranks run this same file with ``--worker``; rank 0 writes its figures as JSON for the parent.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ringflow.bench.launch import _environment, _free_port, _one_line_reason
from ringflow.bench.peers import why_missing

MIB = 1 << 20
BUCKET_BYTES = 25 * MIB  # DDP's bucket_cap_mb default
TINY_COUNT, TINY_SEED, TINY_MAX_ELEMENTS = 1000, 20240607, 1024
SYNC_BATCHES, SYNC_BATCH = 10, 500  # item 3: 5000 finished handles
JOB_WARMUP_CALLS = 50  # untimed small allreduces right after a job starts
TARGETS = ("<= 0.7", "<= 1.1", ">= 20", "<= 2000")  # items 1 (gloo), 1 (one buffer), 2, 3


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's ResNet-50, in ``model.parameters()`` order."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]  # conv1 1x1, bn1
            shapes += [(planes, planes, 3, 3), (planes,), (planes,)]  # conv2 3x3, bn2
            shapes += [(planes * 4, planes, 1, 1), (planes * 4,), (planes * 4,)]  # conv3, bn3
            if block == 0:  # downsample: 1x1 conv + bn
                shapes += [(planes * 4, inplanes, 1, 1), (planes * 4,), (planes * 4,)]
            inplanes = planes * 4
    shapes += [(1000, 2048), (1000,)]  # fc
    total = 4 * sum(int(np.prod(s)) for s in shapes)
    assert len(shapes) == 161, len(shapes)
    assert abs(total / MIB - 97.5) < 0.05 and total == 4 * 25_557_032, total
    return shapes


def tiny_counts() -> list[int]:
    """Element counts of the 1000 tiny float32 tensors (4 B to 4 KiB), the same on every rank."""
    rng = np.random.default_rng(TINY_SEED)
    return rng.integers(1, TINY_MAX_ELEMENTS + 1, size=TINY_COUNT).tolist()


def ddp_buckets(sizes: Sequence[int]) -> list[list[int]]:
    """Tensor indices in reverse order, cut into buckets that close once they reach 25 MiB."""
    buckets, current, nbytes = [], [], 0
    for index in reversed(range(len(sizes))):
        current.append(index)
        nbytes += 4 * sizes[index]
        if nbytes >= BUCKET_BYTES:
            buckets.append(current)
            current, nbytes = [], 0
    return buckets + ([current] if current else [])


# ---- the ranks' side ------------------------------------------------------------------------


def fill(arrays: Sequence[np.ndarray], rank: int) -> None:
    """Array i, element k of rank r holds (k + i + r) mod 7: every sum is exact."""
    for i, a in enumerate(arrays):
        a.reshape(-1)[:] = (np.arange(a.size) + i + rank) % 7


def count_wrong(arrays: Sequence[np.ndarray], size: int, mean: bool) -> int:
    """Elements that differ from the sum (or mean) over ranks of `fill`'s values."""
    wrong = 0
    for i, a in enumerate(arrays):
        base = np.arange(a.size) + i
        expected = sum((base + r) % 7 for r in range(size)).astype(np.float32)
        if mean:
            expected /= size
        wrong += int(np.count_nonzero(~np.isclose(a.reshape(-1), expected, rtol=1e-6)))
    return wrong


Case = tuple[str, Callable[[], object], list[np.ndarray], bool]  # name, step, arrays, mean?


class Ranks:
    """One library as the timing sees it: a barrier, reductions over ranks, its counters."""

    rank: int
    size: int

    def barrier(self) -> None: ...

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray: ...

    def sum_over_ranks(self, value: int) -> int: ...

    def counters(self) -> dict[str, float]:
        return {}

    def measure(self, cases: list[Case], args: argparse.Namespace) -> dict[str, Any]:
        """Per case: fill, one checked step, then `timed` steps."""
        out = {}
        for name, step, arrays, mean in cases:
            fill(arrays, self.rank)
            step()
            wrong = self.sum_over_ranks(count_wrong(arrays, self.size, mean))
            out[name] = {**timed(self, step, args.iters, args.warmup), "wrong": wrong}
        return out


def timed(lib: Ranks, step: Callable[[], object], iters: int, warmup: int) -> dict[str, Any]:
    """Warm up, then time `iters` steps back to back: the median of the slowest rank's times.

    Also the per-step change of every counter of `lib.counters()` over the timed steps.
    """
    for _ in range(warmup):
        step()
    lib.barrier()
    before = lib.counters()
    times = np.empty(iters, np.float64)
    start = time.perf_counter()
    for i in range(iters):
        step()
        now = time.perf_counter()
        times[i], start = now - start, now
    after = lib.counters()
    slowest = lib.max_over_ranks(times).tolist()
    out: dict[str, Any] = {"ms": statistics.median(slowest) * 1e3}
    out["times_ms"] = [t * 1e3 for t in slowest]
    if after:
        out["per_step"] = {k: (after[k] - before.get(k, 0)) / iters for k in after}
    return out


class Gloo(Ranks):
    """torch.distributed with gloo over 127.0.0.1, CPU tensors viewing numpy buffers."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)  # one pinned core per rank: no intra-op thread pool
        self.torch, self.dist = torch, dist
        self.rank, self.size = int(os.environ["RINGFLOW_RANK"]), int(os.environ["RINGFLOW_SIZE"])
        address = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        dist.init_process_group("gloo", init_method=address, rank=self.rank, world_size=self.size)

    def barrier(self) -> None:
        self.dist.barrier()

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        result = values.copy()
        self.dist.all_reduce(self.torch.from_numpy(result), op=self.dist.ReduceOp.MAX)
        return result

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        torch, dist, size = self.torch, self.dist, self.size
        for _ in range(JOB_WARMUP_CALLS):
            dist.all_reduce(torch.zeros(1))
        grads = [np.empty(s, np.float32) for s in resnet50_shapes()]
        tensors = [torch.from_numpy(g) for g in grads]
        buckets = ddp_buckets([g.size for g in grads])

        def ddp_step() -> None:
            works, flats = [], []
            for bucket in buckets:
                flat = torch.cat([tensors[i].view(-1) for i in bucket])
                flat.div_(size)  # DDP averages: divide, then sum
                works.append(dist.all_reduce(flat, async_op=True))
                flats.append(flat)
            for work in works:
                work.wait()
            for bucket, flat in zip(buckets, flats):
                chunks = flat.split([tensors[i].numel() for i in bucket])
                for i, chunk in zip(bucket, chunks):
                    tensors[i].copy_(chunk.view_as(tensors[i]))

        tiny = [np.empty(n, np.float32) for n in tiny_counts()]
        tiny_tensors = [torch.from_numpy(t) for t in tiny]

        def tiny_step() -> None:
            for t in tiny_tensors:
                dist.all_reduce(t)

        cases: list[Case] = [("resnet", ddp_step, grads, True), ("tiny", tiny_step, tiny, False)]
        return {"buckets": len(buckets), **self.measure(cases, args)}

    def sum_over_ranks(self, value: int) -> int:
        total = self.torch.tensor([value], dtype=self.torch.int64)
        self.dist.all_reduce(total)
        return int(total.item())

    def close(self) -> None:
        self.dist.destroy_process_group()


class Ringflow(Ranks):
    """ringflow's engine through the public API."""

    def __init__(self) -> None:
        import ringflow as rf

        self.rf = rf
        rf.init()
        self.rank, self.size = rf.rank(), rf.size()

    def barrier(self) -> None:
        self.rf.barrier()

    def max_over_ranks(self, values: np.ndarray) -> np.ndarray:
        return self.rf.allreduce(values, op=self.rf.Max)

    def counters(self) -> dict[str, float]:
        stats = getattr(self.rf, "engine_stats", None)
        return {k: v for k, v in stats().items() if isinstance(v, (int, float))} if stats else {}

    def sum_over_ranks(self, value: int) -> int:
        return int(self.rf.allreduce(np.array([value], np.int64), op=self.rf.Sum)[0])

    def run(self, args: argparse.Namespace) -> dict[str, Any]:
        rf = self.rf
        for _ in range(JOB_WARMUP_CALLS):
            rf.allreduce(np.zeros(1, np.float32), op=rf.Sum)
        grads = [np.empty(s, np.float32) for s in resnet50_shapes()]
        order = list(reversed(range(len(grads))))

        def resnet_step() -> None:
            handles = [
                rf.allreduce_async_(grads[i], op=rf.Average, name=f"grad.{i}") for i in order
            ]
            for h in handles:
                rf.synchronize(h)

        single = [np.empty(sum(g.size for g in grads), np.float32)]

        def single_step() -> None:
            rf.allreduce_(single[0], op=rf.Average, name="single")

        tiny = [np.empty(n, np.float32) for n in tiny_counts()]

        def tiny_step() -> None:
            handles = [
                rf.allreduce_async_(t, op=rf.Sum, name=f"tiny.{i}") for i, t in enumerate(tiny)
            ]
            for h in handles:
                rf.synchronize(h)

        cases: list[Case] = [("resnet", resnet_step, grads, True)]
        if args.resnet_only:
            return self.measure(cases, args)
        cases += [("single", single_step, single, True), ("tiny", tiny_step, tiny, False)]
        return {**self.measure(cases, args), "sync": self.synchronize_finished()}

    def synchronize_finished(self) -> dict[str, Any]:
        """Nanoseconds per `synchronize` of a handle that `poll` already saw finished."""
        rf = self.rf
        if not hasattr(rf, "poll"):
            return {"skipped": "rf.poll is missing: cannot tell that a handle has finished"}
        xs = [np.zeros(1, np.float32) for _ in range(SYNC_BATCH)]
        calls: list[int] = []
        for _ in range(SYNC_BATCHES):
            handles = [
                rf.allreduce_async_(x, op=rf.Sum, name=f"sync.{k}") for k, x in enumerate(xs)
            ]
            for h in handles:
                while not rf.poll(h):
                    time.sleep(1e-4)
            for h in handles:
                t0 = time.perf_counter_ns()
                rf.synchronize(h)
                calls.append(time.perf_counter_ns() - t0)
        timer = [-(time.perf_counter_ns() - time.perf_counter_ns()) for _ in range(1000)]
        medians = self.max_over_ranks(np.array([statistics.median(calls)], np.float64))
        return {
            "ns": float(medians[0]),  # the slowest rank's median
            "rank0_p90_ns": float(np.percentile(calls, 90)),
            "timer_ns": statistics.median(timer),
            "calls": len(calls),
        }

    def close(self) -> None:
        self.rf.shutdown()


def worker(args: argparse.Namespace) -> int:
    """One rank of one job; rank 0 writes the figures to args.result."""
    lib: Gloo | Ringflow = Gloo() if args.worker == "gloo" else Ringflow()
    try:
        out = lib.run(args)
    finally:
        lib.close()
    if lib.rank == 0:
        Path(args.result).write_text(json.dumps(out), encoding="utf-8")
    return 0


# ---- the parent's side ----------------------------------------------------------------------


def run_job(
    label: str, args: argparse.Namespace, extra: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """Start one job of args.np ranks running this file; its figures, or why there are none."""
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="ringflow-bench-engine-") as tmp:
        result = Path(tmp) / "result.json"
        command = [py, "-m", "ringflow.run", "-np", str(args.np), "--bind-to", "core"]
        command += ["--timeout", f"{args.timeout:g}", "--", py, str(Path(__file__).resolve())]
        command += ["--result", str(result), "--iters", str(args.iters)]
        command += ["--warmup", str(args.warmup), *extra]
        start = time.perf_counter()
        print(f"  {label} ...", end="", flush=True, file=sys.stderr)
        try:
            done = subprocess.run(
                command,
                env=_environment(env),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=args.timeout + 30,  # the launcher's own --timeout should come first
            )
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            code, output = 124, ""
        print(f" {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if code != 0 or not result.exists():
            tail = collections.deque(output.splitlines(), maxlen=40)
            return {"failed": _one_line_reason(code, tail, code == 124)}
        return json.loads(result.read_text(encoding="utf-8"))


def ringflow_missing() -> str:
    """Why ringflow's engine cannot be measured here, or ''."""
    import ringflow as rf

    missing = [name for name in ("allreduce_async_", "synchronize") if not hasattr(rf, name)]
    return (
        f"ringflow {rf.__version__} has no {', '.join('rf.' + m for m in missing)} yet"
        if missing
        else ""
    )


def _get(results: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def _meets(r: float, goal: str) -> bool:
    bound = float(goal.split()[1])
    return r <= bound if goal.startswith("<=") else r >= bound


def rows(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """(item, ringflow, reference, ratio, target, met), the ratio being a / b."""

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} ms"

    def line(item: str, shown: str, ref: str, a: Any, b: Any, goal: str = "") -> tuple[str, ...]:
        r = None if a is None or b is None or a == b == 0 else a / b if b else float("inf")
        ratio = "" if not ref else "n/a" if r is None else f"{r:.3f}"
        met = "" if not goal else "n/a" if r is None else "yes" if _meets(r, goal) else "NO"
        return (item, shown, ref, ratio, goal, met)

    step, gloo = _get(res, "ringflow", "resnet", "ms"), _get(res, "gloo", "resnet", "ms")
    single, off = _get(res, "ringflow", "single", "ms"), _get(res, "nocache", "resnet", "ms")
    tiny, gloo_tiny = _get(res, "ringflow", "tiny", "ms"), _get(res, "gloo", "tiny", "ms")
    on_b = _get(res, "ringflow", "resnet", "per_step", "negotiation_bytes")
    off_b = _get(res, "nocache", "resnet", "per_step", "negotiation_bytes")
    sync_ns = _get(res, "ringflow", "sync", "ns")
    nbytes = ["n/a" if b is None else f"{b:.0f} B" for b in (on_b, off_b)]
    t = TARGETS
    return [
        line("1 ResNet-50: ringflow / gloo DDP", ms(step), f"gloo {ms(gloo)}", step, gloo, t[0]),
        line(
            "1 ResNet-50: ringflow / one buffer", ms(step), f"one {ms(single)}", step, single, t[1]
        ),
        line(
            "2 1000 tiny: gloo / ringflow", ms(tiny), f"gloo {ms(gloo_tiny)}", gloo_tiny, tiny, t[2]
        ),
        line(
            "3 synchronize(finished) ns",
            "n/a" if sync_ns is None else f"{sync_ns:.0f} ns",
            "",
            sync_ns,
            1,
            t[3],
        ),
        line("4 ResNet-50: cache off / on", ms(step), f"off {ms(off)}", off, step),
        line("4 negotiation B/step: off / on", nbytes[0], f"off {nbytes[1]}", off_b, on_b),
    ]


def print_table(args: argparse.Namespace, res: dict[str, Any], notes: list[str]) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"ringflow engine vs torch gloo: {args.np} ranks on {os.cpu_count()} CPUs (bind-to core), "
        f"{args.iters} iters after {args.warmup} warm-up; load average {load}"
    )
    header = ("item", "ringflow", "reference", "ratio", "target", "met")
    table = [header, *rows(res)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for key, label in (("ringflow", "on"), ("nocache", "off")):
        if counters := _get(res, key, "resnet", "per_step"):
            shown = ", ".join(f"{k} {v:g}" for k, v in counters.items())
            print(f"engine_stats() per ResNet-50 step, cache {label}: {shown}")
    for note in notes:
        print(note)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("-np", type=int, default=2, help="ranks per job (default 2)")
    p.add_argument("--iters", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--only-gloo", action="store_true", help="run the gloo job only")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per job (default 300)")
    p.add_argument("--worker", choices=("gloo", "ringflow"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--resnet-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--transport",
        choices=("tcp", "auto", "shm"),
        default="tcp",
        help="RINGFLOW_TRANSPORT of the ringflow jobs (default tcp, as the figures in "
        "docs/performance.md's engine section; auto uses shared memory on one host)",
    )
    args = p.parse_args(argv)
    if args.np < 1 or args.iters < 1 or args.warmup < 0:
        p.error("-np and --iters must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args)
    resnet50_shapes()  # the asserts, before any job starts
    port = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    env_transport = {"RINGFLOW_TRANSPORT": args.transport}
    jobs: list[tuple[str, str, list[str], dict[str, str]]] = []
    notes: list[str] = []
    if why := why_missing("gloo"):
        notes.append(f"gloo skipped: {why}")
    else:
        jobs.append(
            ("gloo", "gloo", ["--worker", "gloo"], {**port, "MASTER_PORT": str(_free_port())})
        )
    if args.only_gloo:
        notes.append("ringflow skipped: --only-gloo")
    elif why := ringflow_missing():
        notes.append(f"ringflow skipped: {why}")
    else:
        cache = os.environ.pop("RINGFLOW_CACHE_CAPACITY", None)
        if cache is not None:
            notes.append(f"RINGFLOW_CACHE_CAPACITY={cache} ignored: item 4 compares default with 0")
        jobs.append(("ringflow", "ringflow", ["--worker", "ringflow"], env_transport))
        jobs.append(
            (
                "nocache",
                "ringflow, RINGFLOW_CACHE_CAPACITY=0",
                ["--worker", "ringflow", "--resnet-only"],
                {**env_transport, "RINGFLOW_CACHE_CAPACITY": "0"},
            )
        )
    print(f"bench_engine: {len(jobs)} jobs of {args.np} ranks", file=sys.stderr)
    results = {key: run_job(label, args, extra, env) for key, label, extra, env in jobs}
    ok = True
    for key, res in results.items():
        if "failed" in res:
            notes.append(f"{key} failed: {res['failed']}")
            ok = False
        for part, figures in res.items():
            if isinstance(figures, dict) and figures.get("wrong"):
                notes.append(f"{key} {part}: {figures['wrong']} wrong elements")
                ok = False
            if isinstance(figures, dict) and "skipped" in figures:
                notes.append(f"{key} {part} skipped: {figures['skipped']}")
    print_table(args, results, notes)
    if args.json:
        record = {
            "np": args.np,
            "iters": args.iters,
            "warmup": args.warmup,
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "targets": TARGETS,
            "results": results,
            "table": rows(results),
            "notes": notes,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
