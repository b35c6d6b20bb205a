"""Smoke tests of ``ringflow bench``: a tiny sweep, its outputs, and peers that cannot run.

The command runs in a subprocess with a timeout, the way users run it (the ``ringflow`` script's
entry point). Peers are never started here: ``nonsense`` is unknown and ``mpi`` is hidden by a
PATH without ``mpirun`` (or is missing mpi4py), so both must be skipped with a one-line reason.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ringflow.bench import data, device, peers
from ringflow.bench.spec import bus_factor, layout, parse_size, size_range
from tests.harness import clean_env

RUN_TIMEOUT_S = 45.0
_ENTRY = "import sys; from ringflow.run.cli import main; sys.exit(main())"


def ringflow_bench(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``ringflow bench ARGS`` with only the Python interpreter's directory on PATH."""
    env = clean_env({"PATH": str(Path(sys.executable).parent), "RINGFLOW_TIMEOUT": "20"})
    return subprocess.run(
        [sys.executable, "-c", _ENTRY, "bench", *args, "--timeout", "30", "--no-progress"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def table_rows(stdout: str, system: str) -> list[list[str]]:
    """The data rows of one system's table in the report."""
    rows: list[list[str]] = []
    inside = False
    for line in stdout.splitlines():
        if line.startswith("#"):
            inside = line == f"# {system}" or (inside and line.startswith("#  "))
        elif inside and line.strip():
            rows.append(line.split())
    return rows


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 0, output


@pytest.mark.timeout(60)
def test_allreduce_sweep_table_csv_json_and_skipped_peers(tmp_path: Path) -> None:
    result = ringflow_bench(
        "allreduce", "-np", "2", "-b", "8", "-e", "4K", "-f", "4", "-w", "1", "-n", "3",
        "--csv", "out.csv", "--json", "out.json", "--peers", "nonsense,mpi,nccl",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert_clean(result)
    rows = table_rows(result.stdout, "ringflow")
    assert [int(row[0]) for row in rows] == [8, 32, 128, 512, 2048], result.stdout
    assert all(row[2] == "float32" and row[7] == "0" for row in rows), result.stdout  # #wrong
    skipped = [line for line in result.stdout.splitlines() if ": skipped: " in line]
    assert [line.split(":")[0] for line in skipped] == ["# nonsense", "# mpi", "# nccl"]

    with (tmp_path / "out.csv").open(newline="") as f:
        records = list(csv.DictReader(f))
    assert [int(r["bytes"]) for r in records] == [8, 32, 128, 512, 2048]
    for r in records:
        assert (r["system"], r["collective"], r["nranks"], r["wrong"]) == (
            "ringflow", "allreduce", "2", "0"
        )  # fmt: skip
        assert float(r["time_us"]) > 0
        assert float(r["busbw_gbps"]) == pytest.approx(float(r["algbw_gbps"]))  # 2(N-1)/N = 1

    document = json.loads((tmp_path / "out.json").read_text())
    assert document["config"]["nranks"] == 2
    systems = {s["system"]: s for s in document["systems"]}
    assert systems["ringflow"]["status"] == "ok"
    assert [row["wrong"] for row in systems["ringflow"]["rows"]] == [0] * 5
    assert systems["nonsense"]["status"] == systems["mpi"]["status"] == "skipped"
    assert systems["mpi"]["reason"] and "\n" not in systems["mpi"]["reason"]
    assert systems["nccl"]["status"] == "skipped" and "\n" not in systems["nccl"]["reason"]
    assert document["config"]["device"] == "cpu" and document["config"]["transport"] == "auto"
    assert [row["transport"] for row in systems["ringflow"]["rows"]] == ["shm"] * 5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("collective", ["broadcast", "allgather", "reducescatter", "alltoall"])
def test_other_collectives_are_exact(collective: str, tmp_path: Path) -> None:
    result = ringflow_bench(
        collective, "-np", "2", "-b", "64", "-e", "4K", "-f", "64", "-w", "1", "-n", "2",
        "-d", "int32", tmp_path=tmp_path,
    )  # fmt: skip
    assert_clean(result)
    rows = table_rows(result.stdout, "ringflow")
    assert [int(row[0]) for row in rows] == [64, 4096], result.stdout
    assert all(row[7] == "0" for row in rows), result.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["allreduce", "-b", "4K", "-e", "8"], "smaller than --minbytes"),
        (["allreduce", "-d", "bool", "-o", "sum"], "bool reduces only"),
        (["broadcast", "-np", "2", "-r", "2"], "is not a rank"),
    ],
)
def test_bad_options_fail_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = ringflow_bench(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_sizes_follow_nccl_tests() -> None:
    assert [parse_size(s) for s in ("8", "64K", "256M", "1G", "4KiB")] == [
        8, 64 << 10, 256 << 20, 1 << 30, 4096
    ]  # fmt: skip
    assert size_range(8, 4096, 4) == [8, 32, 128, 512, 2048]
    assert layout("allgather", 1000, 4, 3) == (996, 83)  # 250 elements -> 83 per rank
    assert layout("allreduce", 10, 4, 3) == (8, 2)
    assert bus_factor("allreduce", 4) == 1.5
    assert bus_factor("reducescatter", 4) == 0.75
    assert bus_factor("broadcast", 4) == 1.0


@pytest.mark.parametrize("dtype", ["int8", "float16", "float32", "int64"])
def test_checks_catch_one_wrong_element(dtype: str) -> None:
    np_dtype = np.dtype(dtype)
    count = data.PERIOD * 3 + 2
    segments = data.expected_output("allreduce", 0, 3, count, "sum", np_dtype, 0)
    buf = np.zeros(count, np_dtype)
    data.fill(buf, segments)
    assert data.count_wrong(buf, segments) == 0
    buf[count // 2] += np_dtype.type(1)
    assert data.count_wrong(buf, segments) == 1


def test_average_rounds_to_nearest_even() -> None:
    # ranks' values at one position: 1..7 shifted per rank; sums over 2 ranks are odd or even
    got = data.reduced_pattern("avg", 2, np.dtype(np.int32))
    sums = np.array([(k % 7 + 1) + ((k + 1) % 7 + 1) for k in range(data.PERIOD)])
    assert got.tolist() == np.round(sums / 2).astype(int).tolist()


@pytest.mark.timeout(60)
def test_device_cuda_without_a_gpu_fails_in_one_line(tmp_path: Path) -> None:
    import ringflow

    if getattr(ringflow, "cuda_available", lambda: False)():
        pytest.skip("a GPU is here: --device cuda runs (the device check measures it)")
    result = ringflow_bench("allreduce", "--device", "cuda", tmp_path=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--device cuda needs a GPU" in result.stderr and "Traceback" not in result.stderr


def test_peers_say_which_device_they_need() -> None:
    assert peers.unsupported("nccl", "allreduce", "float32", "sum", "cpu").startswith("nccl runs")
    assert peers.unsupported("mpi", "allreduce", "float32", "sum", "cuda").startswith("the MPI")
    assert peers.unsupported("nccl", "allreduce", "bool", "max", "cuda") == "nccl has no bool"
    assert peers.unsupported("gloo", "allreduce", "float32", "sum", "cuda") == ""
    assert peers.unsupported("nccl", "allreduce", "bfloat16", "avg", "cuda") == ""


def test_cpu_buffers_are_used_as_they_are() -> None:
    inp = np.arange(4, dtype=np.float32)
    placed_inp, placed_out = device.place(inp, inp, "cpu")
    assert placed_inp is inp and placed_out is inp
    assert device.to_host(inp) is inp
    assert device.why_unusable("cpu") == ""
    device.synchronizer("cpu")()
