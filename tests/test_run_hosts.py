"""``ringflow run -H`` / ``--hostfile``: host lists, rank placement, and real jobs over ssh.

The lab tests run the launcher in one network namespace and a real sshd in each of two others
(`sshlab.SshLab`, set up once per session): collectives are exact, every rank is where its host
entry says, data flows over the lab addresses, and a failure or SIGINT leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringflow.run import cli
from ringflow.run.hosts import Host, is_local, parse_hostfile, parse_hosts
from ringflow.run.multihost import agent_command, forwarded_environment
from ringflow.run.ranks import assign

from .sshlab import PORT, PipeLines, SshLab

JOB_TIMEOUT = 60
PREFIX_RE = re.compile(r"\[(\d+)\] (.*)")

# ------------------------------------------------------------------------------- host lists


def test_parse_hosts():
    assert parse_hosts("h1:2,h2:2") == [Host("h1", 2), Host("h2", 2)]
    assert parse_hosts("user@10.0.0.1,h2:3") == [Host("user@10.0.0.1", 1), Host("h2", 3)]
    for bad, words in [
        ("h1:0", "slots must be"),
        ("h1:x", "slots must be"),
        ("h1,h1", "listed twice"),
        ("h1,,h2", "not a host name"),
        ("-oProxyCommand=x", "not a host name"),  # never an ssh option
    ]:
        with pytest.raises(ValueError, match=words):
            parse_hosts(bad)


def test_parse_hostfile(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# the cluster\nh1 slots=2\n\nh2 slots=3  # big one\nh3\n")
    assert parse_hostfile(path) == [Host("h1", 2), Host("h2", 3), Host("h3", 1)]
    path.write_text("h1 slots=2\nh2 cpus=4\n")
    with pytest.raises(ValueError, match=r"line 2: expected 'host slots=N'"):
        parse_hostfile(path)
    path.write_text("h1 slots=2\nh2 slots=0\n")
    with pytest.raises(ValueError, match=r"line 2: slots must be"):
        parse_hostfile(path)


def test_assign_numbers_ranks_like_the_engine():
    placed = assign([Host("a", 2), Host("b", 3), Host("c", 4)], 6)
    assert [(p.host.name, [s.rank for s in p.ranks]) for p in placed] == [
        ("a", [0, 1]),
        ("b", [2, 3, 4]),
        ("c", [5]),
    ]
    slots = {s.rank: s for p in placed for s in p.ranks}
    # local_rank 0 lives on a, b, c; local_rank 1 on a, b; local_rank 2 on b only.
    assert [(slots[r].local_rank, slots[r].local_size) for r in range(6)] == [
        (0, 2), (1, 2), (0, 3), (1, 3), (2, 3), (0, 1),
    ]  # fmt: skip
    assert [(slots[r].cross_rank, slots[r].cross_size) for r in range(6)] == [
        (0, 3), (0, 2), (1, 3), (1, 2), (0, 1), (2, 3),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="needs 10 slots but the hosts have 9"):
        assign([Host("a", 2), Host("b", 3), Host("c", 4)], 10)


def test_environment_allow_list():
    environ = {"RINGFLOW_TRANSPORT": "tcp", "RINGFLOW_RANK": "3", "HOME": "/root", "A": "1"}
    env = forwarded_environment(["A", "B=2"], "eth1", environ)
    assert env == {
        "RINGFLOW_TRANSPORT": "tcp",
        "A": "1",
        "B": "2",
        "RINGFLOW_NETWORK_INTERFACE": "eth1",
    }
    with pytest.raises(ValueError, match="-x C: C is not set"):
        forwarded_environment(["C"], None, environ)


def test_agent_command(monkeypatch):
    assert agent_command("localhost")[1:] == ["-m", "ringflow.agent"]
    assert is_local("127.0.0.2") and not is_local("198.18.0.2")
    monkeypatch.setenv("RINGFLOW_SSH_COMMAND", "ssh -F /dev/null")
    argv = agent_command("u@h1", 2222, "/k")
    assert argv[:10] == [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-p",
        "2222",
        "-i",
        "/k",
        "u@h1",
    ]
    assert argv[10].endswith("python -m ringflow.agent") or "-m ringflow.agent" in argv[10]


def test_too_few_slots_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "-np", "5", "-H", "localhost:2", "true"])
    assert exit_info.value.code == 2
    assert "needs 5 slots but the hosts have 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------- real jobs

RANK_SCRIPT = """
import json, os, socket, struct
import numpy as np
import ringflow

def tcp_connections():
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            mine.add(link[8:-1])
    def addr(text):
        ip, port = text.split(":")
        return socket.inet_ntoa(struct.pack("<I", int(ip, 16))) + ":" + str(int(port, 16))
    rows = open("/proc/self/net/tcp").read().splitlines()[1:]
    # Not listening (0A); established or already closed by a peer that finished first.
    return [(addr(f[1]), addr(f[2])) for f in map(str.split, rows) if f[9] in mine and f[3] != "0A"]

