"""A real two-node Slurm cluster on this machine, for tests: Debian's munged, slurmctld, slurmd.

Each node is a `tests.netlab` host (a network namespace): node i is ``rfn<i+1>`` with
``NodeAddr`` = its lab address and a distinct ``NodeHostname``; slurmctld runs on node 1.
Daemons run in the foreground, started by PID with ``nsenter --net`` (``ip netns exec`` would
remount /sys) and ended by PID, together with every process left in the lab's namespaces (job
steps). Config, state, spool, logs and the munge key and socket live in one temp dir, removed at
the end. Commands (srun, sbatch, scontrol) run on node 1 with ``SLURM_CONF`` pointing there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.netlab import Lab
from tests.netlab import unavailable_reason as lab_unavailable

TOOLS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "scontrol", "sinfo", "nsenter")
NODES = 2
CPUS_PER_NODE = 2
START_TIMEOUT_S = 30.0

_CONF = """\
ClusterName=rflab
SlurmctldHost={controller}({addr0})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.sock
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.%n.log
PlugStackConfig={dir}/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
"""


def unavailable_reason() -> str | None:
    """Why no lab Slurm can run here (one line), or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"Slurm lab needs {', '.join(missing)} (Debian: slurmd slurmctld slurm-client munge)"
    return lab_unavailable()


class SlurmLab:
    """Use as a context manager; `run` runs a Slurm client command on node 1."""

    def __init__(self) -> None:
        self.lab = Lab(NODES)
        self.dir = Path()
        self._daemons: list[subprocess.Popen] = []

    def node(self, i: int) -> str:
        return f"rfn{i + 1}"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.dir / "slurm.conf"))

    def __enter__(self) -> SlurmLab:
        self.lab.__enter__()
        try:
            self.dir = Path(tempfile.mkdtemp(prefix="rfslurm."))
            self._configure()
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _configure(self) -> None:
        for sub in ("state", "log", *(f"spool/{self.node(i)}" for i in range(NODES))):
            (self.dir / sub).mkdir(parents=True)
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (self.dir / "plugstack.conf").write_text("")  # none of /etc/slurm's SPANK plugins
        conf = _CONF.format(
            controller=socket.gethostname().split(".")[0],  # slurmctld checks its own name
            addr0=self.lab.addr(0),
            dir=self.dir,
        )
        for i in range(NODES):
            conf += (
                f"NodeName={self.node(i)} NodeAddr={self.lab.addr(i)} "
                f"NodeHostname=rfhost{i + 1} CPUs={CPUS_PER_NODE} State=UNKNOWN\n"
            )
        conf += f"PartitionName=lab Nodes=rfn[1-{NODES}] Default=YES MaxTime=INFINITE State=UP\n"
        (self.dir / "slurm.conf").write_text(conf)

    def _daemon(self, host: int | None, argv: list[str], log: str) -> None:
        if host is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.lab.namespace(host)}", *argv]
        with open(self.dir / "log" / log, "wb") as out:
            self._daemons.append(
                subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            )

    def _start(self) -> None:
        d = self.dir
        self._daemon(
            None,
            [
                *("munged", "--foreground", "--force", f"--key-file={d}/munge.key"),
                *(f"--socket={d}/munge.sock", f"--pid-file={d}/munged.pid"),
                *(f"--log-file={d}/log/munged.log", f"--seed-file={d}/munged.seed"),
            ],
            "munged.out",
        )
        self._wait("munged's socket", lambda: (d / "munge.sock").exists())
        conf = str(d / "slurm.conf")
        self._daemon(0, ["slurmctld", "-D", "-f", conf], "slurmctld.out")
        for i in range(NODES):
            self._daemon(i, ["slurmd", "-D", "-N", self.node(i), "-f", conf], f"slurmd{i}.out")
        self._wait("both nodes idle", self._all_idle)

    def _all_idle(self) -> bool:
        done = self.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=10)
        return done.returncode == 0 and done.stdout.split() == ["idle"] * NODES

    def _wait(self, what: str, ready: Any) -> None:
        # Polls a real condition (daemons have no readiness pipe) until its deadline.
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args} exited {daemon.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Slurm lab: no {what} within {START_TIMEOUT_S} s: {self.logs()}"
                )
            time.sleep(0.1)

    def logs(self) -> str:
        texts = []
        for path in sorted((self.dir / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-5:]
            texts.append(f"== {path.name}\n" + "\n".join(lines))
        return "\n".join(texts)

    def run(
        self, argv: list[str], timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess:
        """argv on node 1 (the controller's network), with this cluster's SLURM_CONF."""
        kwargs.setdefault("env", self.env)
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.lab.namespace(0)}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def __exit__(self, *exc: object) -> None:
        try:
            for daemon in reversed(self._daemons):
                _end(daemon)
            # Job steps (slurmstepd and its tasks) outlive slurmd: whatever is left in the lab's
            # namespaces was started by this lab.
            for i in range(NODES):
                pids = subprocess.run(
                    ["ip", "netns", "pids", self.lab.namespace(i)],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        finally:
            self.lab.__exit__(*exc)
            if self.dir.parts and self.dir.name.startswith("rfslurm."):
                shutil.rmtree(self.dir, ignore_errors=True)


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
