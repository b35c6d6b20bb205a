"""One rank of a job started by an outside launcher (mpirun, torchrun, srun): prints a JSON report.

Run as a script by tests/test_mpirun_torchrun.py and tests/test_slurm.py; writes
``$RF_REPORT_DIR/rank<N>.json`` (files: ranks' stdout lines would interleave). Inputs depend only
on rank and size, so the test recomputes every expected value with numpy (`expected`).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

SIZES = (0, 1, 7, 1000)  # empty, one element, odd, larger than one ring chunk


def inputs(rank: int, size: int, count: int) -> np.ndarray:
    return (np.arange(count, dtype=np.int64) * (rank + 1) + rank * 1000).astype(np.int64)


def gathered_rows(rank: int) -> np.ndarray:
    # Uneven first dimension: rank r contributes r + 1 rows (rank 0 one row).
    return np.full((rank + 1, 3), rank, dtype=np.float32)


def expected(size: int) -> dict:
    return {
        "allreduce": {str(n): sum(inputs(r, size, n) for r in range(size)).tolist() for n in SIZES},
        "allgather": np.concatenate([gathered_rows(r) for r in range(size)]).tolist(),
        "broadcast": inputs(size - 1, size, 7).tolist(),
    }


def read_reports(directory: str) -> list[dict]:
    found = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as report:
                found.append(json.load(report))
    return sorted(found, key=lambda report: report["rank"])


def check_job(found: list[dict], size: int, local_sizes: list[int], output: str = "") -> None:
    """Every rank reported, with the right place in the job and exact collectives."""
    assert [r["rank"] for r in found] == list(range(size)), output
    want = expected(size)
    for report in found:
        assert report["size"] == size
        assert report["local_size"] == local_sizes[report["rank"]], f"rank {report['rank']}"
        for key in ("allreduce", "allgather", "broadcast"):
            assert report[key] == want[key], f"rank {report['rank']} {key}"


def main() -> None:
    assert sys.modules.get("mpi4py") is None, "import ringflow must not import mpi4py"
    import ringflow as rf

    assert sys.modules.get("mpi4py") is None, "import ringflow must not import mpi4py"
    rf.init()
    rank, size = rf.rank(), rf.size()
    report = {
        "rank": rank,
        "size": size,
        "local_rank": rf.local_rank(),
        "local_size": rf.local_size(),
        "allreduce": {
            str(n): rf.allreduce(inputs(rank, size, n), op=rf.Sum, name=f"ar{n}").tolist()
            for n in SIZES
        },
        "allgather": rf.allgather(gathered_rows(rank), name="ag").tolist(),
        "broadcast": rf.broadcast(inputs(rank, size, 7), root_rank=size - 1, name="bc").tolist(),
        "transport": os.environ.get("RINGFLOW_TRANSPORT"),
    }
    if sys.modules.get("mpi4py") is not None:  # the bootstrap left MPI usable for the script
        from mpi4py import MPI

        report["mpi_allreduce"] = MPI.COMM_WORLD.allreduce(rank + 1)
    rf.shutdown()
    path = os.path.join(os.environ["RF_REPORT_DIR"], f"rank{rank}.json")
    with open(path + ".part", "w") as out:
        json.dump(report, out)
    os.replace(path + ".part", path)


if __name__ == "__main__":
    main()