ringflow.init()
r, n = ringflow.rank(), ringflow.size()
for count in (0, 1, 7, 1001):
    for dtype in (np.float64, np.int32):
        x = (np.arange(count) * (r + 1) + r).astype(dtype)
        want = sum((np.arange(count) * (k + 1) + k).astype(dtype) for k in range(n))
        got = ringflow.allreduce(x, op=ringflow.Sum)
        assert got.dtype == dtype and np.array_equal(got, want), (count, dtype, got, want)
got = ringflow.allgather(np.full((r + 1, 3), r, dtype=np.float32))  # uneven first dimension
want = np.concatenate([np.full((k + 1, 3), k, dtype=np.float32) for k in range(n)])
assert np.array_equal(got, want), got
got = ringflow.broadcast(np.arange(5) * (r + 1), root_rank=n - 1)
assert np.array_equal(got, np.arange(5) * n), got
print(json.dumps({
    "rank": r, "size": n, "local_rank": ringflow.local_rank(), "local_size": ringflow.local_size(),
    "cross_rank": ringflow.cross_rank(), "cross_size": ringflow.cross_size(),
    "host": os.environ["RINGFLOW_HOST_ID"], "netns": os.stat("/proc/self/ns/net").st_ino,
    "exported": os.environ.get("RF_TEST_EXPORT"), "connections": tcp_connections(),
    "store_port": int(os.environ["RINGFLOW_STORE_PORT"]),
}))
"""


def by_rank(text: str) -> dict[int, list[str]]:
    lines: dict[int, list[str]] = {}
    for line in text.splitlines():
        match = PREFIX_RE.fullmatch(line)
        assert match, f"line without a [rank] prefix: {line!r}"
        lines.setdefault(int(match.group(1)), []).append(match.group(2))
    return lines


def test_local_hosts_need_no_ssh(tmp_path):
    """localhost entries run the agent directly: the same job, host identity from the entry."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n127.0.0.1 slots=2  # the same machine, by address\n")
    done = subprocess.run(
        [sys.executable, "-m", "ringflow.run", "-np", "3", "--hostfile", str(hostfile),
         "-x", "RF_TEST_EXPORT=yes", sys.executable, str(script)],
        capture_output=True, text=True, timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL,
        env=dict(os.environ, RINGFLOW_SSH_COMMAND="false"),  # ssh must not be used
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reports = {r: json.loads(lines[-1]) for r, lines in by_rank(done.stdout).items()}
    assert [reports[r]["host"] for r in range(3)] == ["localhost", "localhost", "127.0.0.1"]
    assert [(reports[r]["local_rank"], reports[r]["local_size"]) for r in range(3)] == [
        (0, 2), (1, 2), (0, 1),
    ]  # fmt: skip
    assert all(reports[r]["exported"] == "yes" for r in range(3))


@pytest.mark.timeout(JOB_TIMEOUT)
def test_start_timeout_names_the_host():
    """An ssh that never starts the agent: the job fails after --start-timeout, naming the
    host and its ranks, and the hung ssh is killed (no route lookup: --network-interface)."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ringflow.run", "-np", "2", "-H", "192.0.2.1:2",
         "--network-interface", "lo", "--start-timeout", "1", "--grace-period", "1", "true"],
        capture_output=True, text=True, timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL,
        env=dict(os.environ, RINGFLOW_SSH_COMMAND="sh -c 'exec sleep 600' fake-ssh"),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "not started within --start-timeout: host 192.0.2.1: rank(s) [0, 1]" in done.stderr
    assert time.monotonic() - start < 1 + 1 + 2 + 5  # timeout, grace, SIGKILL, startup


@pytest.fixture(scope="session")
def sshlab():
    with SshLab(2) as lab:
        yield lab


def lab_job(lab: SshLab, script: Path, *extra: str, hosts: str | None = None) -> list[str]:
    """The launcher's argv in lab host 0: 4 ranks, 2 on each ssh host unless ``hosts``."""
    hosts = hosts or f"{lab.addr(1)}:2,{lab.addr(2)}:2"
    argv = [sys.executable, "-m", "ringflow.run", "-np", "4", "-H", hosts,
            "--ssh-port", str(PORT), "-i", lab.identity, "--grace-period", "2", *extra,
            sys.executable, str(script)]  # fmt: skip
    return lab.lab.command(0, argv)


def lab_env(lab: SshLab) -> dict[str, str]:
    # TCP between ranks of one host too, whatever transports land later.
    return lab.client_env(RINGFLOW_TRANSPORT="tcp", RF_TEST_EXPORT="from-launcher")


def test_unknown_network_interface_is_named(tmp_path):
    """The core's RINGFLOW_NETWORK_INTERFACE override: an unknown name fails init, named."""
    code = "import ringflow; ringflow.init()"
    done = subprocess.run(
        [sys.executable, "-m", "ringflow.run", "-np", "2", "-H", "localhost:2",
         "--network-interface", "lo", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "ringflow.run", "-np", "2", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL,
        env=dict(os.environ, RINGFLOW_NETWORK_INTERFACE="rfnone0"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "RINGFLOW_NETWORK_INTERFACE=rfnone0: this host has no IPv4 interface" in done.stderr


@pytest.mark.timeout(JOB_TIMEOUT + 30)
@pytest.mark.parametrize(
    ("lab_hosts", "interface"), [((1, 2), None), ((1, 2), "eth0"), ((0, 2), None)]
)
def test_job_over_ssh(sshlab, tmp_path, lab_hosts, interface):
    """Two ranks on each of two lab hosts: both over ssh, or the launcher's own host (entry
    ``localhost``, no ssh) and one over ssh. Data goes where the store is reached, or over
    --network-interface (each lab host's link to the others is its eth0)."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    entries = ["localhost" if h == 0 else sshlab.addr(h) for h in lab_hosts]
    extra = ["--network-interface", interface] if interface else []
    done = subprocess.run(
        lab_job(sshlab, script, "-x", "RF_TEST_EXPORT", *extra,
                hosts=",".join(f"{entry}:2" for entry in entries)),
        capture_output=True, text=True, timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL,
        env=lab_env(sshlab),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    reports = {r: json.loads(lines[-1]) for r, lines in by_rank(done.stdout).items()}
    assert sorted(reports) == [0, 1, 2, 3]
    lab_addrs = {sshlab.addr(h) for h in range(3)}
    for r, report in reports.items():
        host = lab_hosts[r // 2]
        assert report["host"] == entries[r // 2]
        assert report["netns"] == sshlab.netns_inode(host), f"rank {r} is not in host {host}"
        assert (report["local_rank"], report["local_size"]) == (r % 2, 2)
        assert (report["cross_rank"], report["cross_size"]) == (r // 2, 2)
        assert report["exported"] == "from-launcher"
        # The store connection and every data connection run over the lab addresses, never
        # loopback, even between ranks of one host.
        ends = {end.split(":")[0] for pair in report["connections"] for end in pair}
        assert ends and ends <= lab_addrs, f"rank {r}: {report['connections']}"
        store = f":{report['store_port']}"
        data = [pair for pair in report["connections"] if not pair[1].endswith(store)]
        assert data, f"rank {r} has no data connection: {report['connections']}"
    # Ranks connect to the peers their algorithms need: some of those are on the other host.
    crossing = [
        pair
        for r, report in reports.items()
        for pair in report["connections"]
        if pair[1].startswith(sshlab.addr(lab_hosts[1 - r // 2]) + ":")
        and not pair[1].endswith(f":{report['store_port']}")
    ]
    assert crossing, reports
    assert not sshlab.wait_empty(), "processes left behind"


FAILING_SCRIPT = """
import sys, time, numpy as np, ringflow
ringflow.init()
if ringflow.rank() == 3:
    print("exiting at", time.time(), flush=True)
    sys.exit(7)
ringflow.allreduce(np.ones(4), op=ringflow.Sum)  # never completes: rank 3 is gone
"""


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_failing_rank_stops_every_host(sshlab, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(FAILING_SCRIPT)
    done = subprocess.run(
        lab_job(sshlab, script), capture_output=True, text=True, timeout=JOB_TIMEOUT,
        stdin=subprocess.DEVNULL, env=lab_env(sshlab),
    )  # fmt: skip
    assert done.returncode == 7, done.stderr
    assert f"rank 3 on host {sshlab.addr(2)} failed first (exited with code 7)" in done.stderr
    exited = float(
        next(line for line in done.stdout.splitlines() if "exiting at" in line).split()[-1]
    )
    assert time.time() - exited < 10  # the lab shares this machine's clock
    left = sshlab.wait_empty()
    assert not left, f"processes left behind: {left}"


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_sigint_leaves_nothing(sshlab, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(
        "import time, ringflow\nringflow.init()\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen(
        lab_job(sshlab, script), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, env=lab_env(sshlab), text=True,
    )  # fmt: skip
    try:
        lines = PipeLines(proc.stdout)
        for _ in range(4):
            if lines.until(lambda line: line.endswith(" ready"), JOB_TIMEOUT) is None:
                proc.kill()
                pytest.fail(f"the ranks did not all start: {lines.lines}, {proc.communicate()}")
        proc.send_signal(signal.SIGINT)  # ip netns exec execs: this pid is the launcher
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "got SIGINT; stopping the job on every host" in stderr
    left = sshlab.wait_empty()
    assert not left, f"processes left behind: {left}"


@pytest.mark.timeout(JOB_TIMEOUT + 30)
def test_unreachable_host_is_named(sshlab, tmp_path):
    """ssh failing (nothing listens on that port) fails the job at once, naming the host."""
    argv = lab_job(sshlab, tmp_path / "never-run.py", "--ssh-port", str(PORT + 1))
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=JOB_TIMEOUT, stdin=subprocess.DEVNULL,
        env=lab_env(sshlab),
    )  # fmt: skip
    assert done.returncode == 255, done.stderr
    assert re.search(r"host 198\.18\.0\.[23]: ssh exited with code 255 before rank", done.stderr)
    assert not sshlab.wait_empty()
