"""The device check (tools/device_check.sh) where no GPU is: every stage skipped with its reason,
exit 0, a valid results.json and a short summary; and its pieces that run only on the device
(merging rank results, the bench and pytest figures, the targets) on synthetic inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gpu import arrays
from tests.harness import REPO_ROOT, clean_env

SCRIPT = REPO_ROOT / "tools" / "device_check.sh"
TOOLS = REPO_ROOT / "tools" / "device_check"
sys.path.insert(0, str(TOOLS))

import rank_results  # noqa: E402
import summarize  # noqa: E402

STAGES = [
    "probe", "build", "kernels", "staging", "streams",
    "collectives_n1", "collectives_n2", "collectives_n4", "bench", "pytest_gpu",
]  # fmt: skip


@pytest.mark.timeout(120)
def test_without_a_gpu_every_stage_is_skipped_with_its_reason(tmp_path: Path) -> None:
    # A stand-in nvidia-smi that lists no GPU shadows any real one: the result is the same on
    # every machine (a real GPU machine runs the check itself, not this test).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    env = clean_env(
        {
            "PATH": f"{fake}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "OUT": str(out),
            "TMPDIR": str(scratch),
            "PYTHON": sys.executable,
        }
    )
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()
    assert 3 <= len(summary) <= 20, done.stdout
    assert summary[0].startswith("ringflow device check: no GPU (nvidia-smi lists no GPU)")
    document = json.loads((out / "results.json").read_text())
    assert list(document["stages"]) == STAGES
    assert document["gpu"] is False
    for name, stage in document["stages"].items():
        assert stage["status"] == "skipped", (name, stage)
        assert stage["reason"] == "no GPU: nvidia-smi lists no GPU", (name, stage)
    versions = document["stages"]["probe"]["figures"]["versions"]
    assert versions["python"] == sys.version.split()[0]
    assert sorted(p.name for p in out.iterdir()) == ["device_check.log", "results.json"]
    assert not list(scratch.iterdir()), "the check left its scratch folder behind"


def _rank_file(folder: Path, rank: int, **fields) -> None:
    result = {"cases": 3, "run": 3, "failed": 0, "failures": [], "aborted": "", "seconds": 1.0}
    result.update(fields)
    rank_results.write(str(folder), rank, result)


def test_rank_results_merge(tmp_path: Path) -> None:
    _rank_file(tmp_path, 0, frameworks=["torch"])
    _rank_file(tmp_path, 1, frameworks=["torch"])
    figures, reason = rank_results.merge(str(tmp_path), 2)
    assert reason == "" and figures["ranks_reported"] == [0, 1]

    figures, reason = rank_results.merge(str(tmp_path), 3)
    assert reason.startswith("ranks [2] wrote no result")

    _rank_file(tmp_path, 1, failed=1, failures=["rank 1: allreduce torch int8: wrong"])
    figures, reason = rank_results.merge(str(tmp_path), 2)
    assert reason.startswith("1 failed cases on 2 ranks; first: rank 1: allreduce")

    _rank_file(tmp_path, 0, frameworks=[], skipped={"cupy": "cupy is not importable"})
    _rank_file(tmp_path, 1, frameworks=[])
    figures, reason = rank_results.merge(str(tmp_path), 2)
    assert reason.startswith("no framework made CUDA arrays")


def _bench_json(path: Path, systems: dict[str, list[tuple[int, float]]]) -> None:
    """A `ringflow bench --json` document: {system: [(bytes, time_us)]}, busbw = 1 GB/s / us."""
    document = {
        "config": {},
        "systems": [
            {
                "system": name,
                "status": "ok",
                "reason": "",
                "rows": [
                    {
                        "bytes": b,
                        "time_us": t,
                        "busbw_gbps": 1000.0 / t,
                        "algbw_gbps": 1.0,
                        "wrong": 0,
                    }
                    for b, t in rows
                ],
            }
            for name, rows in systems.items()
        ],
    }
    path.write_text(json.dumps(document))


def test_bench_figures_and_targets(tmp_path: Path) -> None:
    bench_dir, fig = tmp_path / "bench", tmp_path / "fig"
    bench_dir.mkdir()
    fig.mkdir()
    big, gloo = summarize.BIG, summarize.GLOO
    for n in (2, 4):
        _bench_json(
            bench_dir / f"n{n}.sweep.json",
            {"ringflow": [(8, 20.0), (big, 1000.0)], "nccl": [(8, 10.0), (big, 500.0)]},
        )
        _bench_json(
            bench_dir / f"n{n}.gloo.json", {"ringflow": [(gloo, 100.0)], "gloo": [(gloo, 2000.0)]}
        )
    assert summarize.bench(bench_dir, fig / "bench.allreduce.json") == 0
    (fig / "staging.rates.json").write_text(
        json.dumps({"d2d_copy_gbps_read_plus_written": 4000.0, "staged_vs_torch_pinned": 0.9})
    )
    stages = tmp_path / "stages.tsv"
    stages.write_text("bench\tpassed\t10.0\t150\t\nstaging\tpassed\t5.0\t40\t\n")
    kernels = {"bandwidth": {"copy_GBps": 4000, "float32": {"reduce_GBps": 3600, "ratio": 0.9}}}
    found = summarize.targets(summarize._stages(stages, fig), kernels)
    assert found["kernel_a_plus_b_float32"] == {
        "of_copy_rate": 0.9,
        "target": ">= 0.85",
        "met": True,
    }
    # 256 MiB in 1 ms at N = 2: 5 x 1 x 256 MiB / 1 ms = 1342 GB/s, a third of 4000 GB/s
    assert found["allreduce_256M_n2"]["hbm_model_gbps"] == pytest.approx(5 * big / 1e-3 / 1e9)
    assert found["allreduce_256M_n2"]["met"] is False
    assert found["allreduce_256M_n4"]["of_copy_rate"] == pytest.approx(15 * big / 1e-3 / 1e9 / 4000)
    assert found["allreduce_8B_latency_us_n4"] == 20.0
    assert found["vs_gloo_cuda_64M_n2"] == {"ratio": 20.0, "target": ">= 10", "met": True}
    assert found["vs_nccl_256M_n2"]["ratio"] == pytest.approx(0.5)
    assert found["pinned_staging"]["met"] is True
    assert len(summarize._target_lines(found)) <= 4


def test_bench_figures_fail_on_wrong_results(tmp_path: Path) -> None:
    _bench_json(tmp_path / "n2.sweep.json", {"ringflow": [(8, 20.0)]})
    document = json.loads((tmp_path / "n2.sweep.json").read_text())
    document["systems"][0]["rows"][0]["wrong"] = 3
    (tmp_path / "n2.sweep.json").write_text(json.dumps(document))
    assert summarize.bench(tmp_path, tmp_path / "out.json") == 1
    problems = json.loads((tmp_path / "out.json").read_text())["problems"]
    assert "n=2 sweep: ringflow ok, 3 wrong" in problems
    assert "n=4 gloo: no result" in problems


@pytest.mark.timeout(120)
def test_collectives_stage_plumbing_without_cuda(tmp_path: Path) -> None:
    """Under `ringflow run`, collectives.py writes one result per rank (here: the barrier only,
    every framework skipped and named) and the merge says no framework made CUDA arrays."""
    if not arrays.why_cuda_unusable() or not all(
        map(arrays.why_framework_missing, arrays.FRAMEWORKS)
    ):
        pytest.skip("CUDA or a CUDA framework is here: the device check runs this stage for real")
    env = clean_env({"RINGFLOW_TIMEOUT": "30"})
    command = [sys.executable, "-m", "ringflow.run", "-np", "2", "--timeout", "90", "--"]
    command += [sys.executable, str(TOOLS / "collectives.py"), "--out", str(tmp_path)]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures, reason = rank_results.merge(str(tmp_path), 2)
    assert figures["by_collective_rank0"] == {"barrier": [1, 1]}, figures
    assert set(figures["skipped"]) == {"cupy", "torch"}, figures
    assert reason.startswith("no framework made CUDA arrays"), reason
