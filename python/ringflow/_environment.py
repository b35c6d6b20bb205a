"""Where is this process in the job? Read it from the environment of whatever started it.

``detect()`` turns the variables that a launcher sets into one `RendezvousConfig`. Launchers are
tried in this order; the first one that is *present* (its rank or size variable is set) wins, and
an incomplete or malformed one is an error rather than a silent fall-through:

============  ===========================================================================
source        variables read
============  ===========================================================================
ringflow      RINGFLOW_RANK, RINGFLOW_SIZE, RINGFLOW_LOCAL_RANK, RINGFLOW_LOCAL_SIZE
torchrun      RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (+ MASTER_ADDR, MASTER_PORT)
openmpi       OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE
slurm         SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, ... (only inside a job step;
              see `ringflow._slurm`)
pmi           PMI_RANK, PMI_SIZE (+ MPI_LOCALRANKID, MPI_LOCALNRANKS as MPICH's Hydra sets)
single        nothing set: rank 0 of 1, no store needed
============  ===========================================================================

Whatever the source, these ``RINGFLOW_*`` variables refine the rendezvous:

- ``RINGFLOW_STORE_ADDR`` / ``RINGFLOW_STORE_PORT``: where the key-value store listens. Without
  them the address is ``MASTER_ADDR`` and the port ``MASTER_PORT + 1`` (torchrun's own TCPStore
  already sits on ``MASTER_PORT``), else 29501. With more than one rank an address is required.
  With one rank and no port given, the port is 0 (rank 0 may bind any free port; nobody else
  needs to find it). Two launchers need neither: under Slurm the store is on the step's first
  node at a port derived from the job and step ids (`ringflow._slurm`); under ``mpirun`` rank 0
  picks the address, a free port, a job id and (when unset) a random secret and broadcasts them
  over MPI (`ringflow._mpi_bootstrap`, needs mpi4py).
- ``RINGFLOW_STORE_EXTERNAL``: ``1`` if the launcher hosts the store (``ringflow run`` does),
  ``0`` (default) if rank 0 hosts it.
- ``RINGFLOW_SECRET``: the job secret for the HMAC handshake (used as UTF-8 bytes). Required
  for a multi-rank job whose store address is not a loopback address. **On loopback, when it is
  unset, the secret is derived from the job id, which anyone on the machine can compute: that
  default only keeps unrelated jobs apart and is not secure.** Use ``ringflow run`` (which makes a
  random secret per job) or set ``RINGFLOW_SECRET`` to the same random value on every rank.
- ``RINGFLOW_JOB_ID``: default ``"{store_addr}:{store_port}"``.
- ``RINGFLOW_TIMEOUT``: seconds every wait may take, default 300.

An empty value counts as unset (``RINGFLOW_SECRET=""`` is rejected instead: it was meant to be
set). Bad values raise `ValueError` naming the variable and its value.

Pure Python: this module never imports ``_core``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ringflow import _slurm

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT_S", "RendezvousConfig", "detect"]

DEFAULT_PORT = 29500 + 1
"""Store port when neither RINGFLOW_STORE_PORT nor MASTER_PORT is set (torchrun's default + 1)."""

DEFAULT_TIMEOUT_S = 300.0
"""Default deadline for every wait, in seconds (RINGFLOW_TIMEOUT)."""

_INSECURE_SECRET_PREFIX = "ringflow-insecure-default-secret:"

_log = logging.getLogger("ringflow")


@dataclass(frozen=True)
class RendezvousConfig:
    """How this process joins its job: who it is, where the store is, and how to authenticate."""

    rank: int
    size: int
    local_rank: int | None  # None: compute from the host identities published in the store
    local_size: int | None  # None: likewise
    store_addr: str
    store_port: int
    store_external: bool  # True: the launcher hosts the store; False: rank 0 hosts it
    secret: bytes = field(repr=False)  # never printed
    job_id: str
    timeout_s: float
    source: str  # "ringflow" | "torchrun" | "openmpi" | "slurm" | "pmi" | "single"

    @property
    def hosts_store(self) -> bool:
        """True if this process must start the store server (rank 0, no external store)."""
        return self.rank == 0 and not self.store_external

    @property
    def secret_is_default(self) -> bool:
        """True if the secret was derived from the job id (RINGFLOW_SECRET unset): not secure."""
        return self.secret.startswith(_INSECURE_SECRET_PREFIX.encode())


@dataclass(frozen=True)
class _Source:
    name: str
    rank: str
    size: str
    local_rank: str | None = None
    local_size: str | None = None


_SOURCES = (
    _Source(
        "ringflow", "RINGFLOW_RANK", "RINGFLOW_SIZE", "RINGFLOW_LOCAL_RANK", "RINGFLOW_LOCAL_SIZE"
    ),
    _Source("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    _Source(
        "openmpi",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    # Read by ringflow._slurm; these names only label its errors.
    _Source("slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", None),
    _Source("pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)

_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")


def detect(environ: Mapping[str, str] | None = None) -> RendezvousConfig:
    """Read this process's place in the job from ``environ`` (default: ``os.environ``).

    Raises `ValueError` naming the variable and its value when something is malformed,
    inconsistent or missing.
    """
    raw = os.environ if environ is None else environ
    source, rank, size, local_rank, local_size = _identity(_Env(raw))
    env = _Env({**raw, **_launcher_settings(_Env(raw), source, rank, size, local_size)})
    store_addr, store_port = _store_address(env, size)
    store_external = _flag(env, "RINGFLOW_STORE_EXTERNAL", default=False)
    job_id = env.get("RINGFLOW_JOB_ID") or f"{store_addr}:{store_port}"
    secret = _secret(env, job_id, size, store_addr)
    timeout_s = _timeout(env)
    return RendezvousConfig(
        rank=rank,
        size=size,
        local_rank=local_rank,
        local_size=local_size,
        store_addr=store_addr,
        store_port=store_port,
        store_external=store_external,
        secret=secret,
        job_id=job_id,
        timeout_s=timeout_s,
        source=source,
    )


class _Env:
    """The environment with empty values treated as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value else None

    def raw(self, name: str) -> str | None:
        return self._environ.get(name)

    def integer(self, name: str, *, minimum: int = 0) -> int | None:
        value = self.get(name)
        if value is None:
            return None
        if not _INT_RE.fullmatch(value):
            raise ValueError(f"{name}={value!r} is not an integer")
        number = int(value)
        if number < minimum:
            raise ValueError(f"{name}={value!r} must be >= {minimum}")
        return number


def _identity(env: _Env) -> tuple[str, int, int, int | None, int | None]:
    """(source, rank, size, local_rank, local_size) from the first launcher that is present."""
    ringflow_local = ("RINGFLOW_LOCAL_RANK", "RINGFLOW_LOCAL_SIZE")
    stray = [name for name in ringflow_local if env.get(name) is not None]
    if stray and env.get("RINGFLOW_RANK") is None and env.get("RINGFLOW_SIZE") is None:
        raise ValueError(
            f"{stray[0]}={env.get(stray[0])!r} is set without RINGFLOW_RANK and RINGFLOW_SIZE; "
            "set all of them or none"
        )
    for src in _SOURCES:
        if src.name == "slurm":
            task = _slurm.step(env._environ)
            if task is None:
                continue  # a batch script or salloc shell: not a set of running ranks
            _check_local(src, task.local_rank, task.local_size, task.size, env)
            return src.name, task.rank, task.size, task.local_rank, task.local_size
        if env.get(src.rank) is None and env.get(src.size) is None:
            continue
        rank = _required_int(env, src.rank, src.size, minimum=0)
        size = _required_int(env, src.size, src.rank, minimum=1)
        if rank >= size:
            raise ValueError(f"{src.rank}={env.get(src.rank)!r} must be < {src.size}={size}")
        local_rank = env.integer(src.local_rank) if src.local_rank else None
        local_size = env.integer(src.local_size, minimum=1) if src.local_size else None
        if src.name == "ringflow" and (local_rank is None) != (local_size is None):
            have, missing = ringflow_local if local_rank is not None else ringflow_local[::-1]
            raise ValueError(f"{have}={env.get(have)!r} is set without {missing}; set both or none")
        _check_local(src, local_rank, local_size, size, env)
        return src.name, rank, size, local_rank, local_size
    return "single", 0, 1, 0, 1


def _launcher_settings(
    env: _Env, source: str, rank: int, size: int, local_size: int | None
) -> dict[str, str]:
    """RINGFLOW_* values a launcher implies where the user set none (theirs always win)."""
    has_addr = env.get("RINGFLOW_STORE_ADDR") or env.get("MASTER_ADDR")
    has_port = env.get("RINGFLOW_STORE_PORT") or env.get("MASTER_PORT")
    settings: dict[str, str] = {}
    if size == 1:
        return settings
    if source == "slurm":
        task = _slurm.step(env._environ)
        assert task is not None
        if not has_addr:
            settings["RINGFLOW_STORE_ADDR"] = _slurm.store_host(task)
        if not has_port:
            settings["RINGFLOW_STORE_PORT"] = str(_slurm.store_port(task.job_id, task.step_id))
    elif source == "openmpi" and not has_addr:
        from ringflow import _mpi_bootstrap  # imports mpi4py: only on this path

        secret_set = env.raw("RINGFLOW_SECRET") is not None
        settings = _mpi_bootstrap.shared_settings(rank, size, local_size == size, secret_set)
        if has_port:  # the user's port, rank 0's address
            settings.pop("RINGFLOW_STORE_PORT")
    return {name: value for name, value in settings.items() if env.get(name) is None}


def _required_int(env: _Env, name: str, partner: str, *, minimum: int) -> int:
    value = env.integer(name, minimum=minimum)
    if value is None:
        raise ValueError(
            f"{partner}={env.get(partner)!r} is set but {name} is not; a launcher sets both"
        )
    return value


def _check_local(
    src: _Source, local_rank: int | None, local_size: int | None, size: int, env: _Env
) -> None:
    if local_size is not None and local_size > size:
        raise ValueError(f"{src.local_size}={env.get(src.local_size)!r} exceeds the size {size}")
    if local_rank is not None and local_size is not None and local_rank >= local_size:
        raise ValueError(
            f"{src.local_rank}={env.get(src.local_rank)!r} must be < {src.local_size}={local_size}"
        )
    if local_rank is not None and local_rank >= size:
        raise ValueError(f"{src.local_rank}={env.get(src.local_rank)!r} must be < size {size}")


def _store_address(env: _Env, size: int) -> tuple[str, int]:
    addr = env.get("RINGFLOW_STORE_ADDR") or env.get("MASTER_ADDR")
    if addr is None:
        if size > 1:
            raise ValueError(
                f"a job of {size} processes needs the store address: "
                "set RINGFLOW_STORE_ADDR or MASTER_ADDR"
            )
        addr = "127.0.0.1"
    port = _port(env, "RINGFLOW_STORE_PORT", offset=0)
    if port is None:
        port = _port(env, "MASTER_PORT", offset=1)
    if port is None:
        port = DEFAULT_PORT if size > 1 else 0
    return addr, port


def _port(env: _Env, name: str, *, offset: int) -> int | None:
    value = env.integer(name, minimum=1)
    if value is None:
        return None
    if value + offset > 65535:
        what = "a TCP port" if offset == 0 else f"a TCP port below 65535 (the store uses +{offset})"
        raise ValueError(f"{name}={env.get(name)!r} is not {what}")
    return value + offset


def _flag(env: _Env, name: str, *, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.strip() in ("0", "1"):
        return value.strip() == "1"
    raise ValueError(f"{name}={value!r} must be 1 or 0")


def _secret(env: _Env, job_id: str, size: int, store_addr: str) -> bytes:
    value = env.raw("RINGFLOW_SECRET")
    if value is not None:
        if not value:
            raise ValueError("RINGFLOW_SECRET='' is empty; set a random value or unset it")
        return value.encode("utf-8")
    if size > 1:
        advice = (
            "launch with `ringflow run` or set RINGFLOW_SECRET to one random value on every rank"
        )
        if not _is_loopback(store_addr):
            # A derived secret is no secret: any host that reaches the store could join the job.
            raise ValueError(
                f"RINGFLOW_SECRET is not set and the store address {store_addr!r} is not a "
                f"loopback address, so other hosts could join this job; {advice}"
            )
        _log.warning(
            "RINGFLOW_SECRET is not set: using a secret derived from the job id, which keeps "
            f"other users of this machine out only by obscurity (not secure); {advice}"
        )
    return (_INSECURE_SECRET_PREFIX + job_id).encode("utf-8")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _timeout(env: _Env) -> float:
    value = env.get("RINGFLOW_TIMEOUT")
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"RINGFLOW_TIMEOUT={value!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"RINGFLOW_TIMEOUT={value!r} must be a positive number of seconds")
    return seconds
