"""Coordinated shutdown: a rank that leaves after its last collective is an orderly leave.

shutdown() (or the interpreter's exit) announces the departure in a last negotiation round. The
others never report a failure for it; a rank that still waits on a collective that needs the
rank that left raises at once, "rank L shut down while 'x' waits for it", and the ranks still
there go on among themselves. The README's main job and every example end with no ERROR or
WARNING line and exit status 0. A rank that dies is still reported as before (test_failures.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import ringflow as rf
from tests import harness

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 180  # per launched job; the slowest here takes ~20 s on a loaded 2-core machine
PROMPT_S = 2.0
"""A call that needs a rank that left raises within this long (generous for a loaded CI)."""
ALARM = re.compile(r"\b(ERROR|WARNING)\b|Traceback")


def alarms(text: str) -> list[str]:
    """Lines of a job's output that report an error or a warning."""
    return [line for line in text.splitlines() if ALARM.search(line)]


def assert_ends_clean(result: subprocess.CompletedProcess[str]) -> None:
    """Exit status 0 and no line saying ERROR or WARNING (or a traceback) anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not alarms(output), (
        "\n".join(alarms(output)[:20]) + "\n--- output ---\n" + output[-4000:]
    )


def launch(n: int, *command: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ringflow.run", "-np", str(n), "--timeout", str(TIMEOUT), "--"]
    return subprocess.run(
        [*cmd, *command],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT + 30,
        env=harness.clean_env(),
        check=False,
    )


TINY_BENCHMARK = [
    "--batch-size", "8", "--widths", "8,16", "--image-size", "16",
    "--num-iters", "2", "--num-batches-per-iter", "2", "--num-warmup-batches", "1",
]  # fmt: skip


# The examples at N = 2 run in test_torch_examples.py and test_example.py (4 ranks), which
# assert the same; these add the README's main job at 4 ranks and the others at 3.
@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize(
    ("n", "example", "args", "needs"),
    [
        (4, "pytorch_digits.py", ["--epochs", "1"], ("torch", "sklearn", "tqdm")),
        (3, "logistic_regression.py", ["--epochs", "5"], ("sklearn",)),
        (3, "pytorch_synthetic_benchmark.py", TINY_BENCHMARK, ("torch",)),
    ],
    ids=["digits-4", "logistic-3", "synthetic-3"],
)
def test_example_ends_without_alarms(n, example, args, needs):
    for module in needs:
        pytest.importorskip(module, reason=f"the example needs {module} ('.[test,examples]')")
    assert_ends_clean(launch(n, sys.executable, str(EXAMPLES / example), *args))


_EXITS_EARLY = textwrap.dedent(
    """
    import numpy as np
    import ringflow as rf

    rf.init()
    others = rf.add_process_set([r for r in range(rf.size()) if r != 1]) if rf.size() > 2 else None
    rf.allreduce(np.ones(3), name="together")
    if rf.rank() == 1:
        raise SystemExit(0)  # no shutdown(): the interpreter's exit leaves in order
    try:
        rf.allreduce(np.ones(3), name="needs-rank-1")
        print("NO ERROR")
    except rf.PeerFailureError as error:
        print("RAISED", error)
    if others is not None:
        print("SUM", rf.allreduce(np.ones(3), op=rf.Sum, process_set=others).tolist())
    rf.shutdown()
    """
)


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("n", [2, 3])
def test_exit_without_shutdown_is_an_orderly_leave(n):
    """Rank 1's script ends without shutdown(): the others' call that needs it raises, naming
    it; what does not need it goes on; nothing reports a failure."""
    result = launch(n, sys.executable, "-c", _EXITS_EARLY)
    assert_ends_clean(result)
    for rank in (r for r in range(n) if r != 1):
        raised = [line for line in result.stdout.splitlines() if line.startswith(f"[{rank}] ")]
        assert any(
            "RAISED" in line and "rank 1 shut down while 'needs-rank-1' waits for it" in line
            for line in raised
        ), result.stdout
        if n > 2:
            assert f"[{rank}] SUM {[float(n - 1)] * 3}" in result.stdout, result.stdout


def _collective(kind, name):
    x = np.arange(6, dtype=np.float32) + rf.rank()
    if kind == "allreduce":
        return rf.allreduce(x, op=rf.Sum, name=name)
    if kind == "broadcast":
        return rf.broadcast(x, 0, name=name)
    if kind == "allgather":
        return rf.allgather(x, name=name)
    if kind == "barrier":
        return rf.barrier(name=name)
    raise AssertionError(kind)


KINDS = ("allreduce", "broadcast", "allgather", "barrier")


def _leave_or_wait(leaver):
    """The leaver shuts down after a first collective; the others call each kind of collective,
    each needing it. Returns {name: (error type, message, seconds)} of each call."""
    rf.allreduce(np.ones(4, np.int32), name="warm-up")
    if rf.rank() == leaver:
        rf.shutdown()
        return None
    outcomes = {}
    for kind in KINDS:
        name = f"{kind}-needs-the-leaver"
        start = time.monotonic()
        try:
            _collective(kind, name)
            outcomes[name] = ("returned", "", time.monotonic() - start)
        except rf.Error as error:
            outcomes[name] = (type(error).__name__, str(error), time.monotonic() - start)
    return outcomes  # (no shutdown() here: a survivor still calling would name this rank)


@pytest.mark.parametrize(("n", "leaver"), [(2, 1), (3, 1), (3, 0)])
def test_call_that_needs_a_rank_that_left_raises_at_once(make_job, n, leaver):
    job = make_job(n).start()
    results = harness.values(job.run(_leave_or_wait, leaver))
    for rank, outcomes in enumerate(results):
        if rank == leaver:
            continue
        assert list(outcomes) == [f"{kind}-needs-the-leaver" for kind in KINDS], outcomes
        for name, (kind_name, message, elapsed) in outcomes.items():
            context = f"rank {rank}, '{name}': {kind_name} after {elapsed:.2f} s"
            assert kind_name == "PeerFailureError", f"{context}: {message}"
            assert message.startswith(f"rank {rank}: "), f"{context}: {message}"
            assert f"rank {leaver} shut down while '{name}' waits for it" in message, message
            assert elapsed < PROMPT_S, f"{context}: {message}"
    job.close()  # every rank exits 0 (close() asserts it)
    for rank in range(n):
        assert not alarms(job.log_tail(rank)), f"rank {rank}:\n{job.log_tail(rank)}"


_SETS: dict[int, rf.ProcessSet] = {}  # in a rank process: the sets it added, by id


def _add_set(ranks):
    process_set = rf.add_process_set(ranks)
    _SETS[process_set.process_set_id] = process_set
    return process_set.process_set_id


def _after_leave(set_id):
    """The ranks still there: a collective among them works, one with the leaver raises."""
    together = rf.allreduce(
        np.full(3, rf.rank(), np.int64), op=rf.Sum, name="survivors", process_set=_SETS[set_id]
    )
    try:
        rf.allreduce(np.ones(3), name="everyone")
        everyone = "returned"
    except rf.PeerFailureError as error:
        everyone = str(error)
    return together.tolist(), everyone, rf.flight_recorder()["error"]


@pytest.mark.parametrize("n", [2, 3])
def test_ranks_left_behind_go_on(make_job, n):
    """Rank 1 shuts down while the others are idle (the issue's case: their engines must not
    take its closed connections for a failure); they then run collectives among themselves."""
    job = make_job(n).start()
    survivors = [r for r in range(n) if r != 1]
    set_id = job.call(_add_set, survivors)[0]
    job.run(rf.shutdown, ranks=[1])
    for rank, (together, everyone, error) in zip(
        survivors, harness.values(job.run(_after_leave, set_id, ranks=survivors))
    ):
        assert together == [sum(survivors)] * 3, f"rank {rank}: {together}"
        assert "rank 1 shut down while 'everyone' waits for it" in everyone, everyone
        assert error == "", f"rank {rank}'s engine failed: {error}"
    job.close()
    for rank in range(n):
        assert not alarms(job.log_tail(rank)), f"rank {rank}:\n{job.log_tail(rank)}"


def _wait_in_set(set_id):
    try:
        rf.allreduce(np.ones(3), name="with-rank-2", process_set=_SETS[set_id])
        return "returned"
    except rf.Error as error:
        return str(error)


def test_a_rank_that_left_is_not_called_stopped(make_job):
    """After rank 1 left (its heartbeat long stale), rank 2 dies while rank 0 waits on it: the
    failure names rank 2, says rank 1 shut down, and does not say rank 1 stopped answering."""
    interval = 0.2
    job = make_job(3, env={"RINGFLOW_HEARTBEAT_INTERVAL": str(interval)}).start()
    set_id = job.call(_add_set, [0, 2])[0]
    job.run(rf.shutdown, ranks=[1])
    store = job.store_client()
    try:
        # The departure's heartbeat ages past the staleness bound (3 intervals): a wait for a
        # clock condition, not for another process.
        stamp = int(store.get("rf/0/heartbeat/1", timeout_s=10).split(b" ")[0])
        time.sleep(max(0.0, stamp / 1e6 + 4 * interval - time.time()))
        assert b"shut down" in store.get("rf/0/heartbeat/1", timeout_s=1)
    finally:
        store.close()
    job.submit(_wait_in_set, set_id, ranks=[0])
    job.kill(2)
    job.carry_on_without_the_dead()
    message = harness.values(job.collect(ranks=[0], deadline=30))[0]
    assert "rank 2" in message and "rank 1 stopped answering" not in message, message
    assert "rank 1: shut down (left the job in order)" in message, message
