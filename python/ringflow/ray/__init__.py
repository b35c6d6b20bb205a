"""Run a ringflow job on Ray: one actor per rank, in a placement group, the store on the driver.

    import ray
    from ringflow.ray import RayExecutor

    ray.init()                     # or ray.init(address="auto") on a cluster
    executor = RayExecutor(num_workers=4, cpus_per_worker=1)
    executor.start()
    ranks = executor.run(train, args=(0.1,))   # fn calls ringflow.init(); results in rank order
    executor.shutdown()

`start` reserves one bundle per rank in a placement group (``strategy="PACK"`` keeps ranks
together), starts the actors in it and numbers them so that ranks on one Ray node are contiguous
(local rank = place among the ranks of that node; the node id is the host identity). The driver
hosts the rendezvous store for the executor's whole life, so `run` may be called again, and each
run's ``ringflow.init()`` joins a new job after the last run's ``shutdown()``.

A rank whose ``fn`` raises leaves its ringflow job at once (its peers raise instead of waiting)
and `run` raises `RayJobError` naming it. Ranks that do not finish within ``failure_grace_s``
after that are killed with their actors, and the executor must be started again.

ray is imported only when the executor starts (``pip install 'ringflow[ray]'``).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RayExecutor", "RayJobError"]


class RayJobError(RuntimeError):
    """A rank of a `RayExecutor.run` failed; ``rank`` says which."""

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            f"ringflow.ray needs ray: pip install 'ringflow[ray]' ({error})"
        ) from error
    return ray


class RayExecutor:
    """``num_workers`` ranks as Ray actors, each with ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs; ``env`` is set in every actor before ``fn`` runs."""

    def __init__(
        self,
        num_workers: int,
        cpus_per_worker: float = 1,
        gpus_per_worker: float = 0,
        env: Mapping[str, str] | None = None,
        strategy: str = "PACK",
        start_timeout: float = 60.0,
        failure_grace_s: float = 10.0,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"RayExecutor: num_workers={num_workers} must be at least 1")
        self.num_workers = num_workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.env = dict(env or {})
        self.strategy = strategy
        self.start_timeout = start_timeout
        self.failure_grace_s = failure_grace_s
        self._actors: list[Any] = []
        self._nodes: list[str] = []
        self._group: Any = None
        self._store: Any = None

    def start(self) -> None:
        """Reserve the placement group, start the actors, give each its rank's environment."""
        if self._actors:
            raise RuntimeError("RayExecutor.start: already started; call shutdown() first")
        ray = _import_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from ringflow import _core
        from ringflow.ray._worker import Worker

        if not ray.is_initialized():
            ray.init()
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        try:
            self._group = placement_group([bundle] * self.num_workers, strategy=self.strategy)
            try:
                ray.get(self._group.ready(), timeout=self.start_timeout)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(
                    f"RayExecutor.start: could not reserve {self.num_workers} x {bundle} "
                    f"({self.strategy}) within {self.start_timeout:g} s; the cluster has "
                    f"{ray.available_resources()} available"
                ) from None
            remote = ray.remote(Worker)
            actors = [
                remote.options(
                    num_cpus=self.cpus_per_worker,
                    num_gpus=self.gpus_per_worker,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self._group, placement_group_bundle_index=index
                    ),
                ).remote()
                for index in range(self.num_workers)
            ]
            self._actors = actors
            places = ray.get([actor.place.remote() for actor in actors], timeout=self.start_timeout)
            self._actors, self._nodes, store_host = _ranked(actors, places, _driver_place(ray))
            secret, job_id = secrets.token_hex(32), f"ray-{uuid.uuid4().hex[:12]}"
            self._store = _core.StoreServer(
                host=store_host, port=0, secret=secret.encode(), job_id=job_id
            )
            envs = _rank_envs(self._nodes, store_host, self._store.port, secret, job_id)
            ray.get(
                [
                    actor.set_env.remote({**self.env, **env})
                    for actor, env in zip(self._actors, envs)
                ],
                timeout=self.start_timeout,
            )
        except BaseException:
            self.shutdown()
            raise

    def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """``fn(*args, **kwargs)`` on every rank; the results in rank order."""
        if not self._actors:
            raise RuntimeError("RayExecutor.run: not started; call start() first")
        ray = _import_ray()
        nodes = self._nodes  # shutdown() below may clear them
        refs = [actor.execute.remote(fn, tuple(args), dict(kwargs or {})) for actor in self._actors]
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception:
                failed = [done[0]]
                break
        else:
            return ray.get(refs)
        # The others see the failed rank leave and fail too; wait for them, briefly, and name
        # the rank that failed on its own (its peers' errors may arrive before its own).
        settled, still = [], pending
        if pending:
            settled, still = ray.wait(
                pending, num_returns=len(pending), timeout=self.failure_grace_s
            )
        errors = []
        for ref in failed + sorted(settled, key=rank_of.__getitem__):
            try:
                ray.get(ref)
            except Exception as error:
                errors.append((rank_of[ref], getattr(error, "cause", None) or error, error))
        if still:
            self.shutdown()  # ranks stuck outside ringflow: kill them (start() again to reuse)
        from ringflow import PeerFailureError

        rank, cause, error = next(
            (e for e in errors if not isinstance(e[1], PeerFailureError)), errors[0]
        )
        raise RayJobError(
            f"RayExecutor.run: rank {rank} (Ray node {nodes[rank]}) failed: "
            f"{type(cause).__name__}: {cause}",
            rank=rank,
        ) from error

    def shutdown(self) -> None:
        """Kill the actors, release the placement group, close the store. Safe to repeat."""
        if self._actors or self._group is not None:
            ray = _import_ray()
            for actor in self._actors:
                ray.kill(actor)
            if self._group is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self._group)
        self._actors, self._nodes, self._group = [], [], None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> RayExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _driver_place(ray: Any) -> tuple[str, str]:
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def _ranked(
    actors: list[Any], places: list[tuple[str, str]], driver: tuple[str, str]
) -> tuple[list[Any], list[str], str]:
    """Actors in rank order (grouped by node, nodes in order of first bundle), their node ids,
    and the address the store listens on: loopback when every rank runs on the driver's node."""
    first_seen: dict[str, int] = {}
    for node, _ in places:
        first_seen.setdefault(node, len(first_seen))
    order = sorted(range(len(actors)), key=lambda i: (first_seen[places[i][0]], i))
    nodes = [places[i][0] for i in order]
    store_host = "127.0.0.1" if set(nodes) == {driver[0]} else driver[1]
    return [actors[i] for i in order], nodes, store_host


def _rank_envs(
    nodes: list[str], store_host: str, store_port: int, secret: str, job_id: str
) -> list[dict[str, str]]:
    """Each rank's ringflow variables (what `ringflow._environment` reads)."""
    envs = []
    for rank, node in enumerate(nodes):
        same_node = [r for r, other in enumerate(nodes) if other == node]
        envs.append(
            {
                "RINGFLOW_RANK": str(rank),
                "RINGFLOW_SIZE": str(len(nodes)),
                "RINGFLOW_LOCAL_RANK": str(same_node.index(rank)),
                "RINGFLOW_LOCAL_SIZE": str(len(same_node)),
                "RINGFLOW_HOST_ID": f"ray-node:{node}",
                "RINGFLOW_STORE_ADDR": store_host,
                "RINGFLOW_STORE_PORT": str(store_port),
                "RINGFLOW_STORE_EXTERNAL": "1",
                "RINGFLOW_SECRET": secret,
                "RINGFLOW_JOB_ID": job_id,
            }
        )
    return envs
