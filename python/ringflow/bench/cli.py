"""``ringflow bench COLLECTIVE -np N …``: an nccl-tests-style sweep, beside torch gloo and MPI."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ringflow._argtypes import int_at_least, positive_seconds
from ringflow.bench import device, launch, peers, report
from ringflow.bench.spec import (
    COLLECTIVES,
    DTYPES,
    OPS,
    REDUCING,
    SweepSpec,
    parse_size,
    size_range,
)

__all__ = ["add_arguments", "add_parser", "build_parser", "main"]

DESCRIPTION = """\
Measure a collective over a range of sizes on N local ranks, nccl-tests style: per size the
bytes, count, time (median over iterations of the slowest rank), algbw, busbw and the number of
wrong elements (inputs are chosen so that the exact result is known). ringflow runs over its
default transport (RINGFLOW_TRANSPORT=auto: shared memory between ranks of one host) unless
--transport says otherwise (tcp: loopback sockets); each ringflow row names the transport its
ranks used. --peers runs the same sweep with
torch.distributed's gloo backend and with Open MPI (mpi4py, mpirun over TCP) and prints the
ratio ringflow busbw / peer busbw (> 1: ringflow is faster). A peer that is not installed is
skipped with its reason.

--device cuda measures torch CUDA tensors on the GPUs of this host (several ranks may share one
GPU); the peers are then gloo on CUDA tensors (through host memory) and torch's nccl backend
(--peers gloo,nccl).

bytes follow nccl-tests: the per-rank buffer for allreduce and broadcast, the gathered output for
allgather, the input for reducescatter and the send buffer for alltoall; sizes are rounded down
to whole elements (a multiple of N where the buffer is split between ranks).

example: ringflow bench allreduce -np 4 -b 8 -e 256M -f 4 --peers gloo,mpi --plot bw.png"""

_OP_ALIASES = {"average": "avg", "product": "prod"}


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench options (nccl-tests' short names where they exist)."""
    add = parser.add_argument
    add("collective", choices=COLLECTIVES, help="the collective to measure")
    add(
        "-np",
        "--num-proc",
        dest="num_proc",
        type=int_at_least(1),
        default=2,
        metavar="N",
        help="number of local ranks (default 2)",
    )
    add(
        "-b",
        "--minbytes",
        type=_size,
        default=_size("8"),
        metavar="SIZE",
        help="smallest size, bytes with an optional K/M/G suffix (default 8)",
    )
    add(
        "-e",
        "--maxbytes",
        type=_size,
        default=_size("256M"),
        metavar="SIZE",
        help="largest size (default 256M)",
    )
    add(
        "-f",
        "--stepfactor",
        type=int_at_least(2),
        default=2,
        metavar="F",
        help="multiply the size by F between steps (default 2)",
    )
    add(
        "-d",
        "--dtype",
        "--datatype",
        dest="dtype",
        choices=DTYPES,
        default="float32",
        help="element type (default float32)",
    )
    add(
        "-o",
        "--op",
        choices=[*OPS, *_OP_ALIASES],
        default="sum",
        help="reduction op of allreduce and reducescatter (default sum)",
    )
    add("-r", "--root", type=int_at_least(0), default=0, help="broadcast root (default 0)")
    add(
        "-w",
        "--warmup_iters",
        "--warmup",
        dest="warmup",
        type=int_at_least(0),
        default=5,
        metavar="W",
        help="untimed calls per size (default 5)",
    )
    add(
        "-n",
        "--iters",
        type=int_at_least(1),
        default=20,
        metavar="N",
        help="timed calls per size (default 20)",
    )
    add(
        "-c",
        "--check",
        type=int,
        choices=(0, 1),
        default=1,
        help="check results and report #wrong (default 1)",
    )
    add(
        "--peers",
        default="",
        metavar="LIST",
        help=f"comma-separated peers to run too: {','.join(peers.PEERS)}",
    )
    add(
        "--device",
        choices=device.DEVICES,
        default="cpu",
        help="where the buffers live: cpu (numpy arrays) or cuda (torch CUDA tensors, rank r "
        "on GPU r mod the GPU count; every timed call ends with a device synchronisation)",
    )
    add(
        "--transport",
        choices=("tcp", "auto", "shm"),
        default=None,
        help="RINGFLOW_TRANSPORT for ringflow's ranks (default auto: shared memory between ranks "
        "of one host; tcp measures the loopback network path)",
    )
    add("--csv", metavar="FILE", help="write one row per system and size")
    add("--json", metavar="FILE", help="write the configuration, machine and every row")
    add("--plot", metavar="FILE.png", help="plot busbw and time against size (matplotlib)")
    add(
        "--timeout",
        type=positive_seconds,
        default=1800.0,
        metavar="SECONDS",
        help="stop a system's sweep after this long (default 1800)",
    )
    add("--no-progress", action="store_true", help="no progress bar on stderr")


