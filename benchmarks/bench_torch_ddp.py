"""ringflow's DistributedOptimizer against torch DistributedDataParallel (gloo), and the scaling
efficiency of both.

    python benchmarks/bench_torch_ddp.py [-np 2] [--rounds 2] [--model all] [--json FILE]
                                         [-- BENCHMARK ARGS]

Trains examples/pytorch_synthetic_benchmark.py's models on their fixed synthetic batch — the
ResNet (batch 32 per rank) and the MLP 784-1024-1024-10 (``--model mlp``, batch 64 per rank) —
with the same model, batch, SGD settings, step count and timing code in four ways:

- single: one process alone, pinned to one CPU, plain torch (no ringflow, no DDP): the yardstick;
- independent: N such processes at once, one per CPU: what N ranks reach when only sharing the
  machine costs (caches, memory bandwidth, other users' load) — the ceiling just now;
- ringflow: the example itself, ``ringflow run -np N --bind-to core python
  examples/pytorch_synthetic_benchmark.py`` (``hvd.DistributedOptimizer`` averages the
  gradients; each gradient's allreduce starts from a hook during backward);
- DDP: N processes started with ``torch.multiprocessing`` (``MASTER_ADDR=127.0.0.1``, a free
  ``MASTER_PORT``, ``GLOO_SOCKET_IFNAME=lo``), rank r pinned to the r-th available CPU with
  ``os.sched_setaffinity`` as ``--bind-to core`` pins ringflow's ranks, the model wrapped in
  ``DistributedDataParallel`` with its defaults (25 MiB buckets, 1 MiB first bucket,
  ``broadcast_buffers=True``), gloo process group.

All use ``torch.set_num_threads(1)`` per process. The jobs alternate (single, independent,
ringflow, DDP, single, ...) ``--rounds`` times so that a change of machine load hits all; each
job reports rank 0's samples/s per iteration as Horovod's benchmark does; a round's figure is
N x the mean of its iterations, a system's the median over rounds. **Scaling efficiency** =
throughput at N ranks / (N x the single process's), taken round by round against the same
round's single process, median over rounds (target >= 0.95 at N=2; 1.0 is the physical limit);
"of the ceiling" divides it by the independent processes' own efficiency. The ratio is ringflow
/ DDP (target: >= 1). Exit code 1 when a job failed, 0 otherwise (a missed target is printed,
not an error). Defaults take about 3 minutes on a 2-core machine; every job is stopped after
``--timeout`` seconds. On a machine that other work loads, the single process gets a core
partly free while N ranks share every core with that work: read efficiencies from a quiet
machine, or against the independent ceiling.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pytorch_synthetic_benchmark.py"
# Fewer steps than the example's defaults (10 warm-up, 10 x 10 timed): a bounded runtime.
BENCH_DEFAULTS = [
    "--num-warmup-batches",
    "3",
    "--num-iters",
    "5",
    "--num-batches-per-iter",
    "5",
]
ITER_RE = re.compile(r"^\[0\] Iter #\d+: ([0-9.]+) img/sec per CPU$", re.M)
TARGET = 1.0  # ringflow / DDP
EFFICIENCY_TARGET = 0.95  # N=2; the physical limit is 1.0


def load_example() -> ModuleType:
    """examples/pytorch_synthetic_benchmark.py as a module (its main() does not run)."""
    spec = importlib.util.spec_from_file_location("pytorch_synthetic_benchmark", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_this_process(cpu: int) -> None:
    """Every thread of this process (and those it starts later) on one CPU."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {cpu})


# ---- DDP: one spawned process per rank -------------------------------------------------------


