"""ringflow.spark.run on a Spark standalone cluster: a master and 2 workers (2 cores each) started
from pyspark's own ``bin/spark-class``, on loopback, ended by PID.

Slow (a cluster of 3 JVMs, then executors): runs only with RINGFLOW_SLOW=1. Unlike local[N], a
standalone cluster retries failed tasks and barrier stages, so this is where the driver's
cancellation on the first failure matters.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RINGFLOW_SLOW") != "1",
        reason="slow (a standalone Spark master + 2 workers): set RINGFLOW_SLOW=1",
    ),
]

import ringflow.spark  # noqa: E402
from tests.test_spark import (  # noqa: E402 (skips the module where pyspark or Java is missing)
    assert_no_rank_left,
    fail_on_rank_2,
    partition_rows,
    spark_session,
    topology,
)

CORES_PER_WORKER = 2
START_TIMEOUT_S = 90


class Daemon:
    """One Spark daemon (``spark-class CLASS ARGS``); its log is scanned for ``pattern``."""

    def __init__(self, log_dir: Path, name: str, cls: str, *args: str) -> None:
        import pyspark

        spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(log_dir)}
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # spark-class ends in `exec java ...`: this PID is the daemon's JVM.
        self.process = subprocess.Popen(
            [str(spark_class), cls, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.name = name
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # EOF marker
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if (match := regex.search(line)) is not None:
                        return match
                    if line == "":
                        raise AssertionError(f"{self.name} exited:\n{''.join(self.lines)}")
                seen = len(self.lines)
                left = deadline - time.monotonic()
                assert left > 0, f"{self.name}: no {pattern!r} in:\n{''.join(self.lines)}"
                self._changed.wait(left)

    def stop(self) -> None:
        self.process.terminate()  # the worker's shutdown hook ends its executors
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture(scope="module")
def cluster_spark() -> Iterator[Any]:
    daemons: list[Daemon] = []
    with tempfile.TemporaryDirectory(prefix="ringflow-standalone-") as tmp:
        try:
            master = Daemon(
                Path(tmp),
                "master",
                "org.apache.spark.deploy.master.Master",
                *("--host", "127.0.0.1", "--port", "0", "--webui-port", "0"),
            )
            daemons.append(master)
            url = master.wait_for(r"Starting Spark master at (spark://\S+)")[1]
            for index in range(2):
                work = Path(tmp) / f"worker{index}"
                worker = Daemon(
                    Path(tmp),
                    f"worker{index}",
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    *("--host", "127.0.0.1", "--cores", str(CORES_PER_WORKER)),
                    *("--memory", "1g", "--webui-port", "0", "--work-dir", str(work)),
                )
                daemons.append(worker)
                worker.wait_for(r"Successfully registered with master")
            spark = spark_session(url)
            spark.sparkContext.setLogLevel("ERROR")
            try:
                yield spark
            finally:
                spark.stop()
        finally:
            for daemon in reversed(daemons):
                daemon.stop()


@pytest.mark.timeout(240)
def test_standalone_cluster_runs_a_job(cluster_spark):
    slots = 2 * CORES_PER_WORKER
    # Executors register after the session starts: run() waits for their slots.
    found = ringflow.spark.run(topology, args=(1,), num_proc=slots, start_timeout=START_TIMEOUT_S)
    assert [t["rank"] for t in found] == [t["value"] for t in found] == list(range(slots))
    # Two workers, one machine and network namespace: one host for ringflow (not two).
    assert [t["local_rank"] for t in found] == list(range(slots))
    assert {(t["local_size"], t["cross_size"]) for t in found} == {(slots, 1)}
    assert len({t["pid"] for t in found}) == slots
    # Data with another number of partitions than ranks: repartitioned, every element once.
    got = ringflow.spark.run(
        partition_rows, data=cluster_spark.sparkContext.parallelize(range(10), 3), num_proc=2
    )
    assert len(got) == 2 and sorted(x for part in got for x in part) == list(range(10))


@pytest.mark.timeout(120)
def test_standalone_failure_is_not_retried(cluster_spark):
    # Spark would retry the barrier stage (and rerun every rank) up to 4 times: ringflow cancels.
    marker = f"spark-standalone-{os.getpid()}-{time.monotonic_ns()}"
    start = time.monotonic()
    with pytest.raises(ringflow.spark.SparkJobError, match=r"rank 2 .*rank two gives up") as raised:
        ringflow.spark.run(
            fail_on_rank_2,
            args=(marker,),
            num_proc=2 * CORES_PER_WORKER,
            env={"RINGFLOW_TEST_MARK": marker},
        )
    assert raised.value.rank == 2
    assert time.monotonic() - start < 15
    assert_no_rank_left(marker)


@pytest.mark.timeout(60)
def test_standalone_too_few_slots(cluster_spark):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"num_proc=5 needs 5 task slots.*has 4"):
        ringflow.spark.run(topology, num_proc=5, start_timeout=2)
    assert time.monotonic() - start < 5


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
