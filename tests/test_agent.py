"""``python -m ringflow.agent`` alone: the spec over stdin, prefixed output, nonce-tagged events,
exit codes, and its ranks stopped (process groups included) when stdin closes or it dies.

The agent's ranks here are plain Python programs that never call init(), so no store is needed.
Synchronisation goes through the agent's own event and output lines, never through sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys

import pytest

from ringflow.agent import Spec, rank_environment
from ringflow.run.ranks import RankSlot

from .sshlab import PipeLines

TIMEOUT = 30
NONCE = "0123456789abcdef"
SECRET = "s3cr3t-" + "ab" * 16


def slots(n: int) -> list[RankSlot]:
    return [
        RankSlot(rank=r, local_rank=r, local_size=n, cross_rank=0, cross_size=1) for r in range(n)
    ]


def spec(code: str, n: int = 2, **fields) -> Spec:
    values = dict(
        nonce=NONCE, command=[sys.executable, "-c", code], host="lab-host-1", size=n + 1,
        store_addr="198.18.0.1", store_port=29999, secret=SECRET, job_id="job-1",
        ranks=slots(n), env={"RF_ALLOWED": "yes"}, grace_period=2.0,
    )  # fmt: skip
    values.update(fields)
    return Spec(**values)


class Agent:
    """A running agent and a line reader over its stdout with a deadline."""

    def __init__(self, job: Spec | str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringflow.agent"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        text = job if isinstance(job, str) else job.to_json()
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()
        self.out = PipeLines(self.proc.stdout)

    @property
    def lines(self) -> list[str]:
        return self.out.lines

    def read_until(self, predicate, timeout: float = TIMEOUT) -> str:
        line = self.out.until(predicate, timeout)
        assert line is not None, f"no matching line; got {self.lines}"
        return line

    def finish(self) -> tuple[int, list[str], str]:
        """Read stdout to its end and wait for the agent, stdin still open (closing it would
        stop the ranks)."""
        self.out.rest(TIMEOUT)
        assert self.out.ended, f"agent did not finish; got {self.lines}"
        self.proc.wait(timeout=TIMEOUT)
        err = self.proc.stderr.read().decode()
        self.close()
        return self.proc.returncode, self.lines, err

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(BrokenPipeError):
                pipe.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close()


def events(lines: list[str]) -> list[list[str]]:
    return [line.split()[1:] for line in lines if line.startswith(NONCE + " ")]


def gone(pid: int, timeout: float = 10.0) -> bool:
    """The process (not our child) has exited or exits within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_rank_environment():
    env = rank_environment(spec("", 2), slots(2)[1], {"PATH": "/bin", "RINGFLOW_RANK": "9"})
    assert env["PATH"] == "/bin" and env["RF_ALLOWED"] == "yes"
    assert (env["RINGFLOW_RANK"], env["RINGFLOW_SIZE"], env["RINGFLOW_LOCAL_RANK"]) == (
        "1",
        "3",
        "1",
    )
    assert env["RINGFLOW_HOST_ID"] == "lab-host-1" and env["RINGFLOW_SECRET"] == SECRET
    assert (env["RINGFLOW_STORE_ADDR"], env["RINGFLOW_STORE_PORT"]) == ("198.18.0.1", "29999")
    assert env["RINGFLOW_STORE_EXTERNAL"] == "1" and env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.timeout(TIMEOUT + 10)
