"""``ringflow run``: environment, output prefixes, exit codes, teardown, signals, a real job.

Every test that starts processes runs the launcher through ``subprocess`` with a timeout, and
the ranks synchronise through pipes and FIFOs, never through sleeps.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import pytest

from ringflow.run import cli, launcher

LAUNCH_TIMEOUT = 60  # seconds any single launcher run may take in these tests
PREFIX_RE = re.compile(r"\[(\d+)\] (.*)")


def write_script(tmp_path: Path, body: str, name: str = "rank.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def ringflow_run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """``python -m ringflow.run ARGS`` to completion, with a timeout."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [sys.executable, "-m", "ringflow.run", *args],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        **kwargs,
    )


def by_rank(text: str) -> dict[int, list[str]]:
    """Split prefixed launcher output into each rank's lines; every line must carry a prefix."""
    lines: dict[int, list[str]] = {}
    for line in text.splitlines():
        match = PREFIX_RE.fullmatch(line)
        assert match, f"line without a [rank] prefix: {line!r}"
        lines.setdefault(int(match.group(1)), []).append(match.group(2))
    return lines


def launcher_notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ringflow run: ")]


def assert_exits(pid: int, timeout: float = 10.0) -> None:
    """The process (not our child) is gone or exits within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], timeout)  # readable once it has exited
    finally:
        os.close(fd)
    assert readable, f"pid {pid} is still running"


# ------------------------------------------------------------------------ environment, output


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_each_rank_sees_its_environment(tmp_path):
    script = write_script(
        tmp_path,
        """
        import json, os
        from ringflow import _core
        from ringflow._environment import detect
        cfg = detect()
        # The launcher's store accepts this job's secret and id: every rank meets there.
        store = _core.StoreClient(cfg.store_addr, cfg.store_port, cfg.secret, cfg.job_id, 30.0)
        store.set(f"test/rank{cfg.rank}", b"here")
        store.wait([f"test/rank{r}" for r in range(cfg.size)], 30.0)
        names = ["RANK", "SIZE", "LOCAL_RANK", "LOCAL_SIZE", "STORE_ADDR", "STORE_PORT",
                 "STORE_EXTERNAL", "SECRET", "JOB_ID"]
        env = {n: os.environ["RINGFLOW_" + n] for n in names}
        env["source"] = cfg.source
        print(json.dumps(env))
        """,
    )
    jobs = []
    for _ in range(2):
        result = ringflow_run("-np", "3", sys.executable, str(script))
        assert result.returncode == 0, result.stderr
        lines = by_rank(result.stdout)
        assert sorted(lines) == [0, 1, 2]
        jobs.append({rank: json.loads(out[0]) for rank, out in lines.items()})
    for env in jobs:
        for rank, seen in env.items():
            assert seen["RANK"] == seen["LOCAL_RANK"] == str(rank)
            assert seen["SIZE"] == seen["LOCAL_SIZE"] == "3"
            assert seen["STORE_ADDR"] == "127.0.0.1"
            assert seen["STORE_EXTERNAL"] == "1"
            assert seen["source"] == "ringflow"
            assert re.fullmatch(r"[0-9a-f]{64}", seen["SECRET"])
            assert 0 < int(seen["STORE_PORT"]) < 65536
        for key in ("STORE_PORT", "SECRET", "JOB_ID"):
            assert len({seen[key] for seen in env.values()}) == 1, key
    # Each job makes its own secret and id.
    assert jobs[0][0]["SECRET"] != jobs[1][0]["SECRET"]
    assert jobs[0][0]["JOB_ID"] != jobs[1][0]["JOB_ID"]


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_output_lines_are_prefixed_per_stream_and_in_order(tmp_path):
    script = write_script(
        tmp_path,
        """
        import os, sys
        r = os.environ["RINGFLOW_RANK"]
        for i in range(50):
            print(f"out {r} {i}")
            print(f"err {r} {i}", file=sys.stderr)
        sys.stdout.write(f"partial {r}")  # no trailing newline
        """,
    )
    result = ringflow_run("-np", "4", "--", sys.executable, str(script))
    assert result.returncode == 0, result.stderr
    out = by_rank(result.stdout)
    err = by_rank(result.stderr)
    for r in range(4):
        assert out[r] == [f"out {r} {i}" for i in range(50)] + [f"partial {r}"]
        assert err[r] == [f"err {r} {i}" for i in range(50)]


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_output_streams_while_the_rank_runs_and_rank0_gets_stdin(tmp_path):
    script = write_script(
        tmp_path,
        """
        import os, sys
        rank = int(os.environ["RINGFLOW_RANK"])
        if rank == 0:
            print("waiting for stdin")
            print("rank 0 read", sys.stdin.readline().strip())
        else:
            print("rank", rank, "read", repr(sys.stdin.read()))
        """,
    )
    with subprocess.Popen(
        [sys.executable, "-m", "ringflow.run", "-np", "2", sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin and proc.stdout
        # The line arrives while rank 0 is blocked on stdin, i.e. before any rank exits.
        seen = []
        while "[0] waiting for stdin" not in seen:
            line = proc.stdout.readline()
            assert line, f"launcher output ended early: {seen}"
            seen.append(line.rstrip("\n"))
        rest, err = proc.communicate("hello\n", timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, err
    lines = by_rank("\n".join(seen) + "\n" + rest)
    assert lines[0] == ["waiting for stdin", "rank 0 read hello"]
    assert lines[1] == ["rank 1 read ''"]  # only rank 0 reads the launcher's stdin


# -------------------------------------------------------------------------- exit codes


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_all_ranks_succeed(tmp_path):
    script = write_script(tmp_path, "print('ok')\n")
    result = ringflow_run("-np", "4", sys.executable, str(script))
    assert result.returncode == 0, result.stderr
    assert by_rank(result.stdout) == {r: ["ok"] for r in range(4)}
    assert launcher_notes(result.stderr) == []


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_failing_rank_tears_down_blocked_ranks_and_sets_the_exit_code(tmp_path):
    # Ranks 0, 2, 3 wait on an event nobody sets: only the launcher can end them.
    script = write_script(
        tmp_path,
        """
        import os, sys, threading
        if os.environ["RINGFLOW_RANK"] == "1":
            print("rank 1 fails", file=sys.stderr)
            sys.exit(3)
        threading.Event().wait()
        """,
    )
    start = time.monotonic()
    result = ringflow_run("-np", "4", "--verbose", sys.executable, str(script))
    elapsed = time.monotonic() - start
    assert result.returncode == 3, result.stderr
    assert "[1] rank 1 fails" in result.stderr.splitlines()
    notes = launcher_notes(result.stderr)
    assert any("rank 1 failed first (exited with code 3)" in n for n in notes), notes
    # SIGTERM ended the blocked ranks: no SIGKILL after the grace period was needed.
    for rank in (0, 2, 3):
        assert f"ringflow run: rank {rank} was killed by signal 15 (SIGTERM)" in notes, notes
    assert not any("SIGKILL" in n for n in notes), notes
    assert elapsed < LAUNCH_TIMEOUT / 2


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_rank_exiting_on_its_own_is_named_not_the_peers_it_fails(tmp_path):
    # Rank 3 leaves after a collective; its shutdown fails the others' next allreduce and they exit
    # 1, often before rank 3's own exit is seen. The launcher must still name rank 3 and exit 7.
    script = write_script(
        tmp_path,
        """
        import sys
        import numpy as np
        import ringflow as rf
        rf.init()
        rf.allreduce(np.ones(4), name="before")
        if rf.rank() == 3:
            sys.exit(7)
        try:
            rf.allreduce(np.ones(4), name="after")
        except rf.PeerFailureError:
            sys.exit(1)
        """,
    )
    result = ringflow_run("-np", "4", sys.executable, str(script))
    assert result.returncode == 7, result.stderr
    notes = launcher_notes(result.stderr)
    assert any("rank 3 failed first (exited with code 7)" in n for n in notes), notes


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_rank_killed_by_sigkill(tmp_path):
    script = write_script(
        tmp_path,
        """
        import os, signal, threading
        if os.environ["RINGFLOW_RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Event().wait()
        """,
    )
    result = ringflow_run("-np", "3", sys.executable, str(script))
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    notes = launcher_notes(result.stderr)
    assert any("rank 1 failed first (was killed by signal 9 (SIGKILL))" in n for n in notes)


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_rank_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    script = write_script(
        tmp_path,
        f"""
        import os, signal, sys, threading
        if os.environ["RINGFLOW_RANK"] == "0":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open({str(fifo)!r}, "w"):  # tells rank 1 that SIGTERM is now ignored
                pass
            threading.Event().wait()
        with open({str(fifo)!r}) as f:  # wait for rank 0
            f.read()
        sys.exit(5)
        """,
    )
    start = time.monotonic()
    result = ringflow_run(
        "-np", "2", "--grace-period", "0.5", "--verbose", sys.executable, str(script)
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 5, result.stderr
    notes = launcher_notes(result.stderr)
    assert any("rank 1 failed first (exited with code 5)" in n for n in notes), notes
    assert any("sending SIGKILL to rank(s) [0]" in n for n in notes), notes
    assert any("rank 0 was killed by signal 9" in n for n in notes), notes
    assert elapsed < LAUNCH_TIMEOUT / 2


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_teardown_reaches_a_ranks_own_children(tmp_path):
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    script = write_script(
        tmp_path,
        f"""
        import os, subprocess, sys, threading
        if os.environ["RINGFLOW_RANK"] == "0":
            child = subprocess.Popen(
                [sys.executable, "-c", "import threading; threading.Event().wait()"]
            )
            print("child", child.pid)
            with open({str(fifo)!r}, "w"):
                pass
            threading.Event().wait()
        with open({str(fifo)!r}) as f:
            f.read()
        sys.exit(4)
        """,
    )
    result = ringflow_run("-np", "2", sys.executable, str(script))
    assert result.returncode == 4, result.stderr
    (line,) = by_rank(result.stdout)[0]
    assert_exits(int(line.split()[1]))


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_job_timeout(tmp_path):
    script = write_script(tmp_path, "import threading\nthreading.Event().wait()\n")
    result = ringflow_run("-np", "2", "--timeout", "1", sys.executable, str(script))
    assert result.returncode == launcher.TIMEOUT_EXIT_CODE == 124, result.stderr
    assert any("timeout of 1 s" in n for n in launcher_notes(result.stderr))


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_missing_program_exits_127(tmp_path):
    result = ringflow_run("-np", "2", str(tmp_path / "no-such-program"))
    assert result.returncode == 127
    assert any("cannot start rank 0" in n for n in launcher_notes(result.stderr))


# ---------------------------------------------------------------------------------- signals


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
@pytest.mark.parametrize(
    ("sig", "handled", "expected"),
    [
        (signal.SIGINT, True, 0),  # ranks catch it and exit cleanly: the job succeeds
        (signal.SIGTERM, False, 128 + signal.SIGTERM),  # ranks die of it: the job fails
    ],
)
def test_signals_are_forwarded_once_to_every_rank(tmp_path, sig, handled, expected):
    script = write_script(
        tmp_path,
        f"""
        import os, signal, sys, threading
        got = threading.Event()
        def on_signal(signum, frame):
            print("got", signal.Signals(signum).name, flush=True)
            got.set()
        if {handled}:
            signal.signal({int(sig)}, on_signal)
        print("ready", flush=True)
        got.wait()
        """,
    )
    with subprocess.Popen(
        [sys.executable, "-m", "ringflow.run", "-np", "3", sys.executable, str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout
        ready: set[str] = set()
        seen = []
        while len(ready) < 3:
            line = proc.stdout.readline()
            assert line, f"launcher output ended early: {seen}"
            seen.append(line)
            if line.endswith(" ready\n"):
                ready.add(line.split()[0])
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == expected, err
    lines = by_rank("".join(seen) + rest)
    if handled:
        assert lines == {r: ["ready", f"got {sig.name}"] for r in range(3)}
    else:
        assert lines == {r: ["ready"] for r in range(3)}
        assert any("was killed by signal 15 (SIGTERM)" in n for n in launcher_notes(err))


# ------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "python"],  # no -np
        ["run", "-np", "0", "python"],
        ["run", "-np", "two", "python"],
        ["run", "-np", "2"],  # no command
        ["run", "-np", "2", "--"],
        ["run", "-np", "2", "--timeout", "0", "python"],
        [],  # no subcommand
    ],
)
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv)
    assert excinfo.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_command_after_options_keeps_its_own_options():
    args = cli.build_parser().parse_args(
        ["run", "-np", "2", "--verbose", "python", "x.py", "--verbose", "-np", "7"]
    )
    assert (args.num_proc, args.verbose) == (2, True)
    assert args.command == ["python", "x.py", "--verbose", "-np", "7"]
    args = cli.build_run_parser().parse_args(["--num-proc", "3", "--", "prog", "--timeout"])
    assert (args.num_proc, args.timeout, args.command) == (3, None, ["--", "prog", "--timeout"])


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
def test_ringflow_console_script(tmp_path):
    candidates = [Path(sysconfig.get_path("scripts")) / "ringflow"]
    candidates += [Path(sys.executable).parent / "ringflow"]
    script = next((p for p in candidates if p.exists()), None)
    assert script, f"the `ringflow` script is not installed in any of {candidates}"
    result = subprocess.run(
        [str(script), "run", "-np", "2", "--", sys.executable, "-c", "print('hi')"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=LAUNCH_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert by_rank(result.stdout) == {0: ["hi"], 1: ["hi"]}


# ------------------------------------------------------------------------- in process, fake store


class FakeStore:
    def __init__(self, secret: bytes, job_id: str) -> None:
        self.secret, self.job_id, self.port, self.closed = secret, job_id, 4242, False

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(LAUNCH_TIMEOUT)
@pytest.mark.parametrize("code", [0, 6])
def test_launch_closes_the_store_and_passes_its_identity(code):
    stores: list[FakeStore] = []

    def factory(secret: bytes, job_id: str) -> FakeStore:
        stores.append(FakeStore(secret, job_id))
        return stores[-1]

    out, err = io.BytesIO(), io.BytesIO()
    program = (
        "import os, sys; e = os.environ; "
        "print(e['RINGFLOW_STORE_PORT'], e['RINGFLOW_SECRET'], e['RINGFLOW_JOB_ID']); "
        f"sys.exit({code} if e['RINGFLOW_RANK'] == '1' else 0)"
    )
    rc = launcher.launch(
        [sys.executable, "-c", program], 2, stdout=out, stderr=err, store_factory=factory
    )
    assert rc == code
    (store,) = stores
    assert store.closed
    expected = f"4242 {store.secret.decode()} {store.job_id}"
    lines = by_rank(out.getvalue().decode())
    assert lines[1] == [expected]
    # When rank 1 fails, rank 0 may be torn down before it prints: only what it did print counts.
    assert lines.get(0, [expected] if code else []) == [expected]


@pytest.mark.parametrize(
    ("returncode", "code", "text"),
    [
        (0, 0, "exited with code 0"),
        (3, 3, "exited with code 3"),
        (-9, 137, "was killed by signal 9 (SIGKILL)"),
        (-15, 143, "was killed by signal 15 (SIGTERM)"),
    ],
)
def test_exit_code_and_description(returncode, code, text):
    assert launcher.exit_code(returncode) == code
    assert launcher.describe_exit(returncode) == text


# ------------------------------------------------------------------------------- a real job

ALLREDUCE = """
import numpy as np
import ringflow as rf

rf.init()
n, r = rf.size(), rf.rank()
assert n == int(__import__("os").environ["RINGFLOW_SIZE"])
x = np.arange(5, dtype=np.int64) + 10 * r
total = rf.allreduce(x, op=rf.Sum)
expected = sum(np.arange(5, dtype=np.int64) + 10 * k for k in range(n))
assert np.array_equal(total, expected), (total, expected)
y = np.full(4, float(r + 1))
rf.allreduce_(y, op=rf.Sum)
assert np.array_equal(y, np.full(4, n * (n + 1) / 2)), y
print("sum", total.tolist(), "size", n, "local", rf.local_rank(), rf.local_size())
rf.shutdown()
"""


@pytest.mark.timeout(LAUNCH_TIMEOUT + 10)
@pytest.mark.parametrize("n", [2, 4])
def test_real_allreduce_job(tmp_path, n):
    script = write_script(tmp_path, ALLREDUCE)
    result = ringflow_run("-np", str(n), sys.executable, str(script))
    assert result.returncode == 0, result.stdout + result.stderr
    expected = [sum(i + 10 * k for k in range(n)) for i in range(5)]
    lines = by_rank(result.stdout)
    assert lines == {r: [f"sum {expected} size {n} local {r} {n}"] for r in range(n)}


def test_bind_to_core_pins_ranks_round_robin():
    cpus = sorted(os.sched_getaffinity(0))
    program = "import os; print(sorted(os.sched_getaffinity(0)))"
    result = ringflow_run("-np", "3", "--bind-to", "core", sys.executable, "-c", program)
    assert result.returncode == 0, result.stderr
    seen = by_rank(result.stdout)
    for rank in range(3):
        assert seen[rank] == [str([cpus[rank % len(cpus)]])], seen
    unbound = ringflow_run("-np", "1", sys.executable, "-c", program)
    assert by_rank(unbound.stdout)[0] == [str(cpus)]
