"""Timeline: a Chrome trace per rank, valid JSON between rounds, with every tensor's phases.

A known sequence -- two named allreduces and a broadcast -- runs with the timeline on, started
either by rf.start_timeline(path) (a rank-specific path) or by RINGFLOW_TIMELINE at init. The
file must parse while the timeline is still active (after a synchronize), and after
stop_timeline() it must hold, for each tensor, complete ("X") events for NEGOTIATE, QUEUE and the
collective's algorithm, in that order, on the tensor's row, named by "M" thread_name metadata.
A collective after stop_timeline() is not recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import ringflow as rf

ALGORITHMS = {
    "allreduce": {"RING_ALLREDUCE", "BRUCK_ALLREDUCE", "INLINE_ALLREDUCE", "SHM_DIRECT_ALLREDUCE"},
    "broadcast": {"BINOMIAL_BROADCAST", "CHAIN_BROADCAST", "SHM_DIRECT_BROADCAST"},
}
SEQUENCE = {"tl.grad.a": "allreduce", "tl.grad.b": "allreduce", "tl.weights": "broadcast"}
PHASES = {
    "NEGOTIATE",
    "QUEUE",
    "MEMCPY_IN_FUSION_BUFFER",
    "MEMCPY_OUT_FUSION_BUFFER",
    "RING_ALLREDUCE",
    "BRUCK_ALLREDUCE",
    "INLINE_ALLREDUCE",
    "RING_ALLGATHER",
    "RING_REDUCESCATTER",
    "BINOMIAL_BROADCAST",
    "CHAIN_BROADCAST",
    "SHM_DIRECT_ALLREDUCE",
    "SHM_DIRECT_ALLGATHER",
    "SHM_DIRECT_BROADCAST",
    "PAIRWISE_ALLTOALL",
    "BARRIER",
}


def _read(path: str):
    """The file parsed, or the text that did not parse."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc}): ...{text[-300:]!r}"


def _own_file(directory, rank):
    """This rank's trace: the path it was given, "timeline.<rank>.json", or that path with a
    rank suffix inserted before ".json" (the contract does not say whether RINGFLOW_TIMELINE is
    used as is on every rank)."""
    found = sorted(str(p) for p in Path(directory).glob(f"timeline.{rank}.*json"))
    assert len(found) == 1, f"rank {rank}: trace files {found} in {directory}"
    return found[0]


def _sequence(directory, start):
    """The known sequence; snapshots of the file while active and after stop_timeline()."""
    rank = rf.rank()
    if start:
        rf.start_timeline(str(Path(directory) / f"timeline.{rank}.json"))
    a = rf.allreduce_async(np.full(1000, rank, np.float32), op=rf.Sum, name="tl.grad.a")
    b = rf.allreduce_async(np.full(10, rank, np.int64), op=rf.Max, name="tl.grad.b")
    outs = [rf.synchronize(a), rf.synchronize(b)]
    path = _own_file(directory, rank)
    active = _read(path)
    outs.append(rf.broadcast(np.full(7, rank, np.float64), 1, name="tl.weights"))
    rf.stop_timeline()
    outs.append(rf.allreduce(np.ones(3, np.int32), op=rf.Sum, name="tl.after.stop"))
    return path, outs, active, _read(path)


def check_outputs(n, outs):
    np.testing.assert_array_equal(outs[0], np.full(1000, sum(range(n)), np.float32))
    np.testing.assert_array_equal(outs[1], np.full(10, n - 1, np.int64))
    np.testing.assert_array_equal(outs[2], np.full(7, 1, np.float64))
    np.testing.assert_array_equal(outs[3], np.full(3, n, np.int32))


def check_trace(rank, events):
    context = f"rank {rank}'s timeline"
    assert isinstance(events, list), f"{context}: {events}"
    rows = {}  # tid -> tensor name, from the metadata
    for e in events:
        assert isinstance(e, dict) and "ph" in e, f"{context}: odd event {e!r}"
        if e["ph"] == "M" and e.get("name") == "thread_name":
            rows[e["tid"]] = e["args"]["name"]
    complete = [e for e in events if e["ph"] == "X"]
    by_tensor = {}
    for e in complete:
        for key in ("name", "ts", "dur", "pid", "tid", "args"):
            assert key in e, f"{context}: an X event without {key!r}: {e}"
        assert e["name"] in PHASES, f"{context}: unknown phase {e['name']!r}"
        assert e["pid"] == rank, f"{context}: pid {e['pid']} in {e}"
        assert e["dur"] >= 0 and e["ts"] >= 0, f"{context}: {e}"
        tensor = e["args"]["tensor"]
        assert rows.get(e["tid"]) == tensor, (
            f"{context}: {tensor!r}'s event is on row {e['tid']}, which the metadata names "
            f"{rows.get(e['tid'])!r}"
        )
        by_tensor.setdefault(tensor, []).append(e)
    assert "tl.after.stop" not in by_tensor, f"{context}: recorded a collective after stop"
    for tensor, kind in SEQUENCE.items():
        got = sorted(by_tensor.get(tensor, []), key=lambda e: e["ts"])
        phases = [e["name"] for e in got]
        where = f"{context}, tensor {tensor!r}: phases {phases}"
        algorithm = [e for e in got if e["name"] in ALGORITHMS[kind]]
        for phase in ("NEGOTIATE", "QUEUE"):
            assert phase in phases, f"{where}: no {phase}"
        assert algorithm, f"{where}: none of {sorted(ALGORITHMS[kind])}"
        first = {}
        for e in got:
            first.setdefault(e["name"], e)
        assert first["NEGOTIATE"]["ts"] <= first["QUEUE"]["ts"] <= algorithm[0]["ts"], where


def test_start_timeline(make_job, tmp_path):
    n = 2
    job = make_job(n, env={"RINGFLOW_TIMELINE": None}).start()
    results = job.call(_sequence, str(tmp_path), True, deadline=60)
    for rank, (path, outs, active, final) in enumerate(results):
        # Rank 0 writes the path it was given, rank r > 0 "<stem>.rank<r>.json".
        suffix = f".rank{rank}" if rank else ""
        assert path == str(tmp_path / f"timeline.{rank}{suffix}.json")
        check_outputs(n, outs)
        assert isinstance(active, list), f"rank {rank}: while active, after a synchronize: {active}"
        check_trace(rank, final)


def test_timeline_from_environment(make_job, tmp_path):
    n = 2
    rank_env = {r: {"RINGFLOW_TIMELINE": str(tmp_path / f"timeline.{r}.json")} for r in range(n)}
    job = make_job(n, rank_env=rank_env).start()
    results = job.call(_sequence, str(tmp_path), False, deadline=60)
    for rank, (_, outs, active, final) in enumerate(results):
        check_outputs(n, outs)
        assert isinstance(active, list), f"rank {rank}: while active, after a synchronize: {active}"
        check_trace(rank, final)