def ddp_worker(
    rank: int,
    size: int,
    cpus: list[int],
    port: int,
    bench_argv: list[str],
    results: Any,
    plain: bool = False,
) -> None:
    """One DDP rank: the example's model, batch and timing, gradients averaged by DDP; with
    ``plain``, one process training alone (no process group, no DDP): the yardstick."""
    pin_this_process(cpus[rank % len(cpus)])
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
    )
    example = load_example()
    args = example.parse_args(bench_argv)
    torch.set_num_threads(args.num_threads)
    if not plain:
        dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        model = example.build_model(args)
        if not plain:
            model = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * size)
        data, target = example.synthetic_batch(args)

        def benchmark_step() -> None:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()  # DDP's hooks allreduce the buckets as they fill
            optimizer.step()

        lines: list[str] = []
        img_secs = example.run_benchmark(benchmark_step, args, lines.append)
        example.report(img_secs, size, lines.append)
        if rank == 0:
            results.put({"img_secs": img_secs, "lines": lines})
        if not plain:
            dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        if not plain:
            dist.destroy_process_group()
    # torch 2.13 + gloo: about 1 exit in 8 here aborts in a C++ destructor after this function
    # returned ("terminate called without an active exception", also without ringflow
    # imported). The work is done and reported: leave without running the interpreter's exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(
    size: int, bench_argv: list[str], timeout: float, plain: bool = False, nprocs: int = 0
) -> dict[str, Any]:
    """Start `size` DDP ranks with torch.multiprocessing (with ``plain``, `nprocs` processes
    training alone, without DDP); rank 0's figures, or why none."""
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    cpus = sorted(os.sched_getaffinity(0))
    nprocs = nprocs or size
    context = mp.start_processes(
        ddp_worker,
        args=(nprocs, cpus, free_port(), bench_argv, results, plain),
        nprocs=nprocs,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                return {"failed": f"ran past --timeout ({timeout:g} s) and was stopped"}
    except Exception as exc:  # a rank raised or died: join() says which and why
        return {"failed": " ".join(str(exc).split())[-300:]}
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return results.get() if not results.empty() else {"failed": "rank 0 reported nothing"}


def run_single(size: int, bench_argv: list[str], timeout: float) -> dict[str, Any]:
    """One single-threaded process, pinned, training alone with plain torch (no ringflow, no
    DDP): the throughput that N ranks would reach N times over with free communication."""
    return run_ddp(size, bench_argv, timeout, plain=True, nprocs=1)


def run_independent(size: int, bench_argv: list[str], timeout: float) -> dict[str, Any]:
    """N such processes at once, one per CPU, no communication: what N ranks reach on this
    machine when only sharing it costs (caches, memory bandwidth, other users' load)."""
    return run_ddp(size, bench_argv, timeout, plain=True, nprocs=size)


# ---- ringflow: the example under `ringflow run` -----------------------------------------------


def run_ringflow(size: int, bench_argv: list[str], timeout: float) -> dict[str, Any]:
    """The example under ``ringflow run --bind-to core``; rank 0's figures, or why none."""
    py = sys.executable
    command = [py, "-m", "ringflow.run", "-np", str(size), "--bind-to", "core"]
    command += ["--timeout", f"{timeout:g}", "--", py, str(EXAMPLE), *bench_argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFLOW_")}
    env.update({"PYTHONUNBUFFERED": "1", "RINGFLOW_TRANSPORT": "tcp"})
    try:
        done = subprocess.run(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout + 30,  # the launcher's own --timeout comes first
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"ran past --timeout ({timeout:g} s) and was stopped"}
    img_secs = [float(v) for v in ITER_RE.findall(done.stdout)]
    if done.returncode != 0 or not img_secs:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return {"failed": f"exit code {done.returncode}: {' | '.join(tail)[-300:]}"}
    lines = [ln[4:] for ln in done.stdout.splitlines() if ln.startswith("[0] ") and "img/sec" in ln]
    return {"img_secs": img_secs, "lines": lines}


# ---- the parent -------------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


MODEL_ARGS = {"resnet": [], "mlp": ["--model", "mlp", "--batch-size", "64"]}
SYSTEMS = {
    "single": run_single,
    "independent": run_independent,
    "ringflow": run_ringflow,
    "ddp": run_ddp,
}
LABELS = {
    "single": "one process alone (no comm.)",
    "independent": "N processes alone (no comm.)",
    "ringflow": "ringflow DistributedOptimizer",
    "ddp": "torch DDP (gloo)",
}


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("-np", type=int, default=2, help="ranks per job (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="jobs per system, alternating (2)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per job (default 120)")
    p.add_argument(
        "--model",
        choices=("resnet", "mlp", "all"),
        default="all",
        help="resnet (the example's default), mlp (784-1024-1024-10, batch 64) or all (default)",
    )
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument(
        "benchmark_args",
        nargs=argparse.REMAINDER,
        help="after --: options for the synthetic benchmark (they follow the defaults "
        + " ".join(BENCH_DEFAULTS)
        + " and the model's own)",
    )
    args = p.parse_args(argv)
    if args.np < 1 or args.rounds < 1:
        p.error("-np and --rounds must be at least 1")
    extra = args.benchmark_args
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return args, BENCH_DEFAULTS + extra


def describe(model: str, example_args: argparse.Namespace) -> str:
    if model == "mlp":
        return f"MLP 784-1024-1024-10, batch {example_args.batch_size} per rank"
    return (
        f"synthetic ResNet (widths {example_args.widths}, {example_args.blocks_per_stage} "
        f"block(s)/stage, {example_args.image_size}x{example_args.image_size}), batch "
        f"{example_args.batch_size} per rank"
    )


def bench_model(
    model: str, args: argparse.Namespace, bench_argv: list[str]
) -> tuple[dict[str, Any], bool]:
    """Every system on one model, alternating; the record for --json and whether a job failed."""
    bench_argv = MODEL_ARGS[model] + bench_argv
    example_args = load_example().parse_args(bench_argv)  # bad options fail here, before any job
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS}
    procs = {"single": 1, "independent": args.np, "ringflow": args.np, "ddp": args.np}
    for round_ in range(1, args.rounds + 1):
        for name, run in SYSTEMS.items():
            t0 = time.perf_counter()
            result = run(args.np, bench_argv, args.timeout)
            runs[name].append(result)
            shown = (
                result["failed"]
                if "failed" in result
                else f"{procs[name] * mean(result['img_secs']):.1f} samples/s"
            )
            print(
                f"  {model} round {round_} {name:11s} {time.perf_counter() - t0:5.1f} s  {shown}",
                file=sys.stderr,
                flush=True,
            )

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{describe(model, example_args)}, {args.np} ranks on {os.cpu_count()} CPUs (one per "
        f"rank), {args.rounds} round(s) of {example_args.num_iters} x "
        f"{example_args.num_batches_per_iter} steps; load average {load}"
    )
    # A round's figure: the mean of its iterations (x N ranks); a system's: the median round.
    totals: dict[str, float | None] = {}
    per_round: dict[str, list[float]] = {}
    failed = False
    for name, results in runs.items():
        for r in results:
            if "failed" in r:
                print(f"{name} failed: {r['failed']}")
                failed = True
        per_round[name] = [procs[name] * mean(r["img_secs"]) for r in results if "failed" not in r]
        totals[name] = median(per_round[name]) if per_round[name] else None
        if totals[name] is None:
            continue
        rounds = ", ".join(f"{v:.1f}" for v in per_round[name])
        print(f"{LABELS[name]:30s} {totals[name]:8.1f} samples/s total   (rounds: {rounds})")
    # Scaling efficiency, round by round against the same round's single process (pairing
    # keeps it meaningful when the machine's load drifts), then the median over rounds. The
    # independent processes' own efficiency is the ceiling this machine allows just now; a
    # system's figure over it is what its communication costs.
    efficiency: dict[str, float | None] = {}
    for name in ("independent", "ringflow", "ddp"):
        pairs = [
            procs[name] * mean(r["img_secs"]) / (args.np * mean(s["img_secs"]))
            for r, s in zip(runs[name], runs["single"])
            if "failed" not in r and "failed" not in s
        ]
        efficiency[name] = median(pairs) if pairs else None
        if not pairs:
            print(f"scaling efficiency {name:11s} n/a")
            continue
        ceiling = efficiency.get("independent")
        of_ceiling = f", {efficiency[name] / ceiling:.3f} of the ceiling" if ceiling else ""
        print(
            f"scaling efficiency {name:11s} {efficiency[name]:.3f}   (median of rounds, spread "
            f"{min(pairs):.3f}-{max(pairs):.3f}{'' if name == 'independent' else of_ceiling}; "
            f"target >= {EFFICIENCY_TARGET:g})"
        )
    rf_total, ddp_total = totals["ringflow"], totals["ddp"]
    ratio = None if not rf_total or not ddp_total else rf_total / ddp_total
    if ratio is None:
        print("ratio ringflow / DDP: n/a")
    else:
        met = "yes" if ratio >= TARGET else "NO"
        print(f"ratio ringflow / DDP: {ratio:.3f}   (target >= {TARGET:g}: {met})")
    record = {
        "model": model,
        "benchmark_args": bench_argv,
        "runs": runs,
        "samples_per_s": totals,
        "efficiency": efficiency,
        "ratio": ratio,
        "loadavg": os.getloadavg(),
    }
    return record, failed


def main(argv: Sequence[str] | None = None) -> int:
    args, bench_argv = parse(argv)
    models = ["resnet", "mlp"] if args.model == "all" else [args.model]
    start = time.perf_counter()
    records, failed = [], False
    for model in models:
        record, model_failed = bench_model(model, args, bench_argv)
        records.append(record)
        failed |= model_failed
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        record = {"np": args.np, "cpus": os.cpu_count(), "models": records}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
