"""ringflow.spark.run on a real Spark (local[4], one session for the whole file).

Every job is a real barrier stage: 4 Python workers, each starting its rank's child process.
The collectives are compared exactly with numpy inside the ranks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (ringflow[spark])")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java: no java on PATH and no JAVA_HOME", allow_module_level=True)

import cloudpickle  # noqa: E402

import ringflow.spark  # noqa: E402

# The ranks' functions below travel by value: executors need not import this test module (a
# standalone cluster's executors run in their own directory, without the repository).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SLOTS = 4
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spark_digits.py"


def spark_session(master: str) -> Any:
    """A session whose driver, executors and ranks all stay on loopback."""
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(master)
        .appName("ringflow tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.sql.shuffle.partitions", str(SLOTS))
        # Spark's own barrier slot check, as a backstop to ringflow's: fail at once, not in 10 min.
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
        .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "1")
        .getOrCreate()
    )


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_session(f"local[{SLOTS}]")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def leftover_processes(marker: str) -> list[int]:
    """PIDs whose environment holds ``marker`` (the ranks of one test's job)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass  # exited meanwhile, or not ours to read
    return found


def assert_no_rank_left(marker: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while leftover_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftover_processes(marker) == []


def topology(a: int = 0, b: int = 0) -> dict[str, int]:
    import ringflow as rf

    rf.init()
    found = {
        "rank": rf.rank(),
        "size": rf.size(),
        "local_rank": rf.local_rank(),
        "local_size": rf.local_size(),
        "cross_rank": rf.cross_rank(),
        "cross_size": rf.cross_size(),
        "pid": os.getpid(),
        "value": a * rf.rank() + b,
    }
    rf.shutdown()
    return found


@pytest.mark.timeout(120)
def test_results_in_rank_order(spark):
    found = ringflow.spark.run(topology, args=(10,), kwargs={"b": 1}, num_proc=SLOTS)
    assert [t["rank"] for t in found] == list(range(SLOTS))
    assert [t["value"] for t in found] == [1, 11, 21, 31]  # args and kwargs passed through
    assert {t["size"] for t in found} == {SLOTS}
    # One machine, one network namespace: one host.
    assert [t["local_rank"] for t in found] == list(range(SLOTS))
    assert {(t["local_size"], t["cross_rank"], t["cross_size"]) for t in found} == {(SLOTS, 0, 1)}
    assert len({t["pid"] for t in found}) == SLOTS  # one process per rank
    assert os.getpid() not in {t["pid"] for t in found}


def collectives(sizes: list[int]) -> int:
    """Exact allreduce / allgather / broadcast against numpy, for each length; returns checks."""
    import ringflow as rf

    rf.init()
    rank, size = rf.rank(), rf.size()
    checks = 0
    for n in sizes:
        for dtype in (np.float32, np.int32, np.float64):

            def part(r: int, n: int = n, dtype: Any = dtype) -> np.ndarray:
                return (np.arange(n) * (r + 1) - 3 * r).astype(dtype)  # integers: sums are exact

            total = rf.allreduce(part(rank), op=rf.Sum, name=f"sum.{n}.{dtype.__name__}")
            expect = np.sum([part(r) for r in range(size)], axis=0).astype(dtype)
            assert total.dtype == dtype and np.array_equal(total, expect.reshape(n)), (total, n)
            # Uneven allgather: rank r gives r + n rows.
            rows = np.full((rank + n, 2), rank, dtype)
            gathered = rf.allgather(rows, name=f"gather.{n}.{dtype.__name__}")
            expect = np.concatenate([np.full((r + n, 2), r, dtype) for r in range(size)])
            assert np.array_equal(gathered, expect)
            root = size - 1
            sent = rf.broadcast(part(rank), root_rank=root, name=f"bcast.{n}.{dtype.__name__}")
            assert np.array_equal(sent, part(root))
            checks += 3
    rf.shutdown()
    return checks


def partition_rows(rows: list[Any]) -> list[Any]:
    import ringflow as rf

    rf.init()
    counts = rf.allgather(np.array([len(rows)], np.int64), name="counts")
    assert int(counts.sum()) == 10
    return rows


@pytest.mark.timeout(120)
def test_data_partitions_go_to_their_ranks(spark):
    # 3 partitions: 3 ranks, rank r gets partition r, a DataFrame's rows as dicts.
    df = spark.range(0, 10, 1, numPartitions=3)
    expect = [[row.asDict() for row in part] for part in df.rdd.glom().collect()]
    assert ringflow.spark.run(partition_rows, data=df) == expect
    assert [len(part) for part in expect] == [3, 3, 4]


def fail_on_rank_2(marker: str) -> None:
    import ringflow as rf

    rf.init()
    if rf.rank() == 2:
        raise ValueError("rank two gives up")
    if rf.rank() == 3:  # waits outside ringflow: only the job's cancellation can end it
        time.sleep(300)
    rf.allreduce(np.ones(4), name="never_completes")  # the others wait on rank 2


@pytest.mark.timeout(60)
def test_failing_task_fails_fast_naming_its_rank(spark):
    marker = f"RINGFLOW_TEST_MARK=spark-{uuid.uuid4().hex}"
    start = time.monotonic()
    with pytest.raises(ringflow.spark.SparkJobError) as raised:
        ringflow.spark.run(
            fail_on_rank_2,
            args=(marker,),
            num_proc=SLOTS,
            env={"RINGFLOW_TEST_MARK": marker.split("=", 1)[1]},
        )
    elapsed = time.monotonic() - start
    assert raised.value.rank == 2
    assert "rank 2" in str(raised.value) and "ValueError: rank two gives up" in str(raised.value)
    assert elapsed < 15, elapsed
    assert_no_rank_left(marker)


def exit_on_rank_1() -> None:
    import ringflow as rf

    rf.init()
    if rf.rank() == 1:
        os._exit(3)  # no exception, no report: the task sees the exit status
    rf.barrier()


@pytest.mark.timeout(60)
def test_a_rank_that_dies_is_named(spark):
    start = time.monotonic()
    with pytest.raises(ringflow.spark.SparkJobError, match=r"rank 1.*exited with code 3") as raised:
        ringflow.spark.run(exit_on_rank_1, num_proc=SLOTS)
    assert raised.value.rank == 1
    assert time.monotonic() - start < 15


@pytest.mark.timeout(120)
def test_collectives_exact_inside_tasks(spark):
    # After the failures above: the session runs the next job as if nothing happened.
    sizes = [0, 1, 7, 1001]
    assert ringflow.spark.run(collectives, args=(sizes,), num_proc=SLOTS) == [36] * SLOTS


@pytest.mark.timeout(30)
def test_too_few_slots_fails_fast(spark):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"num_proc=5 needs 5 task slots.*has 4"):
        ringflow.spark.run(topology, num_proc=SLOTS + 1)
    assert time.monotonic() - start < 5


def test_host_identity_tells_network_namespaces_apart():
    # Same machine, same hostname, another network namespace: another host for local_rank.
    from ringflow.spark._task import host_identity

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    code = "from ringflow.spark._task import host_identity; print(host_identity())"
    other = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    if other.returncode != 0:
        pytest.skip(f"unshare --net is not allowed here: {other.stderr.strip()[-200:]}")
    mine = host_identity()
    assert other.stdout.strip() != mine
    assert other.stdout.strip().split("/net:")[0] == mine.split("/net:")[0]  # one boot


def test_dynamic_allocation_is_refused():
    class Conf(dict):
        pass

    class FakeContext:  # a cluster master with dynamic allocation, as spark-submit would set
        master = "yarn"

        def getConf(self):
            return Conf({"spark.dynamicAllocation.enabled": "true"})

    with pytest.raises(ValueError, match=r"spark\.dynamicAllocation\.enabled=false"):
        ringflow.spark._check_cluster(FakeContext(), 2, 1.0)


@pytest.mark.timeout(180)
def test_digits_example_trains_from_a_dataframe(spark):
    pytest.importorskip("torch", reason="the example needs torch")
    pytest.importorskip("sklearn", reason="the example needs scikit-learn")
    spec = importlib.util.spec_from_file_location("spark_digits", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules["spark_digits"] = example
    try:
        spec.loader.exec_module(example)
        metrics = example.train_on_spark(spark, num_proc=2, epochs=2)
    finally:
        sys.modules.pop("spark_digits", None)
    # Every training image (1438) is in one rank's shard.
    assert sum(metrics["rows_per_rank"]) == 1438 and min(metrics["rows_per_rank"]) > 0
    assert metrics["test_accuracy"] > 0.7, metrics
