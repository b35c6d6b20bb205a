"""What a failure tells the user, and what it leaves behind.

- A rank that hangs (SIGSTOP) fails the others at RINGFLOW_TIMEOUT with a message naming the
  rank whose heartbeat stopped and what each rank was doing.
- The flight recorder: printed on failure, or written to RINGFLOW_FLIGHT_RECORDER=dir, and
  readable with rf.flight_recorder() while the job is healthy.
- Faults do not leak: after a failure the same processes shut down, init() again (as the same
  world, or as the survivors' smaller world) and get exact results.
- Under ``ringflow run``: the first failure is reported, the exit status is non-zero, and no
  process or temporary file is left behind.

Every job has a short RINGFLOW_TIMEOUT and every request a harness deadline, at N = 2 and 4.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness
from tests.test_launcher import LAUNCH_TIMEOUT, assert_exits, launcher_notes, write_script

TIMEOUT_S = 4.0
HEARTBEAT_S = 0.5
"""Heartbeats this often: a rank is reported as stopped after three missed ones (1.5 s)."""
SLACK_S = 8.0
"""Scheduling slack on a loaded 2-core machine, on top of the timeout."""
DEAD_PEER_S = 5.0


def _loop_until_error(victim, elements=200_000):
    """Allreduce 'hang.loop' until it raises; the victim announces (through the store) that the
    loop runs. Returns (steps done, the error, seconds from the last success to the error)."""
    x = np.ones(elements, dtype=np.float32)
    last_ok = time.monotonic()
    for step in range(1_000_000):
        if step == 3 and rf.rank() == victim:
            harness.rank_store().set("test/looping", b"1")
        try:
            rf.allreduce(x, op=rf.Sum, name="hang.loop")
        except rf.Error as exc:
            return step, exc, time.monotonic() - last_ok
        last_ok = time.monotonic()
    raise AssertionError("the loop never failed")


def _start_loop(job, victim):
    job.submit(_loop_until_error, victim)
    store = job.store_client()
    try:
        store.get("test/looping", timeout_s=60.0)
    finally:
        store.close()


def _poisoned_call_seconds():
    """How long a call on the failed communicator takes to raise."""
    start = time.monotonic()
    with pytest.raises(rf.Error, match="after an earlier failure"):
        rf.allreduce(np.ones(4, dtype=np.float32), name="after.failure")
    return time.monotonic() - start


def _reinit_and_allreduce(rank=None, size=None):
    """shutdown() the failed runtime, init() again (optionally as another rank of a smaller
    world) and return an allreduce's result and the world it ran in."""
    with contextlib.suppress(rf.Error):
        rf.shutdown()
    if size is not None:
        os.environ["RINGFLOW_RANK"] = str(rank)
        os.environ["RINGFLOW_SIZE"] = str(size)
    rf.init()
    x = np.arange(100_003, dtype=np.float64) * (rf.rank() + 1)
    return rf.allreduce(x, op=rf.Sum, name="after.reinit"), rf.size()


