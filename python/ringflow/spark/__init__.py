"""Run a ringflow job on Spark: one barrier-mode task per rank, results back in rank order.

    import ringflow.spark

    def train(lr):
        import ringflow as rf
        rf.init()
        ...
        return rf.rank()

    ranks = ringflow.spark.run(train, args=(0.1,), num_proc=4)   # [0, 1, 2, 3]

How it works (the driver side is this module, the task side `_task`, the rank process `_child`):

1. The driver makes a job secret and starts a small *control store* (a ``_core.StoreServer``)
   that the tasks report to: "started", and any failure with its rank and traceback.
2. ``num_proc`` barrier tasks start together (``rdd.barrier().mapPartitions``); rank = partition
   id. Rank 0's task hosts the rendezvous store and shares its address with
   ``BarrierTaskContext.allGather``, which also carries each task's host identity (boot id +
   network namespace), from which every task derives its local rank and size.
3. Each task runs ``fn`` in a child process (``fn`` travels with cloudpickle) that exits when its
   task goes away, and returns the pickled result.
4. A driver thread watches the control store: the first failure, or tasks that did not all start
   within ``start_timeout``, cancels the job group at once, so ``run`` raises `SparkJobError`
   naming the rank within seconds instead of Spark's retries and barrier waits.

pyspark is imported only when `run` is called (``pip install 'ringflow[spark]'``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SparkJobError", "run"]

DEFAULT_START_TIMEOUT_S = 120.0
"""Seconds for enough task slots to exist and for all tasks to start (``start_timeout``)."""

_POLL_S = 0.1  # how often the driver's watcher reads the control store (a local, cheap read)
_ORIGIN_WAIT_S = 3.0  # how long a failed job's report waits for the rank that failed first


class SparkJobError(RuntimeError):
    """A ringflow job on Spark failed; ``rank`` is the failing rank (None: no rank failed,
    e.g. the tasks did not start)."""

    def __init__(self, message: str, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank


def run(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    num_proc: int | None = None,
    env: Mapping[str, str] | None = None,
    start_timeout: float | None = None,
    data: Any = None,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``num_proc`` Spark tasks as one ringflow job.

    ``fn`` calls ``ringflow.init()`` itself; the environment says its rank (the task's partition
    id), the job size, local rank and size, and where the store is. ``env`` adds variables
    (``RINGFLOW_TIMEOUT``, ``OMP_NUM_THREADS``, ...). ``data``, a DataFrame or RDD, is spread over
    the tasks (repartitioned to ``num_proc`` partitions where it has another number) and rank r
    gets the rows of partition r as the first argument: ``fn(rows, *args, **kwargs)``, a list of
    dicts for a DataFrame (``Row.asDict(recursive=True)``), of the elements for an RDD.

    ``num_proc`` defaults to the partitions of ``data``, else to ``sc.defaultParallelism``.
    ``start_timeout`` (default 120 s) bounds the wait for enough free task slots and for every
    task to start. Returns ``fn``'s results in rank order; raises `SparkJobError` naming the rank
    when one fails (the job is cancelled at once) and `ValueError` when the cluster cannot run
    ``num_proc`` tasks together (too few slots, dynamic allocation on).
    """
    try:
        import cloudpickle
        from pyspark import SparkContext
    except ImportError as error:
        raise ImportError(
            f"ringflow.spark needs pyspark: pip install 'ringflow[spark]' ({error})"
        ) from error
    from ringflow import _core
    from ringflow.spark import _task

    sc = SparkContext._active_spark_context
    if sc is None:
        raise ValueError("ringflow.spark.run: no active SparkContext; start a SparkSession first")
    rdd = _input_rdd(data)
    if num_proc is None:
        num_proc = rdd.getNumPartitions() if rdd is not None else sc.defaultParallelism
    if num_proc < 1:
        raise ValueError(f"ringflow.spark.run: num_proc={num_proc} must be at least 1")
    if rdd is None:
        rdd = sc.parallelize([], num_proc)  # one empty partition per rank
    elif rdd.getNumPartitions() != num_proc:
        rdd = rdd.repartition(num_proc)
    timeout = DEFAULT_START_TIMEOUT_S if start_timeout is None else float(start_timeout)
    _check_cluster(sc, num_proc, timeout)

    secret = secrets.token_hex(32)
    job_id = f"spark-{sc.applicationId}-{uuid.uuid4().hex[:8]}"
    conf = sc.getConf()
    driver_host = conf.get("spark.driver.host") or "127.0.0.1"
    bind_host = conf.get("spark.driver.bindAddress") or driver_host
    control = _core.StoreServer(
        host=bind_host, port=0, secret=secret.encode(), job_id=_task.control_job_id(job_id)
    )
    spec = _task.TaskSpec(
        payload=cloudpickle.dumps((fn, tuple(args), dict(kwargs or {}))),
        with_rows=data is not None,
        size=num_proc,
        env=dict(env or {}),
        secret=secret,
        job_id=job_id,
        control_host=driver_host,
        control_port=control.port,
        start_timeout=timeout,
    )
    watcher = _Watcher(spec, sc, group=job_id)
    try:
        with _job_group(sc, job_id, f"ringflow job of {num_proc} ranks"):
            watcher.start()
            try:
                results = rdd.barrier().mapPartitions(spec.run).collect()
            except Exception as error:
                watcher.stop()
                raise watcher.error() or SparkJobError(
                    f"ringflow.spark.run: the Spark job failed: {error}"
                ) from error
            except BaseException:  # Ctrl-C: the tasks, and with them the ranks, stop too
                sc.cancelJobGroup(job_id)
                raise
            finally:
                watcher.stop()
    finally:
        control.close()
    ordered = dict(results)
    return [cloudpickle.loads(ordered[rank]) for rank in range(num_proc)]


