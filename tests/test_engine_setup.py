"""What the engine checks once per job or per set: settings every rank plans with, the ranks of
a new process set, and one timeline path given on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import ringflow as rf


def _init_error() -> str:
    try:
        rf.init()
    except rf.MismatchError as error:
        return str(error)
    rf.shutdown()
    return "init() succeeded"


def test_plan_settings_must_agree(make_job):
    """A fusion threshold set on one rank only would make ranks plan different operations."""
    job = make_job(2, auto_init=False, rank_env={1: {"RINGFLOW_FUSION_THRESHOLD": "0"}}).start()
    for rank, message in enumerate(job.call(_init_error)):
        assert message.startswith(f"rank {rank}: init()"), message
        assert "RINGFLOW_FUSION_THRESHOLD" in message, message
        assert "rank 0 67108864" in message and "rank 1 0" in message, message


def _add_set_differently() -> str:
    ranks = [0, 1] if rf.rank() == 0 else [0, 1, 2]
    try:
        rf.add_process_set(ranks)
    except rf.MismatchError as error:
        message = str(error)
    else:
        message = "added"
    total = rf.allreduce(np.ones(3), op=rf.Sum, name="after")  # the job is still usable
    return message, total.tolist()


def test_add_process_set_with_different_ranks(make_job):
    job = make_job(3).start()
    for rank, (message, total) in enumerate(job.call(_add_set_differently)):
        assert f"rank {rank}:" in message and "ranks passed to add_process_set" in message, message
        assert "rank 0 2 ranks" in message and "rank 1 3 ranks" in message, message
        assert total == [3.0, 3.0, 3.0]


def _timeline_on_every_rank(path: str) -> None:
    rf.start_timeline(path)  # the same path on every rank, as Horovod scripts do
    rf.allreduce(np.ones(1000, np.float32), name="tl.same.path")
    rf.stop_timeline()


def test_one_timeline_path_on_every_rank(make_job, tmp_path):
    path = tmp_path / "trace.json"
    make_job(2).start().call(_timeline_on_every_rank, str(path))
    for file in (path, tmp_path / "trace.rank1.json"):
        events = json.loads(Path(file).read_text())
        names = {e["args"].get("tensor") for e in events if e["ph"] == "X"}
        assert names == {"tl.same.path"}, f"{file}: {names}"
    assert len(list(tmp_path.iterdir())) == 2
