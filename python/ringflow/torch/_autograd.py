"""Differentiable collectives: the gradient of a collective is a collective of the gradients.

Every rank must run backward through the same collectives in the same order (as forward). By
default the backward passes are Horovod 0.28.1's (horovod/torch/mpi_ops.py), value for value:

- allreduce, every op: the same allreduce of the output gradients (same op, prescale_factor,
  postscale_factor and process set; grouped: one grouped allreduce). For Min, Max and Product
  that is not their derivative.
- allgather: this rank's rows of the Average allreduce of the output gradients.
- broadcast: the Average allreduce of the output gradients, multiplied by 0 off the root (so an
  inf or NaN gradient gives NaN there, as Horovod's ``*= 0`` does).
- alltoall: the alltoall of the output gradients, back along the received splits.
- reducescatter: the allgather of the output gradients, multiplied by the set size for Sum (and
  not divided for Average), then by prescale_factor, then by postscale_factor.

``RINGFLOW_TORCH_GRADIENTS=exact`` (read when the collective runs; set it alike on every rank)
gives instead the derivatives of the sum of every rank's loss where Horovod's differ: allreduce
and reducescatter with Min, Max or Product get their true derivative (from an allgather of
every rank's input; ties of Min/Max share the gradient evenly, like torch.amin/amax);
reducescatter's gradient is the allgather times prescale * postscale, divided by the set size
for Average; broadcast's is exactly zero off the root.
"""

from __future__ import annotations

import os

import torch

from ringflow import _core
from ringflow._process_sets import set_id
from ringflow._state import engine
from ringflow.torch import _ops

_R = _core.ReduceOp
_LINEAR = (_R.Sum, _R.Average)
_REDUCERS = {_R.Min: torch.amin, _R.Max: torch.amax, _R.Product: torch.prod}
_MODES = ("horovod", "exact")


def exact_gradients() -> bool:
    """Whether RINGFLOW_TORCH_GRADIENTS asks for the exact derivatives (default: Horovod's)."""
    mode = os.environ.get("RINGFLOW_TORCH_GRADIENTS", "horovod") or "horovod"
    if mode not in _MODES:
        raise ValueError(f"RINGFLOW_TORCH_GRADIENTS={mode} is not one of {', '.join(_MODES)}")
    return mode == "exact"


def needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )


def _set_rank(ps) -> int:
    eng = engine()
    ranks = eng.process_set_ranks(set_id(ps))
    return ranks.index(eng.rank) if eng.rank in ranks else 0


def _set_size(ps) -> int:
    return len(engine().process_set_ranks(set_id(ps)))


def _reduction_grad(x, total_grad, op, pre, post, ps) -> torch.Tensor:
    """d/dx of <total_grad, post * reduce over ranks of (pre * x_r)>, with the reduction redone
    locally from every rank's x (an allgather), so autograd gives the exact derivative."""
    stack = _ops.allgather([x.detach().unsqueeze(0)], None, ps, sync=True)
    with torch.enable_grad():
        stack = stack.to(total_grad.dtype).requires_grad_()
        reduced = _REDUCERS[op](stack * pre, dim=0) * post
        (grad,) = torch.autograd.grad(reduced, stack, total_grad)
    return grad[_set_rank(ps)]


# -- allreduce -------------------------------------------------------------------------------


class _Allreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grouped, op, name, pre, post, ps, *tensors):
        ctx.exact = op not in _LINEAR and exact_gradients()
        ctx.args = (grouped, op, pre, post, ps)
        if ctx.exact:
            ctx.save_for_backward(*tensors)
        out = _ops.allreduce(
            list(tensors), op, name, pre, post, ps, in_place=False, sync=True, grouped=grouped
        )
        return tuple(out) if grouped else out

    @staticmethod
    def backward(ctx, *grads):
        grouped, op, pre, post, ps = ctx.args
        grads = [g.contiguous() for g in grads]
        if not ctx.exact:  # Horovod: the same allreduce of the gradients
            out = allreduce(grads, op, None, pre, post, ps, grouped=grouped)
        else:
            totals = allreduce(grads, _R.Sum, None, 1.0, 1.0, ps, grouped=grouped)
            saved = ctx.saved_tensors
            out = [_reduction_grad(x, g, op, pre, post, ps) for x, g in zip(saved, totals)]
        return (None,) * 6 + tuple(out)


def allreduce(tensors: list, op, name, pre, post, ps, *, grouped: bool) -> list[torch.Tensor]:
    """Allreduce into new tensors, recorded for autograd when an input requires grad."""
    if needs_grad(tensors):
        out = _Allreduce.apply(grouped, op, name, pre, post, ps, *tensors)
        return list(out) if grouped else [out]
    out = _ops.allreduce(
        tensors, op, name, pre, post, ps, in_place=False, sync=True, grouped=grouped
    )
    return out if grouped else [out]


# -- allgather -------------------------------------------------------------------------------


