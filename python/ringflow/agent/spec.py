"""The job spec the launcher sends each agent, and the environment it gives each rank."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ..run.ranks import RankSlot

__all__ = ["Spec", "rank_environment"]


@dataclass(frozen=True)
class Spec:
    """One host's share of a job, as the launcher sends it."""

    nonce: str
    command: list[str]
    host: str
    size: int
    store_addr: str
    store_port: int
    secret: str = field(repr=False)
    job_id: str
    ranks: list[RankSlot]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    grace_period: float = 5.0
    bind_to: str = "none"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Spec:
        """Parse and check a spec line; ValueError says which field is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"the job spec is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("the job spec is not a JSON object")
        try:
            data["ranks"] = [RankSlot(**slot) for slot in data["ranks"]]
            spec = cls(**data)
        except (KeyError, TypeError) as e:
            raise ValueError(f"the job spec is incomplete or has unknown fields: {e}") from None
        checks = {
            "nonce": isinstance(spec.nonce, str) and len(spec.nonce) >= 8,
            "command": bool(spec.command) and all(isinstance(a, str) for a in spec.command),
            "env": all(isinstance(k, str) and isinstance(v, str) for k, v in spec.env.items()),
            "ranks": bool(spec.ranks) and all(0 <= s.rank < spec.size for s in spec.ranks),
            "store_port": isinstance(spec.store_port, int) and 0 < spec.store_port < 65536,
            "bind_to": spec.bind_to in ("none", "core"),
            "grace_period": isinstance(spec.grace_period, (int, float)) and spec.grace_period >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"the job spec has bad field(s): {', '.join(bad)}")
        return spec


def rank_environment(spec: Spec, slot: RankSlot, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of one rank: ``base``, the spec's env, then the rank's own variables."""
    env = {**base, **spec.env}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(
        {
            "RINGFLOW_RANK": str(slot.rank),
            "RINGFLOW_SIZE": str(spec.size),
            "RINGFLOW_LOCAL_RANK": str(slot.local_rank),
            "RINGFLOW_LOCAL_SIZE": str(slot.local_size),
            "RINGFLOW_CROSS_RANK": str(slot.cross_rank),
            "RINGFLOW_CROSS_SIZE": str(slot.cross_size),
            # The host entry, not gethostname(): namespaces and containers share hostnames.
            "RINGFLOW_HOST_ID": spec.host,
            "RINGFLOW_STORE_ADDR": spec.store_addr,
            "RINGFLOW_STORE_PORT": str(spec.store_port),
            "RINGFLOW_STORE_EXTERNAL": "1",
            "RINGFLOW_SECRET": spec.secret,
            "RINGFLOW_JOB_ID": spec.job_id,
        }
    )
    return env
