"""Turn the device check's stage records and figures into results.json and a short summary.

Standard library only (it also runs where nothing else does). Subcommands:

- ``results --stages TSV --figures DIR --out OUT --budget S --seconds S --no-gpu REASON``:
  writes OUT/results.json and prints the summary (at most 20 lines); exit 1 when a stage
  failed or timed out.
- ``bench DIR FILE``: the figures of the bench stage from ``ringflow bench --json`` files
  ``DIR/n<N>.sweep.json`` and ``DIR/n<N>.gloo.json``; exit 1 when ringflow failed or was wrong.
- ``junit XML FILE``: pytest's counts and first failures from its JUnit XML; exit 1 when a test
  was skipped or none passed (on the device every GPU test must run).

Targets (the issue's, on the H200) are computed here from the figures of several stages:
allreduce 256 MiB HBM traffic = 5(N-1) x S / time (the issue's model of an out-of-place ring)
>= 50 % of the device-to-device copy rate (staging stage, bytes read + written); ringflow busbw
>= 10 x torch gloo's on CUDA tensors at 64 MiB; pinned staging >= 80 % of torch's pinned copies;
the kernels' a + b >= 85 % of the copy rate (kernels.py's own measurement, in kernels.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

BIG, SMALL, GLOO = 256 * 2**20, 8, 64 * 2**20
MAX_LINES = 20


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"unreadable": f"{path.name}: {error}"}


# -- bench --------------------------------------------------------------------------------------


def _rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{system: {"status", "reason", "rows": {bytes: row}}} of one `ringflow bench --json`."""
    systems = {}
    for system in document.get("systems", []):
        rows = {row["bytes"]: row for row in system.get("rows", [])}
        systems[system["system"]] = {
            "status": system.get("status"),
            "reason": system.get("reason", ""),
            "rows": rows,
        }
    return systems