def _input_rdd(data: Any) -> Any:
    """``data`` as an RDD (a DataFrame's rows), or None."""
    if data is None:
        return None
    rdd = getattr(data, "rdd", data)  # a DataFrame's rows, or an RDD as it is
    if not hasattr(rdd, "barrier"):
        raise TypeError(f"ringflow.spark.run: data must be a DataFrame or an RDD, not {data!r}")
    return rdd


def _check_cluster(sc: Any, num_proc: int, timeout: float) -> None:
    """Refuse what barrier mode cannot run, before submitting (Spark itself waits minutes)."""
    conf = sc.getConf()
    master = sc.master or ""
    dynamic = (conf.get("spark.dynamicAllocation.enabled") or "false").lower() == "true"
    if dynamic and not master.startswith("local"):  # Spark ignores it in local mode
        raise ValueError(
            "ringflow.spark.run: spark.dynamicAllocation.enabled=true, but a ringflow job runs "
            "in Spark's barrier mode, which needs a fixed set of executors; start the session "
            "with spark.dynamicAllocation.enabled=false"
        )
    deadline = time.monotonic() + timeout
    while True:
        slots = _slots(sc)
        if slots >= num_proc:
            return
        # Local masters have all their slots from the start; clusters may still be registering
        # executors, so wait for them up to the start timeout.
        if master.startswith("local") or time.monotonic() >= deadline:
            raise ValueError(
                f"ringflow.spark.run: num_proc={num_proc} needs {num_proc} task slots at once "
                f"(barrier mode), but the cluster has {slots} (master {master!r}); use "
                f"num_proc <= {slots} or add executors/cores"
            )
        time.sleep(0.5)


def _slots(sc: Any) -> int:
    """Tasks the cluster can run at once now (what Spark's own barrier check counts)."""
    try:
        jsc = sc._jsc.sc()
        profile = jsc.resourceProfileManager().defaultResourceProfile()
        return int(jsc.maxNumConcurrentTasks(profile))
    except Exception:  # an internal API: fall back to the public estimate
        return int(sc.defaultParallelism)


class _job_group:  # lower case: used as a context manager, like contextlib's
    """Run the job in its own job group (cancellable as a whole), then restore the caller's."""

    _KEYS = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")

    def __init__(self, sc: Any, group: str, description: str) -> None:
        self.sc, self.group, self.description = sc, group, description
        self.saved: list[str | None] = []

    def __enter__(self) -> None:
        self.saved = [self.sc.getLocalProperty(key) for key in self._KEYS]
        self.sc.setJobGroup(self.group, self.description, interruptOnCancel=True)

    def __exit__(self, *exc: object) -> None:
        for key, value in zip(self._KEYS, self.saved):
            self.sc.setLocalProperty(key, value)


class _Watcher:
    """Cancels the job on the first failure a task reports, or when tasks do not all start."""

    def __init__(self, spec: Any, sc: Any, group: str) -> None:
        self.spec, self.sc, self.group = spec, sc, group
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="ringflow-spark-watch", daemon=True
        )
        self._start_failure: str | None = None
        self._client: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _connect(self) -> Any:
        from ringflow import _core
        from ringflow.spark import _task

        return _core.StoreClient(
            self.spec.control_host,
            self.spec.control_port,
            secret=self.spec.secret.encode(),
            job_id=_task.control_job_id(self.spec.job_id),
            timeout_s=30.0,
        )

    def _watch(self) -> None:
        client = self._connect()
        try:
            deadline = time.monotonic() + self.spec.start_timeout
            started = False
            while not self._stop.wait(_POLL_S):
                if client.add("failures", 0) > 0:
                    self.sc.cancelJobGroup(self.group)
                    return
                if not started:
                    count = client.add("started", 0)
                    started = count >= self.spec.size
                    if not started and time.monotonic() > deadline:
                        self._start_failure = (
                            f"ringflow.spark.run: only {count} of {self.spec.size} tasks started "
                            f"within {self.spec.start_timeout:g} s (start_timeout); barrier mode "
                            "needs them all at once: are there enough free task slots?"
                        )
                        self.sc.cancelJobGroup(self.group)
                        return
        finally:
            client.close()

    @staticmethod
    def _reports(client: Any) -> list[dict[str, Any]]:
        count = client.add("failures", 0)
        return [json.loads(client.get(f"failure/{n}")) for n in range(1, count + 1)]

    def error(self) -> SparkJobError | None:
        """The failure to report for a failed job: the failing rank's, else a start timeout."""
        client = self._connect()
        try:
            reports = self._reports(client)
            # Peers of a rank that died without a word may report first (they see it leave);
            # its task reports the exit status a moment later: wait for that, briefly.
            deadline = time.monotonic() + _ORIGIN_WAIT_S
            while reports and all(r["peer"] for r in reports) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
                reports = self._reports(client)
        finally:
            client.close()
        primary = [r for r in reports if not r["peer"]] or reports
        if primary:
            report = primary[0]
            return SparkJobError(
                f"ringflow.spark.run: rank {report['rank']} (host {report['host']}) failed: "
                f"{report['message']}\n{report['traceback']}".rstrip(),
                rank=report["rank"],
            )
        if self._start_failure:
            return SparkJobError(self._start_failure)
        return None