_PARSER_OPTIONS: dict[str, Any] = {
    "description": DESCRIPTION,
    "allow_abbrev": False,
    "formatter_class": argparse.RawDescriptionHelpFormatter,
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench`` on an argparse subparsers object (``ringflow bench``)."""
    help_text = "measure a collective against torch gloo and MPI (nccl-tests style)"
    parser = subparsers.add_parser("bench", help=help_text, **_PARSER_OPTIONS)
    add_arguments(parser)
    return parser


def build_parser(prog: str = "python -m ringflow.bench") -> argparse.ArgumentParser:
    """A stand-alone parser: ``python -m ringflow.bench`` is ``ringflow bench``."""
    parser = argparse.ArgumentParser(prog=prog, **_PARSER_OPTIONS)
    add_arguments(parser)
    return parser


def _problem(args: argparse.Namespace, op: str) -> str:
    """What is wrong with this combination of options, or ''."""
    if args.maxbytes < args.minbytes:
        return f"--maxbytes {args.maxbytes} is smaller than --minbytes {args.minbytes}"
    if args.dtype == "bool" and args.collective in REDUCING and op not in ("min", "max"):
        return "bool reduces only with --op min or max"
    if args.root >= args.num_proc:
        return f"--root {args.root} is not a rank of {args.num_proc}"
    if args.dtype == "bfloat16" and importlib.util.find_spec("ml_dtypes") is None:
        return "bfloat16 needs ml_dtypes (pip install ml_dtypes)"
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib (pip install matplotlib)"
    return device.why_unusable(args.device)


def _peer_names(text: str) -> list[str]:
    names: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name and name not in names:
            names.append(name)
    return names


def _progress(total: int, disabled: bool) -> Any:
    if disabled or importlib.util.find_spec("tqdm") is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="size", leave=False, disable=None)


def _run_all(
    systems: list[str], spec: SweepSpec, args: argparse.Namespace, op: str
) -> list[launch.SystemRun]:
    runs: list[launch.SystemRun] = []
    todo = []
    for system in systems:
        why = ""
        if system != "ringflow":
            why = peers.why_missing(system)
            why = why or peers.unsupported(system, spec.collective, spec.dtype, op, spec.device)
            why = why or peers.crowded(system, args.num_proc)
        runs.append(launch.SystemRun(system, status="skipped", reason=why))
        if not why:
            todo.append(len(runs) - 1)
    bar = _progress(len(todo) * len(spec.points(args.num_proc)), args.no_progress)
    try:
        for index in todo:
            system = runs[index].system
            if bar is not None:
                bar.set_description(system)
            runs[index] = launch.run_system(
                system,
                spec,
                args.num_proc,
                transport=args.transport,
                timeout=args.timeout,
                on_row=(lambda: bar.update(1)) if bar is not None else (lambda: None),
            )
    finally:
        if bar is not None:
            bar.close()
    return runs


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, so the running job is stopped, not orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace) -> int:
    """Run ``ringflow bench`` with parsed arguments; returns the exit code.

    0: ringflow's sweep ran and every result was right; 1: it failed or some result was wrong;
    2: bad options. A peer that is missing, cannot run this dtype/op, or fails is reported in
    one line and does not change the exit code.
    """
    op = _OP_ALIASES.get(args.op, args.op)
    problem = _problem(args, op)
    if problem:
        print(f"ringflow bench: error: {problem}", file=sys.stderr)
        return 2
    spec = SweepSpec(
        collective=args.collective,
        sizes=tuple(size_range(args.minbytes, args.maxbytes, args.stepfactor)),
        dtype=args.dtype,
        op=op,
        warmup=args.warmup,
        iters=args.iters,
        root=args.root,
        check=bool(args.check),
        device=args.device,
    )
    if args.transport is None:
        args.transport = "auto"
    if not spec.points(args.num_proc):
        print("ringflow bench: error: every size is below one element per rank", file=sys.stderr)
        return 2
    load_start = os.getloadavg()[0]
    systems = ["ringflow", *(name for name in _peer_names(args.peers) if name != "ringflow")]
    try:
        with _terminate_as_interrupt():
            runs = _run_all(systems, spec, args, op)
    except KeyboardInterrupt:
        print("ringflow bench: interrupted; the running job was stopped", file=sys.stderr)
        return 130
    report.attach_ratios(runs)
    config = {
        "collective": spec.collective,
        "nranks": args.num_proc,
        "dtype": spec.dtype,
        "op": op,
        "root": spec.root,
        "warmup": spec.warmup,
        "iters": spec.iters,
        "check": spec.check,
        "transport": args.transport,
        "device": spec.device,
        "sizes": list(spec.sizes),
        "command": shlex.join(sys.argv),
        "cpus": os.cpu_count(),
        "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # start, end
    }
    sys.stdout.write(report.table(runs, config))
    sys.stdout.flush()
    if args.csv:
        report.write_csv(args.csv, runs)
    if args.json:
        report.write_json(args.json, runs, config)
    if args.plot:
        report.write_plot(args.plot, runs, config)
    ours = runs[0]
    wrong = any(row["wrong"] for row in ours.rows)
    return 1 if ours.status != "ok" or wrong else 0


def standalone(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ringflow.bench``."""
    return main(build_parser().parse_args(argv))
