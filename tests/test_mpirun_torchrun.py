"""ringflow jobs started by the real mpirun (Open MPI) and torchrun, with no variable of ours."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import launcher_rank, netlab

RANK_SCRIPT = str(Path(launcher_rank.__file__).resolve())
REPO_ROOT = Path(__file__).resolve().parent.parent

# Launcher and rendezvous variables of the pytest process must not leak into the jobs.
_STRIP = ("RINGFLOW_", "MASTER_", "OMPI_", "PMIX_", "SLURM_", "PMI_")
_STRIP_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_STRIP) and k not in _STRIP_NAMES
    }
    # Open MPI refuses root without these; CI runs as root. Ranks import tests.launcher_rank's
    # module by path only, so the repository root need not be on sys.path.
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", RINGFLOW_TIMEOUT="30"
    )
    env.update(extra)
    return env


def run_job(argv: list[str], tmp_path: Path, **extra: str) -> tuple[list[dict], str]:
    done = subprocess.run(
        argv,
        env=clean_env(RF_REPORT_DIR=str(tmp_path), **extra),
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO_ROOT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return launcher_rank.read_reports(str(tmp_path)), output


def mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        pytest.skip("mpirun (Open MPI, Debian's openmpi-bin) is not installed")
    return path


def test_plain_mpirun_np3_needs_no_variable(tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    argv = [mpirun(), "-np", "3", "--oversubscribe", sys.executable, RANK_SCRIPT]
    found, output = run_job(argv, tmp_path)
    launcher_rank.check_job(found, 3, [3, 3, 3], output)
    assert [r["local_rank"] for r in found] == [0, 1, 2]
    # MPI stays usable for the script after ringflow's bootstrap used it.
    assert [r["mpi_allreduce"] for r in found] == [6, 6, 6]


_RSH_AGENT = """#!/bin/bash
# Open MPI's "ssh" for a netlab: run the command in the namespace of the host named.
host=$1; shift
case $host in
{cases}
  *) echo "rsh agent: unknown host $host" >&2; exit 1 ;;
esac
exec nsenter --net=/run/netns/$ns /bin/sh -c "$*"
"""


def test_mpirun_across_two_hosts(tmp_path):
    # Rank 0 must share an address the other host reaches (its lab address), not loopback,
    # and a random secret (the store is not on loopback). mpirun runs on host 0 and starts host
    # 1's daemon through the agent above, as it would through ssh.
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    run_mpirun = mpirun()
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter (util-linux) is not installed")
    lab = netlab.Lab(2)
    with lab:
        cases = "\n".join(f"  {lab.addr(i)}) ns={lab.namespace(i)} ;;" for i in range(2))
        agent = tmp_path / "rsh_agent"
        agent.write_text(_RSH_AGENT.format(cases=cases))
        agent.chmod(0o755)
        reports = tmp_path / "reports"
        reports.mkdir()
        argv = ["nsenter", f"--net=/run/netns/{lab.namespace(0)}", run_mpirun]
        argv += ["--mca", "plm_rsh_agent", str(agent), "--mca", "plm_rsh_no_tree_spawn", "1"]
        argv += ["--mca", "btl", "tcp,self", "-x", "PATH", "-x", "RF_REPORT_DIR"]
        argv += ["-x", "RINGFLOW_TIMEOUT", "-H", f"{lab.addr(0)}:2,{lab.addr(1)}:1"]
        argv += ["-np", "3", "--oversubscribe", sys.executable, RANK_SCRIPT]
        found, output = run_job(argv, reports)
    launcher_rank.check_job(found, 3, [2, 2, 1], output)
    assert [r["local_rank"] for r in found] == [0, 1, 0]


def test_mpirun_without_mpi4py_says_what_to_do(tmp_path):
    # A sitecustomize that hides mpi4py, as on a machine without it.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['mpi4py'] = None\n")
    argv = [mpirun(), "-np", "2", "--oversubscribe", sys.executable, RANK_SCRIPT]
    env = clean_env(PYTHONPATH=str(tmp_path), RF_REPORT_DIR=str(tmp_path))
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=90, cwd=REPO_ROOT, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    for words in ("install mpi4py", "RINGFLOW_STORE_ADDR", "MASTER_ADDR", "MASTER_PORT"):
        assert words in output, output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_two_processes(tmp_path):
    pytest.importorskip("torch", reason="torch (torchrun) is not installed")
    # torchrun's own default port 29500 could meet another job on this machine: a free one.
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    argv += ["--master-port", str(free_port()), RANK_SCRIPT]
    found, output = run_job(argv, tmp_path)
    launcher_rank.check_job(found, 2, [2, 2], output)
    assert [r["local_rank"] for r in found] == [0, 1]
