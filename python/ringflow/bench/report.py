"""Turn the systems' rows into the nccl-tests-style table, CSV, JSON and a plot.

ratio (peer rows): ringflow busbw / peer busbw at the same size, which equals peer time /
ringflow time; above 1 means ringflow is faster.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
from collections.abc import Sequence
from typing import Any

from ringflow.bench.launch import SystemRun
from ringflow.bench.spec import REDUCING

__all__ = ["CSV_FIELDS", "attach_ratios", "table", "write_csv", "write_json", "write_plot"]

CSV_FIELDS = (
    "system",
    "collective",
    "nranks",
    "bytes",
    "count",
    "dtype",
    "op",
    "time_us",
    "algbw_gbps",
    "busbw_gbps",
    "wrong",
    "ratio",
    "transport",
)
_BUS = {"allreduce": "2(N-1)/N", "broadcast": "1"}


def attach_ratios(runs: Sequence[SystemRun]) -> None:
    """Set row['ratio'] on every peer row that has a ringflow row of the same size."""
    ours = {row["bytes"]: row for run in runs if run.system == "ringflow" for row in run.rows}
    for run in runs:
        for row in run.rows:
            mine = ours.get(row["bytes"])
            if run.system != "ringflow" and mine is not None and mine["time_us"] > 0:
                row["ratio"] = row["time_us"] / mine["time_us"]


def _heading(config: dict[str, Any]) -> list[str]:
    collective = config["collective"]
    op = config["op"] if collective in REDUCING else "none"
    root = f", root {config['root']}" if collective == "broadcast" else ""
    start, end = config["loadavg_1min"]
    return [
        f"# ringflow bench {collective}: {config['nranks']} ranks, {config['dtype']}, op {op}"
        f"{root}, warmup {config['warmup']}, iters {config['iters']}, "
        f"ringflow transport {config['transport']}, buffers on {config.get('device', 'cpu')}",
        "# time: median over iterations of the slowest rank; algbw = bytes / time; "
        f"busbw = algbw x {_BUS.get(collective, '(N-1)/N')} (nccl-tests)",
        f"# machine: {config['cpus']} cpus, 1-minute load average {start:.2f} at start, "
        f"{end:.2f} at end (other processes make times noisy: compare ratios)",
    ]


def _system_table(run: SystemRun, op: str) -> list[str]:
    if not run.rows:
        return [f"# {run.system}: {run.status}: {run.reason}"]
    lines = [
        f"# {run.system}",
        f"#{'size':>11} {'count':>12} {'type':>9} {'redop':>6} {'time':>11} "
        f"{'algbw':>8} {'busbw':>8} {'#wrong':>7} {'transport':>9}",
        f"#{'(B)':>11} {'(elements)':>12} {'':>9} {'':>6} {'(us)':>11} "
        f"{'(GB/s)':>8} {'(GB/s)':>8} {'':>7} {'':>9}",
    ]
    for row in run.rows:
        wrong = "N/A" if row["wrong"] is None else str(row["wrong"])
        lines.append(
            f"{row['bytes']:>12} {row['count']:>12} {row['dtype']:>9} {op:>6} "
            f"{row['time_us']:>11.1f} {row['algbw_gbps']:>8.3f} {row['busbw_gbps']:>8.3f} "
            f"{wrong:>7} {row.get('transport') or '-':>9}"
        )
    average = sum(row["busbw_gbps"] for row in run.rows) / len(run.rows)
    lines.append(f"# Avg bus bandwidth    : {average:.3f} GB/s")
    if run.status != "ok":
        lines.append(f"# {run.system}: {run.status}: {run.reason}")
    return lines


def _comparison(runs: Sequence[SystemRun]) -> list[str]:
    ran = [run for run in runs if run.rows]
    peers = [run for run in ran if run.system != "ringflow"]
    if not peers or ran[0].system != "ringflow":
        return []
    by_size = [{row["bytes"]: row for row in run.rows} for run in ran]
    names = [run.system for run in ran]
    header = f"#{'size':>11}" + "".join(f" {name + ' us':>12}" for name in names)
    header += "".join(f" {name + ' busbw':>15}" for name in names)
    header += "".join(f" {'vs ' + run.system:>9}" for run in peers)
    lines = [
        "# comparison: ratio = ringflow busbw / peer busbw = peer time / ringflow time "
        "(> 1: ringflow is faster)",
        header,
    ]
    for nbytes in by_size[0]:
        rows = [sizes.get(nbytes) for sizes in by_size]
        line = f"{nbytes:>12}"
        line += "".join(f" {_number(row, 'time_us', '.1f'):>12}" for row in rows)
        line += "".join(f" {_number(row, 'busbw_gbps', '.3f'):>15}" for row in rows)
        line += "".join(f" {_number(row, 'ratio', '.2f'):>9}" for row in rows[1:])
        lines.append(line)
    return lines


def _number(row: dict[str, Any] | None, key: str, spec: str) -> str:
    value = None if row is None else row.get(key)
    return "-" if value is None else format(value, spec)


def table(runs: Sequence[SystemRun], config: dict[str, Any]) -> str:
    """The whole text report: one table per system, skip reasons, then the comparison."""
    op = config["op"] if config["collective"] in REDUCING else "none"
    lines = _heading(config)
    for run in runs:
        if run.status == "skipped":
            lines.append(f"# {run.system}: skipped: {run.reason}")
        else:
            lines += _system_table(run, op)
    lines += _comparison(runs)
    return "\n".join(lines) + "\n"


def write_csv(path: str, runs: Sequence[SystemRun]) -> None:
    """One row per (system, size) with the CSV_FIELDS columns."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            writer.writerows(run.rows)


def _machine() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def write_json(path: str, runs: Sequence[SystemRun], config: dict[str, Any]) -> None:
    """Everything: the configuration, the machine, and every system's status and rows."""
    document = {
        "config": config,
        "machine": _machine(),
        "systems": [
            {"system": run.system, "status": run.status, "reason": run.reason, "rows": run.rows}
            for run in runs
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
        f.write("\n")


def write_plot(path: str, runs: Sequence[SystemRun], config: dict[str, Any]) -> None:
    """busbw and time against size, one line per system, log axes (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bw_axis, time_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        rows = [row for row in run.rows if row["busbw_gbps"] > 0 and row["time_us"] > 0]
        if not rows:
            continue
        sizes = [row["bytes"] for row in rows]
        bw_axis.plot(sizes, [row["busbw_gbps"] for row in rows], marker="o", label=run.system)
        time_axis.plot(sizes, [row["time_us"] for row in rows], marker="o", label=run.system)
    for axis, label in ((bw_axis, "busbw (GB/s)"), (time_axis, "time (µs)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("size (bytes)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(
        f"{config['collective']}, {config['nranks']} ranks, {config['dtype']}, "
        f"{config['op']}, "
        + ("TCP on one host" if config.get("device", "cpu") == "cpu" else "CUDA buffers, one host")
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
