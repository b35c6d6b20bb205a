"""The actor behind each rank of a `ringflow.ray.RayExecutor` (made remote by the executor, so
this module does not import ray)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class Worker:
    """One rank: its own process, its ringflow environment, ``fn`` run on request."""

    def place(self) -> tuple[str, str]:
        """(Ray node id, node IP) of this actor."""
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def set_env(self, env: dict[str, str]) -> None:
        os.environ.update(env)

    def execute(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException:
            # Leave the job now: peers waiting on this rank raise at once instead of timing
            # out, and this actor can init() again in the next run.
            import ringflow

            ringflow.shutdown()
            raise
