"""Batch normalization over the batches of every rank: the per-rank batch may be too small for
good statistics, the union of them is not.

Training forward allgathers each rank's (count, mean, sum of squared deviations) per channel and
merges them (Chan et al.; no cancellation as in sum-of-squares), in float64. Backward
allreduces the two per-channel sums the input gradient needs. Weight and bias gradients stay
local, as in torch's SyncBatchNorm: `DistributedOptimizer` averages them. Ranks may bring
different batch sizes. Unlike Horovod's (GPU kernels only), this runs on CPU tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ringflow import _core
from ringflow._process_sets import global_process_set, set_id
from ringflow._state import engine
from ringflow.torch import _ops

__all__ = ["SyncBatchNorm"]


def _channel_shape(x: torch.Tensor) -> list[int]:
    """Shape that broadcasts a per-channel vector against x (channels in dimension 1)."""
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _reduced_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, process_set):
        dims, shape = _reduced_dims(x), _channel_shape(x)
        xd = x.detach().double()
        count = x.numel() // x.shape[1]
        mean = xd.mean(dims) if count else xd.new_zeros(x.shape[1])
        m2 = ((xd - mean.view(shape)) ** 2).sum(dims)
        local = torch.cat([xd.new_tensor([count]), mean, m2]).unsqueeze(0)
        stats = _ops.allgather([local], None, process_set, sync=True)  # (ranks, 1 + 2C)
        counts, means, m2s = stats[:, :1], stats[:, 1 : 1 + x.shape[1]], stats[:, 1 + x.shape[1] :]
        total = counts.sum()
        if total <= 1:
            raise _core.InvalidArgumentError(
                f"rank {engine().rank}: SyncBatchNorm: expected more than 1 value per channel "
                f"over all ranks when training, got {int(total)}"
            )
        mean = (counts * means).sum(0) / total
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / total
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (total / (total - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        xhat = (xd - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.detach().double().view(shape)
        if bias is not None:
            y = y + bias.detach().double().view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.args = (float(total), process_set, bias is not None)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        total, process_set, has_bias = ctx.args
        dims, shape = _reduced_dims(x), _channel_shape(x)
        dyd = dy.double()
        xhat = (x.double() - mean.view(shape)) * invstd.view(shape)
        sum_dy = dyd.sum(dims)
        sum_dy_xhat = (dyd * xhat).sum(dims)
        both = _ops.allreduce(
            [torch.cat([sum_dy, sum_dy_xhat])],
            _core.ReduceOp.Sum,
            None,
            1.0,
            1.0,
            process_set,
            in_place=False,
            sync=True,
        )
        g_dy, g_dy_xhat = both.split(x.shape[1])
        scale = invstd / total
        if weight is not None:
            scale = scale * weight.detach().double()
        dx = scale.view(shape) * (total * dyd - g_dy.view(shape) - xhat * g_dy_xhat.view(shape))
        dweight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        dbias = sum_dy.to(weight.dtype if weight is not None else dy.dtype) if has_bias else None
        return dx.to(x.dtype), dweight, dbias, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the concatenated batch of every rank of
    process_set (Horovod's `SyncBatchNorm`, on CPU). In eval mode with running statistics it
    is a plain local BatchNorm."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_set=global_process_set,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_set = process_set

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch's BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or self.running_mean is None
        if not batch_stats:
            return F.batch_norm(
                input,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.eps,
            )
        running = (None, None) if not self.training else (self.running_mean, self.running_var)
        if len(engine().process_set_ranks(set_id(self.process_set))) == 1:
            return F.batch_norm(input, *running, self.weight, self.bias, True, momentum, self.eps)
        return _SyncBatchNorm.apply(
            input, self.weight, self.bias, *running, momentum, self.eps, self.process_set
        )