class _Allgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grouped, name, ps, *tensors):
        ctx.args = (grouped, ps)
        ctx.rows = [t.shape[0] if t.dim() else 0 for t in tensors]
        out = _ops.allgather(list(tensors), name, ps, sync=True, grouped=grouped)
        return tuple(out) if grouped else out

    @staticmethod
    def backward(ctx, *grads):
        grouped, ps = ctx.args
        reduced = allreduce(
            [g.contiguous() for g in grads], _R.Average, None, 1.0, 1.0, ps, grouped=grouped
        )
        rows = _ops.allgather([torch.tensor([ctx.rows], dtype=torch.int64)], None, ps, sync=True)
        offsets = rows[: _set_rank(ps)].sum(0).tolist()
        out = [g.narrow(0, o, r) for g, o, r in zip(reduced, offsets, ctx.rows)]
        return (None,) * 3 + tuple(out)


def allgather(tensors: list, name, ps, *, grouped: bool) -> list[torch.Tensor]:
    if needs_grad(tensors):
        out = _Allgather.apply(grouped, name, ps, *tensors)
        return list(out) if grouped else [out]
    out = _ops.allgather(tensors, name, ps, sync=True, grouped=grouped)
    return out if grouped else [out]


# -- broadcast -------------------------------------------------------------------------------


class _Broadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank, name, ps):
        ctx.args = (root_rank, ps, exact_gradients())
        return _ops.broadcast(tensor, root_rank, name, ps, in_place=False, sync=True)

    @staticmethod
    def backward(ctx, grad):
        root_rank, ps, exact = ctx.args
        (reduced,) = allreduce([grad.contiguous()], _R.Average, None, 1.0, 1.0, ps, grouped=False)
        if engine().rank != root_rank:
            reduced = torch.zeros_like(reduced) if exact else reduced * 0
        return reduced, None, None, None


def broadcast(tensor, root_rank: int, name, ps) -> torch.Tensor:
    if needs_grad([tensor]):
        return _Broadcast.apply(tensor, root_rank, name, ps)
    return _ops.broadcast(tensor, root_rank, name, ps, in_place=False, sync=True)


# -- alltoall --------------------------------------------------------------------------------


class _Alltoall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, splits, name, ps):
        out, received = _ops.alltoall(tensor, splits, name, ps, sync=True)
        ctx.args = (received, ps)
        ctx.mark_non_differentiable(received)
        return out, received

    @staticmethod
    def backward(ctx, grad, _received_grad):
        received, ps = ctx.args
        back, _ = alltoall(grad.contiguous(), received, None, ps)
        return back, None, None, None


def alltoall(tensor, splits, name, ps) -> tuple[torch.Tensor, torch.Tensor]:
    if needs_grad([tensor]):
        return _Alltoall.apply(tensor, splits, name, ps)
    return _ops.alltoall(tensor, splits, name, ps, sync=True)


# -- reducescatter ---------------------------------------------------------------------------


def _horovod_reducescatter_grads(grads: list, op, pre, post, ps) -> list[torch.Tensor]:
    """Horovod's scaling of reducescatter's output gradients, step by step as it rounds:
    times the set size for Sum, then times prescale, then times postscale."""
    if op == _R.Sum:
        size = _set_size(ps)
        grads = [g * size for g in grads]
    if pre != 1.0:
        grads = [g * pre for g in grads]
    if post != 1.0:
        grads = [g * post for g in grads]
    return grads


class _Reducescatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grouped, op, name, pre, post, ps, *tensors):
        ctx.exact = exact_gradients()
        ctx.args = (grouped, op, pre, post, ps)
        if ctx.exact and op not in _LINEAR:
            ctx.save_for_backward(*tensors)
        out = _ops.reducescatter(list(tensors), op, name, pre, post, ps, sync=True, grouped=grouped)
        return tuple(out) if grouped else out

    @staticmethod
    def backward(ctx, *grads):
        grouped, op, pre, post, ps = ctx.args
        grads = [g.contiguous() for g in grads]
        if not ctx.exact:
            scaled = _horovod_reducescatter_grads(grads, op, pre, post, ps)
            out = allgather(scaled, None, ps, grouped=grouped)
        elif op in _LINEAR:
            out = allgather(grads, None, ps, grouped=grouped)
            if op == _R.Average:
                out = [g / _set_size(ps) for g in out]
            if pre * post != 1.0:
                out = [g * (pre * post) for g in out]
        else:
            full = allgather(grads, None, ps, grouped=grouped)
            saved = ctx.saved_tensors
            out = [_reduction_grad(x, g, op, pre, post, ps) for x, g in zip(saved, full)]
        return (None,) * 6 + tuple(out)


def reducescatter(tensors: list, op, name, pre, post, ps, *, grouped: bool) -> list[torch.Tensor]:
    if needs_grad(tensors):
        out = _Reducescatter.apply(grouped, op, name, pre, post, ps, *tensors)
        return list(out) if grouped else [out]
    out = _ops.reducescatter(tensors, op, name, pre, post, ps, sync=True, grouped=grouped)
    return out if grouped else [out]
