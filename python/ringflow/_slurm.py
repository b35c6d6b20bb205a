"""Slurm: this task's place in its job step, and where the step's store is.

Only a job *step* (``srun``, or the tasks ``sbatch`` starts through ``srun``) describes a set of
ranks: a batch script itself also carries ``SLURM_PROCID`` and ``SLURM_NTASKS``, but there they
describe the allocation, not running processes. So the rank variables count only when
``SLURM_STEP_NUM_TASKS`` is set.

=========================  ===================================================================
variable                   used as
=========================  ===================================================================
SLURM_PROCID               rank
SLURM_STEP_NUM_TASKS       size
SLURM_LOCALID              local_rank
SLURM_STEP_TASKS_PER_NODE  local_size, with this node's place in SLURM_STEP_NODELIST
SLURM_STEP_NODELIST        store address: the step's first node (rank 0 runs there)
SLURM_JOB_ID, SLURM_STEP_ID  store port: 20000 + (31 * job + step) % 10000
=========================  ===================================================================

``RINGFLOW_STORE_ADDR`` / ``MASTER_ADDR`` and ``RINGFLOW_STORE_PORT`` / ``MASTER_PORT`` still win.
A step on one node uses 127.0.0.1. On several nodes the first node's name is resolved; where it
does not resolve (or resolves to a loopback address, as Debian's own-hostname entry does), the
node's ``NodeAddr`` comes from ``scontrol show node``.

Pure Python: this module never imports ``_core``.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["SlurmStep", "parse_nodelist", "parse_tasks_per_node", "step", "store_port"]

_BRACKET = re.compile(r"\[([^\]]*)\]")
_TASKS = re.compile(r"\s*([0-9]+)\s*(?:\(x([0-9]+)\))?\s*")


@dataclass(frozen=True)
class SlurmStep:
    """What the environment says about this task of a Slurm step."""

    rank: int
    size: int
    local_rank: int | None
    local_size: int | None
    nodes: tuple[str, ...]  # the step's nodes, in rank order (rank 0 runs on nodes[0])
    job_id: int | None
    step_id: int | None


def parse_nodelist(text: str) -> list[str]:
    """Expand Slurm's compressed host list: ``n[2-3,5]`` -> n2, n3, n5; ``a[01-02]b`` -> a01b, a02b."""
    names: list[str] = []
    for item in _split_top_level(text):
        names.extend(_expand(item, text))
    return names


def parse_tasks_per_node(text: str) -> list[int]:
    """Expand ``2(x2),1`` -> [2, 2, 1] (SLURM_STEP_TASKS_PER_NODE)."""
    counts: list[int] = []
    for item in text.split(","):
        match = _TASKS.fullmatch(item)
        if not match:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE={text!r}: cannot read {item!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"SLURM_STEP_NODELIST={text!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"SLURM_STEP_NODELIST={text!r}: unbalanced brackets")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand(item: str, whole: str) -> list[str]:
    match = _BRACKET.search(item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    rest = _expand(tail, whole)  # more bracket groups: a cartesian product, first group slowest
    names = []
    for part in match.group(1).split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"SLURM_STEP_NODELIST={whole!r}: cannot read the range {part!r}")
        width = len(low)  # zero padding: a[01-02] -> a01, a02
        for number in range(int(low), int(high or low) + 1):
            names.extend(f"{head}{number:0{width}d}{suffix}" for suffix in rest)
    return names


def step(env: Mapping[str, str]) -> SlurmStep | None:
    """This task's step, or None outside a step (no SLURM_STEP_NUM_TASKS)."""

    def integer(name: str) -> int | None:
        value = (env.get(name) or "").strip()
        if not value:
            return None
        if not value.isdigit():
            raise ValueError(f"{name}={env.get(name)!r} is not a non-negative integer")
        return int(value)

    size = integer("SLURM_STEP_NUM_TASKS")
    if size is None:
        return None
    rank = integer("SLURM_PROCID")
    if rank is None:
        raise ValueError(f"SLURM_STEP_NUM_TASKS={size} is set but SLURM_PROCID is not")
    if size < 1 or rank >= size:
        raise ValueError(f"SLURM_PROCID={rank} must be < SLURM_STEP_NUM_TASKS={size}")
    nodes = tuple(parse_nodelist(env.get("SLURM_STEP_NODELIST") or ""))
    local_size = None
    tasks = env.get("SLURM_STEP_TASKS_PER_NODE")
    if tasks and nodes:
        counts = parse_tasks_per_node(tasks)
        node = _node_index(env, nodes)
        if len(counts) == len(nodes) and node is not None:
            local_size = counts[node]
    return SlurmStep(
        rank=rank,
        size=size,
        local_rank=integer("SLURM_LOCALID"),
        local_size=local_size,
        nodes=nodes,
        job_id=integer("SLURM_JOB_ID"),
        step_id=integer("SLURM_STEP_ID"),
    )


def _node_index(env: Mapping[str, str], nodes: tuple[str, ...]) -> int | None:
    name = env.get("SLURMD_NODENAME")
    if name in nodes:
        return nodes.index(name)
    node_id = (env.get("SLURM_NODEID") or "").strip()
    return int(node_id) if node_id.isdigit() and int(node_id) < len(nodes) else None


def store_port(job_id: int | None, step_id: int | None) -> int:
    """A port every task of the step computes alike, different for the job's next step."""
    return 20000 + (31 * (job_id or 0) + (step_id or 0)) % 10000


def store_host(task: SlurmStep) -> str:
    """The address of the node that runs rank 0."""
    if not task.nodes:
        raise ValueError(
            f"a Slurm step of {task.size} tasks without SLURM_STEP_NODELIST has no store "
            "address: set RINGFLOW_STORE_ADDR or MASTER_ADDR"
        )
    if len(set(task.nodes)) == 1:
        return "127.0.0.1"
    first = task.nodes[0]
    try:
        address = socket.getaddrinfo(first, None, socket.AF_INET)[0][4][0]
        if not ipaddress.ip_address(address).is_loopback:
            return str(address)
    except OSError:
        pass
    return _node_addr(first)


def _node_addr(node: str) -> str:
    if shutil.which("scontrol") is None:
        raise ValueError(
            f"cannot find the address of node {node!r} (rank 0's): it does not resolve and "
            "scontrol is not on PATH; set RINGFLOW_STORE_ADDR"
        )
    done = subprocess.run(
        ["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=30
    )
    match = re.search(r"\bNodeAddr=(\S+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise ValueError(
            f"cannot find the address of node {node!r} (rank 0's): `scontrol show node` says "
            f"{(done.stderr or done.stdout).strip()!r}; set RINGFLOW_STORE_ADDR"
        )
    return match.group(1)
