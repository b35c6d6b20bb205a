"""Gradients of ringflow.torch's differentiable collectives, against the matching collective
computed by hand in numpy (Horovod's conventions, see ringflow/torch/_autograd.py).

Inputs and output gradients are small integers in float64, so sums, products and the /N of
Average come out the same in any order: checked exactly. Min/Max/Product gradients divide by tie
counts in another order than numpy: within 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ringflow.torch as hvd  # noqa: E402
from tests import reference as ref  # noqa: E402

OPS = ("Sum", "Average", "Min", "Max", "Product")


def _ints(seed, tag, rank, shape):
    """Integer-valued float64: every sum and product below is exact."""
    return ref.rng(ref.seed_of(seed, tag), rank).integers(-5, 6, size=shape).astype(np.float64)


def _grads(seed):
    """Gradients of sum(w_r * collective(x)) for every differentiable collective, with w_r a
    rank-specific integer tensor (the output gradient)."""
    n, me, res = hvd.size(), hvd.rank(), {}

    def run(key, fn, *shapes, out_shape=None):
        xs = [
            torch.tensor(_ints(seed, (key, i), me, s), requires_grad=True)
            for i, s in enumerate(shapes)
        ]
        outs = fn(*xs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        loss = sum(
            (o * torch.tensor(_ints(seed, (key, "w", i), me, o.shape))).sum()
            for i, o in enumerate(outs)
        )
        loss.backward()
        res[key] = [x.grad.numpy().copy() for x in xs]

    for op in OPS:
        run(("allreduce", op), lambda x, op=op: hvd.allreduce(x, op=getattr(hvd, op)), (5,))
        run(
            ("reducescatter", op),
            lambda x, op=op: hvd.reducescatter(x, op=getattr(hvd, op)),
            (7, 2),
        )
    run(
        ("allreduce", "scaled"),
        lambda x: hvd.allreduce(x, op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.5),
        (5,),
    )
    run(
        ("grouped_allreduce",),
        lambda a, b: hvd.grouped_allreduce([a, b], op=hvd.Average),
        (3,),
        (2, 2),
    )
    run(("allgather",), hvd.allgather, (me + 1, 2))
    run(("grouped_allgather",), lambda a, b: hvd.grouped_allgather([a, b]), (me + 1,), (2 * me, 3))
    run(("broadcast",), lambda x: hvd.broadcast(x, n - 1), (4,))
    splits = [(me + d) % 3 for d in range(n)]
    run(("alltoall",), lambda x: hvd.alltoall(x, splits=splits)[0], (sum(splits), 2))
    run(
        ("grouped_reducescatter",),
        lambda a, b: hvd.grouped_reducescatter([a, b], op=hvd.Sum),
        (5,),
        (4, 2),
    )
    return res


def _reduction_grad(xs, g_total, op, rank):
    """d/dx_rank of <g_total, reduce(xs)> by hand."""
    stack = np.stack(xs)
    if op == "Product":
        others = np.prod(np.delete(stack, rank, axis=0), axis=0)
        return g_total * others
    target = stack.min(0) if op == "Min" else stack.max(0)
    ties = (stack == target).sum(0)
    return np.where(stack[rank] == target, g_total / ties, 0.0)


def test_autograd(pools):
    n = 3
    seed = ref.seed_of("torch autograd")
    results = pools.call(n, _grads, seed)

    def x(key, i, r, shape):
        return _ints(seed, (key, i), r, shape)

    def w(key, i, r, shape):
        return _ints(seed, (key, "w", i), r, shape)

    def check(key, rank, want, exact=True):
        for i, expected in enumerate(want):
            got = results[rank][key][i]
            context = f"rank {rank}, gradient of {key} input {i}"
            if exact:
                ref.assert_exact(got, expected, context)
            else:
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, err_msg=context)

    for rank in range(n):
        for op in OPS:
            key = ("allreduce", op)
            g = sum(w(key, 0, r, (5,)) for r in range(n))
            if op in ("Sum", "Average"):
                check(key, rank, [g / n if op == "Average" else g])
            else:
                xs = [x(key, 0, r, (5,)) for r in range(n)]
                check(key, rank, [_reduction_grad(xs, g, op, rank)], exact=False)
            key = ("reducescatter", op)
            blocks = [np.array_split(np.zeros((7, 2)), n)[r].shape for r in range(n)]
            g = np.concatenate([w(key, 0, r, blocks[r]) for r in range(n)])
            if op in ("Sum", "Average"):
                check(key, rank, [g / n if op == "Average" else g])
            else:
                xs = [x(key, 0, r, (7, 2)) for r in range(n)]
                check(key, rank, [_reduction_grad(xs, g, op, rank)], exact=False)
        key = ("allreduce", "scaled")
        check(key, rank, [sum(w(key, 0, r, (5,)) for r in range(n)) * 2.0 * 0.5])
        key = ("grouped_allreduce",)
        check(
            key,
            rank,
            [sum(w(key, i, r, s) for r in range(n)) / n for i, s in enumerate([(3,), (2, 2)])],
        )
        # allgather: this rank's rows of the Average of the output gradients (Horovod).
        key = ("allgather",)
        total = sum(w(key, 0, r, (n * (n + 1) // 2, 2)) for r in range(n)) / n
        start = rank * (rank + 1) // 2
        check(key, rank, [total[start : start + rank + 1]])
        key = ("grouped_allgather",)
        a = sum(w(key, 0, r, (n * (n + 1) // 2,)) for r in range(n)) / n
        b = sum(w(key, 1, r, (n * (n - 1), 3)) for r in range(n)) / n
        check(key, rank, [a[start : start + rank + 1], b[rank * (rank - 1) : rank * (rank + 1)]])
        key = ("broadcast",)
        g = sum(w(key, 0, r, (4,)) for r in range(n)) / n
        check(key, rank, [g if rank == n - 1 else np.zeros(4)])
        # alltoall: the output gradient goes back along the received splits.
        key = ("alltoall",)
        splits = [[(r + d) % 3 for d in range(n)] for r in range(n)]
        parts = []
        for dest in range(n):
            received = sum(splits[src][dest] for src in range(n))
            offset = sum(splits[src][dest] for src in range(rank))
            parts.append(w(key, 0, dest, (received, 2))[offset : offset + splits[rank][dest]])
        check(key, rank, [np.concatenate(parts)])
        key = ("grouped_reducescatter",)
        shapes = [(5,), (4, 2)]
        want = []
        for i, s in enumerate(shapes):
            blocks = [np.array_split(np.zeros(s), n)[r].shape for r in range(n)]
            want.append(np.concatenate([w(key, i, r, blocks[r]) for r in range(n)]))
        check(key, rank, want)