def _check_exact_reinit(results):
    for result in results:
        assert result.ok, result.describe()
        total, size = result.value
        expected = np.arange(100_003, dtype=np.float64) * (size * (size + 1) // 2)
        np.testing.assert_array_equal(total, expected)


@pytest.mark.parametrize("n", [2, 4])
def test_stopped_rank_is_named_and_the_job_recovers(make_job, n):
    victim = n - 1
    env = {"RINGFLOW_HEARTBEAT_INTERVAL": str(HEARTBEAT_S)}
    job = make_job(n, rank_timeout=TIMEOUT_S, env=env).start()
    _start_loop(job, victim)
    os.kill(job.pid(victim), signal.SIGSTOP)
    survivors = list(range(victim))
    try:
        results = job.collect(ranks=survivors, deadline=TIMEOUT_S + 30)
    finally:
        os.kill(job.pid(victim), signal.SIGCONT)
    for result in results:
        assert result.ok, result.describe()
        _, error, waited = result.value
        text = str(error)
        assert isinstance(error, rf.Error), result.describe()
        assert TIMEOUT_S - 1 < waited < TIMEOUT_S + SLACK_S, f"{waited:.1f} s: {text}"
        assert text.startswith(f"rank {result.rank}: "), text
        assert f"rank {victim} stopped answering" in text, text
        for survivor in survivors:  # no false accusations
            assert f"rank {survivor} stopped answering" not in text, text
        assert "what each rank was doing:" in text, text
        for rank in range(n):
            assert f"\n    rank {rank}: " in text, f"rank {rank} is not described: {text}"
        assert "'hang.loop'" in text, text
    # Resumed, the victim finds its peers gone and fails at once; then everyone starts afresh.
    (resumed,) = job.collect(ranks=[victim], deadline=TIMEOUT_S + 30)
    assert resumed.ok and isinstance(resumed.value[1], rf.Error), resumed.describe()
    assert all(seconds < 1.0 for seconds in job.call(_poisoned_call_seconds))
    _check_exact_reinit(job.run(_reinit_and_allreduce))


def _kill_mid_loop(job, victim):
    _start_loop(job, victim)
    killed_at = time.monotonic()
    os.kill(job.pid(victim), signal.SIGKILL)
    survivors = [r for r in range(job.size) if r != victim]
    results = job.collect(ranks=survivors, deadline=TIMEOUT_S + 30)
    assert time.monotonic() - killed_at < DEAD_PEER_S, harness.describe_all(results)
    job.collect(ranks=[victim], deadline=30)  # the harness reaps it
    return survivors, results


@pytest.mark.parametrize("n", [2, 4])
def test_flight_recorder_is_written_to_the_directory(make_job, n, tmp_path):
    victim = 1
    env = {"RINGFLOW_FLIGHT_RECORDER": str(tmp_path / "flight")}
    job = make_job(n, rank_timeout=TIMEOUT_S, env=env).start()
    _, results = _kill_mid_loop(job, victim)
    for result in results:
        assert result.ok and isinstance(result.value[1], rf.Error), result.describe()
        record = json.loads((tmp_path / "flight" / f"rank{result.rank}.json").read_text())
        assert (record["rank"], record["size"]) == (result.rank, n)
        # The call raised this failure, or (submitted while it was being reported) the
        # poisoned runtime's error quoting it: either way the failure's first line.
        assert record["error"].splitlines()[0] in str(result.value[1]), record["error"]
        entries = record["entries"]
        assert entries and all(e["name"] == "hang.loop" for e in entries), entries
        assert all(e["kind"] == "allreduce" and e["bytes"] == 800_000 for e in entries)
        # The engine may fail between two calls (a peer's EOF read while this rank was idle):
        # then the next call is refused by the poisoned runtime and no operation failed.
        refused = "after an earlier failure" in str(result.value[1])
        done, failed = (entries, None) if refused else (entries[:-1], entries[-1])
        assert done and all(e["phase"] == "done" and e["peer"] == -1 for e in done), entries
        seqs = [e["seq"] for e in done]
        assert seqs == sorted(set(seqs)), f"sequence numbers not increasing: {seqs}"
        if failed is not None:
            assert failed["phase"] == "failed", failed
            # The peer it waited on; -1 when it failed still queued, before waiting on anyone.
            assert failed["peer"] in set(range(-1, n)) - {result.rank}, failed
    assert not (tmp_path / "flight" / f"rank{victim}.json").exists()


@pytest.mark.parametrize("n", [2, 4])
def test_flight_recorder_is_printed_and_survivors_reinit(make_job, n):
    victim = n - 1
    job = make_job(n, rank_timeout=TIMEOUT_S).start()
    survivors, results = _kill_mid_loop(job, victim)
    for result in results:
        log = job.log_tail(result.rank)
        assert f"ringflow flight recorder, rank {result.rank} of {n}" in log, log
        assert "failed" in log and "'hang.loop'" in log, log
    # The survivors form a smaller job in the same processes: nothing of the failed one leaks.
    job.carry_on_without_the_dead()
    job.submit(_reinit_and_allreduce, 0, len(survivors), ranks=[0])
    for rank in survivors[1:]:
        job.submit(_reinit_and_allreduce, rank, len(survivors), ranks=[rank])
    _check_exact_reinit(job.collect(ranks=survivors))


def _recorder_after(names):
    for name in names:
        rf.allreduce(np.ones(10, dtype=np.int32), name=name)
    return rf.flight_recorder()


def test_flight_recorder_of_a_healthy_job(pools):
    names = [f"recorder.{i}" for i in range(5)]
    for result in pools.run(2, _recorder_after, names):
        record = result.value
        assert record["error"] == "" and record["now"].startswith("idle"), record
        mine = [e for e in record["entries"] if e["name"].startswith("recorder.")][-5:]
        assert [e["name"] for e in mine] == names
        assert all(e["phase"] == "done" and e["bytes"] == 40 for e in mine), mine
        assert [e["seq"] for e in mine] == sorted({e["seq"] for e in mine}), mine
        assert "last ran allreduce of 'recorder.4'" in record["now"], record["now"]


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
@pytest.mark.parametrize("n", [2, 4])
def test_launcher_reports_a_rank_killed_mid_collective_and_leaves_nothing(tmp_path, n):
    piddir, tmpdir = tmp_path / "pids", tmp_path / "tmp"
    piddir.mkdir()
    tmpdir.mkdir()
    script = write_script(
        tmp_path,
        f"""
        import os, signal
        import numpy as np
        import ringflow as rf
        rf.init()
        with open(os.path.join({str(piddir)!r}, f"{{rf.rank()}}"), "w") as f:
            f.write(str(os.getpid()))
        x = np.ones(200_000, dtype=np.float32)
        for step in range(1_000_000):
            if step == 20 and rf.rank() == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            rf.allreduce(x, name="loop")
        """,
    )
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    env = harness.clean_env({"TMPDIR": str(tmpdir)})
    result = _run_launcher(n, script, env)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    notes = launcher_notes(result.stderr)
    assert any("rank 1 failed first (was killed by signal 9 (SIGKILL))" in n for n in notes), notes
    pids = [int(path.read_text()) for path in piddir.iterdir()]
    assert len(pids) == n, pids
    for pid in pids:
        assert_exits(pid, timeout=5)
    assert list(tmpdir.iterdir()) == []
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert not {name for name in shm_after - shm_before if "ringflow" in name}


def _run_launcher(n, script, env):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "ringflow.run", "-np", str(n), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