def test_output_prefixes_events_and_environment():
    code = (
        "import os, sys\n"
        "keys = ['RINGFLOW_RANK', 'RINGFLOW_LOCAL_SIZE', 'RINGFLOW_HOST_ID', 'RF_ALLOWED']\n"
        "print(*[os.environ[k] for k in keys])\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.stdout.write('no newline at the end')\n"
    )
    agent = Agent(spec(code, 2))
    returncode, lines, err = agent.finish()
    assert returncode == 0, err
    output = sorted(line for line in lines if not line.startswith(NONCE))
    assert output == [
        "[0] 0 2 lab-host-1 yes", "[0] no newline at the end",
        "[1] 1 2 lab-host-1 yes", "[1] no newline at the end",
    ]  # fmt: skip
    assert sorted(err.splitlines()) == ["[0] to stderr", "[1] to stderr"]
    seen = events(lines)
    assert sorted(e[:2] for e in seen if e[0] == "started") == [["started", "0"], ["started", "1"]]
    assert sorted(e[:3] for e in seen if e[0] == "exit") == [["exit", "0", "0"], ["exit", "1", "0"]]
    assert all(float(e[3]) > 0 for e in seen if e[0] == "exit")  # exit times, for the launcher
    # The secret reached the ranks through the spec, never the agent's argv.
    assert SECRET not in " ".join(agent.proc.args)


@pytest.mark.timeout(TIMEOUT + 10)
def test_exit_codes():
    code = "import os, sys\nsys.exit(3 if os.environ['RINGFLOW_RANK'] == '1' else 0)\n"
    returncode, lines, _ = Agent(spec(code, 3)).finish()
    assert returncode == 3
    assert sorted(e[:3] for e in events(lines) if e[0] == "exit") == [
        ["exit", "0", "0"], ["exit", "1", "3"], ["exit", "2", "0"],
    ]  # fmt: skip
    returncode, lines, err = Agent(spec("", 1, command=["/nonexistent/ringflow-rank"])).finish()
    assert returncode == 127 and "cannot start rank 0" in err
    assert [e[:3] for e in events(lines)] == [["exit", "0", "127"]]


SLEEPER = (
    "import os, subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '600'])\n"  # a grandchild: the process group must go
    "print('pids', os.getpid(), child.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def started_pids(agent: Agent, n: int) -> list[int]:
    pids: list[int] = []
    for _ in range(n):
        line = agent.read_until(lambda text: " pids " in text)
        pids += [int(p) for p in line.split()[2:]]
    return pids


@pytest.mark.timeout(TIMEOUT + 10)
def test_stdin_closing_stops_the_ranks_and_their_children():
    agent = Agent(spec(SLEEPER, 2))
    try:
        pids = started_pids(agent, 2)
        agent.proc.stdin.close()  # the launcher (or its ssh connection) went away
        returncode, lines, _ = agent.finish()
    finally:
        agent.kill()
    assert returncode == 128 + signal.SIGTERM
    assert sorted(e[2] for e in events(lines) if e[0] == "exit") == [str(-signal.SIGTERM)] * 2
    assert all(gone(pid) for pid in pids)


@pytest.mark.timeout(TIMEOUT + 10)
def test_stop_line_sends_that_signal():
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(5))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    agent = Agent(spec(code, 2))
    try:
        for _ in range(2):
            agent.read_until(lambda text: text.endswith(" ready"))
        agent.proc.stdin.write(b"stop 2\n")
        agent.proc.stdin.flush()
        returncode, lines, _ = agent.finish()
    finally:
        agent.kill()
    assert returncode == 5
    assert sorted(e[2] for e in events(lines) if e[0] == "exit") == ["5", "5"]


@pytest.mark.timeout(TIMEOUT + 10)
def test_ranks_die_with_a_killed_agent():
    agent = Agent(spec(SLEEPER, 2))
    try:
        pids = started_pids(agent, 2)
        agent.proc.kill()  # no chance to clean up: the ranks' parent-death signal does it
        agent.proc.wait(timeout=TIMEOUT)
        rank_pids = pids[0::2]
        assert all(gone(pid) for pid in rank_pids)
    finally:
        agent.kill()
        for pid in pids:  # the grandchildren are orphans now; we started them, end them
            if not gone(pid, 0):
                os.kill(pid, signal.SIGKILL)


def test_bad_spec_is_refused():
    for text, words in [
        ("", "no job spec on stdin"),
        ("not json", "not JSON"),
        (json.dumps({"nonce": NONCE}), "incomplete"),
        (spec("", 1, bind_to="numa").to_json(), "bind_to"),
    ]:
        returncode, _, err = Agent(text).finish()
        assert returncode == 2 and words in err, err
