"""ringflow under a real two-node Slurm (tests/slurm_lab.py): srun and sbatch, nothing of ours.

The ranks find everything in Slurm's variables: rank, size, local rank, local size (from the
compressed tasks-per-node list), and the store on the step's first node at a port derived from
the job and step ids. Node names do not resolve here, so that address comes from scontrol's
NodeAddr. Only RINGFLOW_SECRET is set by the user (a job on several hosts needs one).
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import launcher_rank, slurm_lab

RANK_SCRIPT = str(Path(launcher_rank.__file__).resolve())
JOB_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def slurm() -> Iterator[slurm_lab.SlurmLab]:
    reason = slurm_lab.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with slurm_lab.SlurmLab() as lab:
        yield lab


def job_env(slurm: slurm_lab.SlurmLab, report_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in slurm.env.items()
        if not k.startswith(("RINGFLOW_", "MASTER_", "OMPI_", "PMIX_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    }
    # TCP between the nodes is the only way anyway; set so that a shared-memory default never
    # makes the test pass on one machine for the wrong reason.
    env.update(RF_REPORT_DIR=str(report_dir), RINGFLOW_TRANSPORT="tcp", RINGFLOW_TIMEOUT="30")
    return env


def test_srun_two_nodes_four_tasks(slurm, tmp_path):
    env = job_env(slurm, tmp_path)
    env["RINGFLOW_SECRET"] = secrets.token_hex(16)
    argv = ["srun", "-N2", "-n4", sys.executable, RANK_SCRIPT]
    done = slurm.run(argv, env=env, timeout=JOB_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output + slurm.logs()
    found = launcher_rank.read_reports(str(tmp_path))
    launcher_rank.check_job(found, 4, [2, 2, 2, 2], output)
    assert [r["local_rank"] for r in found] == [0, 1, 0, 1]
    assert {r["transport"] for r in found} == {"tcp"}


def test_sbatch_script_uneven_nodes(slurm, tmp_path):
    # -n3 on two nodes: tasks per node "2,1"; the batch script itself is no rank (no step).
    done_fifo = tmp_path / "done.fifo"
    os.mkfifo(done_fifo)
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH -N2 -n3\n"
        "# Every rank must share one secret: export it in the batch script, srun passes it on.\n"
        'export RINGFLOW_SECRET="$(od -An -tx1 -N16 /dev/urandom | tr -d " \\n")"\n'
        f"{sys.executable} -c 'import ringflow._environment as e; print(\"batch:\", e.detect().source)'\n"
        f"srun {sys.executable} {RANK_SCRIPT}\n"
        f'echo "$?" > {done_fifo}\n'
    )
    reports = tmp_path / "reports"
    reports.mkdir()
    out = tmp_path / "job.out"
    submitted = slurm.run(["sbatch", "-o", str(out), str(script)], env=job_env(slurm, reports))
    assert submitted.returncode == 0, submitted.stderr
    # The script reports its end through a FIFO: no polling of squeue.
    status = _read_fifo(done_fifo, JOB_TIMEOUT_S)
    log = out.read_text() if out.exists() else ""
    assert status == "0", f"srun in the batch script exited {status!r}: {log}{slurm.logs()}"
    assert "batch: single" in log
    found = launcher_rank.read_reports(str(reports))
    launcher_rank.check_job(found, 3, [2, 2, 1], log)
    assert [r["local_rank"] for r in found] == [0, 1, 0]


def _read_fifo(path: Path, timeout: float) -> str | None:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(path.read_text().strip()))
    reader.start()
    reader.join(timeout)
    if reader.is_alive():  # release the reader: open the writing end ourselves
        with open(path, "w"):
            pass
        reader.join()
        return None
    return result[0]