def _pick(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {key: row.get(key) for key in ("time_us", "busbw_gbps", "algbw_gbps", "wrong")}


def bench(directory: Path, out: Path) -> int:
    figures: dict[str, Any] = {}
    bad = []
    for n in (2, 4):
        entry: dict[str, Any] = {}
        for part, sizes in (("sweep", (SMALL, BIG)), ("gloo", (GLOO,))):
            path = directory / f"n{n}.{part}.json"
            if not path.exists():
                bad.append(f"n={n} {part}: no result")
                continue
            for system, found in _rows(_load(path)).items():
                key = system if part == "sweep" or system != "ringflow" else "ringflow_64M"
                if found["status"] != "ok":
                    entry[f"{key}_status"] = f"{found['status']}: {found['reason']}"
                for size in sizes:
                    entry[f"{key}_{size}"] = _pick(found["rows"].get(size))
                if system == "ringflow":
                    wrong = sum(row.get("wrong") or 0 for row in found["rows"].values())
                    if found["status"] != "ok" or wrong:
                        bad.append(f"n={n} {part}: ringflow {found['status']}, {wrong} wrong")
        figures[f"n{n}"] = entry
    figures["problems"] = bad
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 1 if bad else 0


# -- junit --------------------------------------------------------------------------------------


def junit(path: Path, out: Path) -> int:
    if not path.exists():
        out.write_text(json.dumps({"junit": "missing (pytest did not finish)"}) + "\n")
        return 0
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed, reasons = [], {}
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None and len(failed) < 10:
                message = (node.get("message") or "").splitlines()[0:1]
                failed.append(f"{case.get('name')}: {message[0][:200] if message else tag}")
        skip = case.find("skipped")
        if skip is not None:
            reason = (skip.get("message") or "")[:150]
            reasons[reason] = reasons.get(reason, 0) + 1
    figures = {
        **counts,
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "seconds": float(suite.get("time", 0)),
        "first_failures": failed,
        "skip_reasons": reasons,
    }
    out.write_text(json.dumps(figures, indent=1) + "\n")
    if counts["skipped"] or not figures["passed"]:  # on the device every GPU test must run
        top = max(reasons, key=reasons.get) if reasons else "none ran"
        print(f"error: {counts['skipped']} GPU tests skipped ({top})", file=sys.stderr)
        return 1
    return 0


# -- results ------------------------------------------------------------------------------------


def _stages(tsv: Path, figures_dir: Path) -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = {}
    for line in tsv.read_text().splitlines():
        name, status, seconds, limit, reason = (line.split("\t") + [""] * 5)[:5]
        stages[name] = {
            "status": status,
            "seconds": float(seconds or 0),
            "limit_s": int(float(limit or 0)),
            "reason": reason,
            "figures": {},
        }
    for path in sorted(figures_dir.glob("*.json")):
        stage, _, part = path.stem.partition(".")
        if stage in stages:
            stages[stage]["figures"][part or "main"] = _load(path)
    return stages


def _get(data: Any, *keys: Any) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def targets(stages: dict[str, dict[str, Any]], kernels: Any) -> dict[str, Any]:
    """The issue's targets from whatever figures exist (absent figures: absent entries)."""
    result: dict[str, Any] = {}
    copy = _get(stages, "staging", "figures", "rates", "d2d_copy_gbps_read_plus_written")
    bench_figures = _get(stages, "bench", "figures", "allreduce") or {}
    for n in (2, 4):
        entry = bench_figures.get(f"n{n}") or {}
        big = entry.get(f"ringflow_{BIG}")
        if big and big.get("time_us"):
            hbm = 5 * (n - 1) * BIG / (big["time_us"] / 1e6) / 1e9
            result[f"allreduce_256M_n{n}"] = {
                "busbw_gbps": big["busbw_gbps"],
                "hbm_model_gbps": hbm,
                "of_copy_rate": hbm / copy if copy else None,
                "target": ">= 0.5 of the D2D copy rate (model 5(N-1)S / time)",
                "met": (hbm / copy >= 0.5) if copy else None,
            }
        small = entry.get(f"ringflow_{SMALL}")
        if small:
            result[f"allreduce_8B_latency_us_n{n}"] = small["time_us"]
        ours, gloo = entry.get(f"ringflow_64M_{GLOO}"), entry.get(f"gloo_{GLOO}")
        if ours and gloo and gloo.get("busbw_gbps"):
            ratio = ours["busbw_gbps"] / gloo["busbw_gbps"]
            result[f"vs_gloo_cuda_64M_n{n}"] = {
                "ratio": ratio,
                "target": ">= 10",
                "met": ratio >= 10,
            }
        nccl = entry.get(f"nccl_{BIG}")
        if big and nccl and nccl.get("busbw_gbps"):
            result[f"vs_nccl_256M_n{n}"] = {"ratio": big["busbw_gbps"] / nccl["busbw_gbps"]}
        elif entry.get("nccl_status"):
            result[f"nccl_n{n}"] = entry["nccl_status"]
    staged = _get(stages, "staging", "figures", "rates", "staged_vs_torch_pinned")
    if staged is not None:
        result["pinned_staging"] = {
            "of_torch_pinned": staged,
            "target": ">= 0.8",
            "met": staged >= 0.8,
        }
    bandwidth = kernels.get("bandwidth") if isinstance(kernels, dict) else None
    for name, figure in (bandwidth or {}).items():  # kernels.py: a + b against the D2D copy
        if isinstance(figure, dict) and "ratio" in figure:
            ratio = figure["ratio"]
            result[f"kernel_a_plus_b_{name}"] = {"of_copy_rate": ratio, "target": ">= 0.85"}
            result[f"kernel_a_plus_b_{name}"]["met"] = ratio >= 0.85
    return result


def _figure_text(name: str, stage: dict[str, Any]) -> str:
    """A few words of a stage's figures for its summary line."""
    figures = stage["figures"]
    if name == "probe":
        versions, ipc = figures.get("versions") or {}, figures.get("ipc") or {}
        text = f"python {versions.get('python')}, torch {versions.get('torch')}, cupy {versions.get('cupy')}"
        if ipc:
            text += f"; IPC {'ok' if ipc.get('ok') else 'FAILED'} ({ipc.get('mapped_copy_gbps', 0):.0f} GB/s mapped copy)"
        return text
    if name == "build":
        built = figures.get("ringflow") or {}
        return (
            f"cuda_built {built.get('cuda_built')}, cuda_available {built.get('cuda_available')}"
            if built
            else ""
        )
    if name == "staging":
        rates = figures.get("rates") or {}
        if not rates:
            return ""
        return (
            f"torch pinned H2D {rates.get('torch_pinned_h2d_gbps', 0):.1f} / D2H "
            f"{rates.get('torch_pinned_d2h_gbps', 0):.1f} GB/s, D2D {rates.get('d2d_copy_gbps_read_plus_written', 0):.0f} GB/s"
        )
    if name == "kernels":
        kernels = figures.get("kernels") or {}
        if "checks" not in kernels:
            return ""
        return f"{kernels['checks']} checks, {kernels.get('mismatch_count', '?')} mismatches"
    if name == "pytest_gpu":
        counts = figures.get("junit") or {}
        return ", ".join(
            f"{counts[k]} {k}" for k in ("passed", "failures", "errors", "skipped") if counts.get(k)
        )
    ranks = figures.get("ranks")
    if isinstance(ranks, dict) and "run_per_rank" in ranks:
        return f"{ranks['run_per_rank']} cases/rank, {ranks['failed_all_ranks']} failed in {ranks['seconds_max']} s"
    return ""


def _target_lines(found: dict[str, Any]) -> list[str]:
    parts = []
    for n in (2, 4):
        big = found.get(f"allreduce_256M_n{n}")
        if big:
            share = big["of_copy_rate"]
            share_text = f"{share:.0%} of copy" if share is not None else "copy rate unknown"
            parts.append(f"N={n} 256M busbw {big['busbw_gbps']:.0f} GB/s, HBM {share_text}")
        if f"allreduce_8B_latency_us_n{n}" in found:
            parts.append(f"N={n} 8B {found[f'allreduce_8B_latency_us_n{n}']:.0f} us")
        if f"vs_gloo_cuda_64M_n{n}" in found:
            parts.append(f"N={n} vs gloo {found[f'vs_gloo_cuda_64M_n{n}']['ratio']:.1f}x")
    for key, value in found.items():
        if key.startswith("kernel_a_plus_b_"):
            parts.append(f"a+b {key[16:]} {value['of_copy_rate']:.0%} of copy")
    if "pinned_staging" in found:
        parts.append(f"staging {found['pinned_staging']['of_torch_pinned']:.0%} of torch pinned")
    lines, line = [], "targets:"
    for part in parts:
        if len(line) + len(part) > 110:
            lines.append(line)
            line = "  "
        line += f" {part};"
    if parts:
        lines.append(line)
    return lines


def results(args: argparse.Namespace) -> int:
    out = Path(args.out)
    stages = _stages(Path(args.stages), Path(args.figures))
    kernels_path = out / "kernels.json"
    kernels = _load(kernels_path) if kernels_path.exists() else None
    if isinstance(kernels, dict) and "kernels" in stages:  # kernels.py's own JSON, abridged
        keep = ("status", "reason", "checks", "mismatch_count", "bandwidth", "error", "seconds")
        stages["kernels"]["figures"]["kernels"] = {k: kernels[k] for k in keep if k in kernels}
        stages["kernels"]["figures"]["file"] = "kernels.json"
    found = targets(stages, kernels)
    document = {
        "tool": "tools/device_check.sh",
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": not args.no_gpu,
        "no_gpu_reason": args.no_gpu,
        "budget_s": args.budget,
        "seconds": args.seconds,
        "stages": stages,
        "targets": found,
        "files": sorted({p.name for p in out.iterdir() if p.is_file()} | {"results.json"}),
    }
    (out / "results.json").write_text(json.dumps(document, indent=1) + "\n")

    versions = _get(stages, "probe", "figures", "versions") or {}
    gpu = versions.get("gpu_name") or _get(versions, "gpus", 0, "name")
    gpu = gpu or (f"no GPU ({args.no_gpu})" if args.no_gpu else "GPU name unknown")
    lines = [
        f"ringflow device check: {gpu}, driver {versions.get('driver', '-')}; {args.seconds} s of {args.budget} s"
    ]
    for name, stage in stages.items():
        detail = stage["reason"] or _figure_text(name, stage)
        lines.append(f"  {name:<15} {stage['status']:<8} {stage['seconds']:>6.1f}s  {detail}"[:160])
    lines += _target_lines(found)
    lines.append(f"results: {out / 'results.json'}; log: {out / 'device_check.log'}")
    print("\n".join(lines[:MAX_LINES]))
    bad = [name for name, stage in stages.items() if stage["status"] in ("failed", "timeout")]
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("results")
    r.add_argument("--stages", required=True)
    r.add_argument("--figures", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--budget", type=int, required=True)
    r.add_argument("--seconds", type=int, required=True)
    r.add_argument("--no-gpu", default="")
    b = commands.add_parser("bench")
    b.add_argument("directory", type=Path)
    b.add_argument("out", type=Path)
    j = commands.add_parser("junit")
    j.add_argument("xml", type=Path)
    j.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "bench":
        return bench(args.directory, args.out)
    if args.command == "junit":
        return junit(args.xml, args.out)
    return results(args)


if __name__ == "__main__":
    sys.exit(main())
