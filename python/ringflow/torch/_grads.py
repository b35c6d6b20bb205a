"""DistributedOptimizer's bookkeeping of parameters: their names (checked as Horovod checks
``named_parameters``), the buckets they are reduced in (``groups``), and the gradients that
travel for them (zeros for a gradient this rank did not compute) and come back."""

from __future__ import annotations

import torch


def split(items: list, n: int) -> list[list]:
    """items in n contiguous chunks whose lengths differ by at most one (Horovod's split_list)."""
    small, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + small + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return [c for c in chunks if c]


def names(named_parameters, param_groups: list[dict]) -> dict:
    """parameter -> name: from named_parameters (checked as Horovod checks them) or by order."""
    positions = [
        (g, i, p) for g, group in enumerate(param_groups) for i, p in enumerate(group["params"])
    ]
    if named_parameters is None:
        return {p: f"noname.{n}" for n, (_, _, p) in enumerate(positions)}
    named = list(named_parameters)
    if any(not isinstance(item, tuple) or len(item) != 2 for item in named):
        raise ValueError(
            "named_parameters should be a sequence of tuples (name, parameter), usually "
            "produced by model.named_parameters()."
        )
    seen: set[str] = set()
    dups: set[str] = set()
    for name, _ in named:
        (dups if name in seen else seen).add(name)
    if dups:
        raise ValueError(
            "Parameter names in named_parameters must be unique. Found duplicates: "
            + ", ".join(sorted(dups))
        )
    names = {p: name for name, p in named}
    missing = [
        f"param group {g} index {i} (shape {list(p.shape)})"
        for g, i, p in positions
        if p not in names
    ]
    if missing:
        raise ValueError(
            "named_parameters was specified, but one or more model parameters were not named: "
            + "; ".join(missing)
        )
    return names


def buckets(groups, params: list) -> list[tuple]:
    """The allreduce units: the groups (Horovod's validation and forms), the rest one each."""
    if groups is None:
        return [(p,) for p in params]
    if isinstance(groups, bool) or not (
        isinstance(groups, list) or (isinstance(groups, int) and groups > 0)
    ):
        raise ValueError(
            "groups should be a non-negative integer or a list of list of torch.Tensor."
        )
    if isinstance(groups, int):
        chunks = split([p for p in params if p.requires_grad], groups)
    else:
        known = set(params)
        chunks, seen = [], set()
        for group in groups:
            chunk = []
            for p in group:
                if not isinstance(p, torch.Tensor):
                    raise ValueError("groups must consist of torch.Tensor.")
                if p in seen:
                    raise ValueError("A parameter can only appear once in groups.")
                seen.add(p)
                if p in known:  # like Horovod, tensors the optimizer lacks are ignored
                    chunk.append(p)
            if chunk:
                chunks.append(chunk)
    grouped = {p for chunk in chunks for p in chunk}
    return [tuple(c) for c in chunks] + [(p,) for p in params if p not in grouped]


def zeros(p: torch.Tensor, sparse_dim: int | None) -> torch.Tensor:
    """A zero gradient for p: dense, or an empty sparse one of the layout p's gradients had."""
    if sparse_dim is None:
        return torch.zeros_like(p)
    indices = torch.empty(sparse_dim, 0, dtype=torch.int64)
    values = torch.empty(0, *p.shape[sparse_dim:], dtype=p.dtype)
    return torch.sparse_coo_tensor(indices, values, p.shape)


def write_grad(p: torch.Tensor, out: torch.Tensor, sparse: bool) -> None:
    """Put an allreduce result into p.grad (in place when it is not already there)."""
    if sparse:
        p.grad = out if out.is_sparse else out.to_sparse()
    elif p.grad is None or p.grad.is_sparse:
        p.grad = out
    elif out.data_ptr() != p.grad.data_ptr():
        p.grad.copy_(out)
