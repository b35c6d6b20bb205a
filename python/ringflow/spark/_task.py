"""The Spark task side of `ringflow.spark.run`: one barrier task per rank.

Runs inside Spark's Python worker on an executor. It reports to the driver's control store,
agrees on the store address and host identities with the other tasks (``allGather``), starts the
rank's child process (`ringflow.spark._child`) and waits for it. Rank 0's task hosts the
rendezvous store in this process, so the store outlives no task and needs no free-port guess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def control_job_id(job_id: str) -> str:
    """The control store's job id: distinct from the rendezvous store's, with the same secret."""
    return job_id + "/control"


def host_identity() -> str:
    """Equal exactly for the processes of one host: boot id + network namespace.

    Never the hostname: containers, network namespaces and Spark executors on one machine may
    share one, and hosts behind NAT may differ in nothing else.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot = file.read().strip()
        return f"{boot}/net:{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:  # not Linux: the MAC address the uuid module finds stands in for the boot id
        import uuid

        return f"node:{uuid.getnode():012x}"


def local_ip_towards(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (no packet is sent: UDP connect)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.connect(address)
        return str(probe.getsockname()[0])


@dataclass(frozen=True)
class TaskSpec:
    """What every task needs; pickled by Spark with the task."""

    payload: bytes = field(repr=False)  # cloudpickle of (fn, args, kwargs)
    with_rows: bool  # True: the partition's rows go first in fn's arguments
    size: int
    env: dict[str, str]
    secret: str = field(repr=False)
    job_id: str
    control_host: str
    control_port: int
    start_timeout: float

    def run(self, rows: Iterable[Any]) -> Iterator[tuple[int, bytes]]:
        """mapPartitions' function: run this partition's rank, yield (rank, pickled result)."""
        from pyspark import BarrierTaskContext

        from ringflow import _core

        context = BarrierTaskContext.get()
        rank = context.partitionId()
        control = _core.StoreClient(
            self.control_host,
            self.control_port,
            secret=self.secret.encode(),
            job_id=control_job_id(self.job_id),
            timeout_s=self.start_timeout,
        )
        host = host_identity()
        store = None
        # Under Spark's local directory (Spark sets it for Python workers): what a killed task
        # leaves there goes when the executor does.
        local_dir = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0] or None
        workdir = Path(tempfile.mkdtemp(prefix=f"ringflow-spark-{rank}-", dir=local_dir))
        try:
            control.add("started", 1)
            offer: dict[str, Any] = {"host": host}
            if rank == 0:
                try:
                    ip = local_ip_towards(self.control_host, self.control_port)
                    store = _core.StoreServer(
                        host=ip, port=0, secret=self.secret.encode(), job_id=self.job_id
                    )
                    offer["store"] = [ip, store.port]
                except Exception as error:  # the others still wait in allGather: tell them
                    offer["error"] = f"rank 0 could not start the store: {error}"
            offers = [json.loads(message) for message in context.allGather(json.dumps(offer))]
            if "error" in offers[0]:
                raise RuntimeError(offers[0]["error"])
            rows_list = [_plain(row) for row in rows] if self.with_rows else None
            result = self._run_child(rank, offers, rows_list, workdir, control)
            control.set(f"done/{rank}", b"")
            if store is not None:
                # The store must outlive every rank's shutdown: rank 0 closes it after all are
                # done. (The control store, not context.barrier(): that one takes a second.)
                _wait_forever(control, [f"done/{r}" for r in range(self.size)])
            yield rank, result
        except BaseException as error:
            _report(control, rank, host, error)
            raise
        finally:
            if store is not None:
                store.close()
            control.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def _run_child(
        self,
        rank: int,
        offers: list[dict[str, Any]],
        rows: list[Any] | None,
        workdir: Path,
        control: Any,
    ) -> bytes:
        import cloudpickle

        hosts = [offer["host"] for offer in offers]
        same_host = [r for r, host in enumerate(hosts) if host == hosts[rank]]
        store_ip, store_port = offers[0]["store"]
        env = {
            **os.environ,
            **self.env,
            "RINGFLOW_RANK": str(rank),
            "RINGFLOW_SIZE": str(self.size),
            "RINGFLOW_LOCAL_RANK": str(same_host.index(rank)),
            "RINGFLOW_LOCAL_SIZE": str(len(same_host)),
            "RINGFLOW_HOST_ID": hosts[rank],  # the engine's cross_rank groups by it
            "RINGFLOW_STORE_ADDR": store_ip,
            "RINGFLOW_STORE_PORT": str(store_port),
            "RINGFLOW_STORE_EXTERNAL": "1",
            "RINGFLOW_SECRET": self.secret,
            "RINGFLOW_JOB_ID": self.job_id,
        }
        header = {
            "rank": rank,
            "host": hosts[rank],
            "control": [self.control_host, self.control_port],
            "secret": self.secret,
            "job_id": control_job_id(self.job_id),
        }
        (workdir / "input.pkl").write_bytes(cloudpickle.dumps((header, self.payload, rows)))
        # stdin stays open for the child's life: when this worker dies, the child sees EOF.
        child = subprocess.Popen(
            [sys.executable, "-m", "ringflow.spark._child", str(workdir)],
            stdin=subprocess.PIPE,
            env=env,
        )
        try:
            code = child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            assert child.stdin is not None
            child.stdin.close()
        output = workdir / "output.pkl"
        if output.exists():
            status, value = cloudpickle.loads(output.read_bytes())
            if status != "ok":
                raise _Reported(f"rank {rank}: {value}")
            if code == 0:
                return bytes(value)  # the result, pickled by the child
        raise RuntimeError(f"rank {rank}: the rank's process exited with code {code}")


def _plain(row: Any) -> Any:
    """A DataFrame's Row as a dict (the rank need not import pyspark to unpickle it), else the
    RDD's element as it is."""
    as_dict = getattr(row, "asDict", None)
    return as_dict(recursive=True) if isinstance(row, tuple) and as_dict is not None else row


def _wait_forever(control: Any, keys: list[str]) -> None:
    """Wait for ``keys`` however long the other ranks take (a cancelled job kills this task)."""
    while True:
        try:
            control.wait(keys, timeout_s=60.0)
            return
        except TimeoutError:
            continue


class _Reported(RuntimeError):
    """fn raised; the child has reported it to the driver already."""


def _report(control: Any, rank: int, host: str, error: BaseException) -> None:
    """Tell the driver this task failed (unless the child already did), so it cancels the job."""
    if isinstance(error, (_Reported, GeneratorExit)):
        return
    message = f"{type(error).__name__}: {error}"
    send_failure(control, rank, host, message, traceback.format_exc(), peer=False)


def send_failure(
    control: Any, rank: int, host: str, message: str, trace: str, *, peer: bool
) -> None:
    """Add one failure report; the driver's watcher cancels the job when it sees the first."""
    try:
        number = control.add("failures", 1)
        report = {"rank": rank, "host": host, "message": message, "traceback": trace, "peer": peer}
        control.set(f"failure/{number}", json.dumps(report).encode())
    except Exception:  # the driver is gone or the job was cancelled: nobody to tell
        pass
