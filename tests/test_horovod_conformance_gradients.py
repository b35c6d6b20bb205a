"""Horovod conformance, gradients: the backward pass of every differentiable collective of
``ringflow.torch`` is Horovod 0.28.1's (horovod/torch/mpi_ops.py), checked at N = 2 and 3
against those formulas computed in numpy; ``RINGFLOW_TORCH_GRADIENTS=exact`` gives the true
derivatives of the sum of the ranks' losses where Horovod's differ.

Horovod's backward passes: allreduce -> the same allreduce (op, prescale, postscale) of the
output gradients; allgather -> this rank's rows of their Average allreduce; broadcast -> their
Average allreduce, times 0 off the root; alltoall -> their alltoall back; reducescatter -> their
allgather, times the set size for Sum (not divided for Average), times prescale, times
postscale.

Inputs and output gradients are small integers (float64, or float32 where the rounding of
Average's 1/N is checked), so every sum is exact in any order: the checks are bit for bit.
Min/Max/Product's true derivatives divide by tie counts: within 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ringflow.torch as hvd  # noqa: E402
from tests import reference as ref  # noqa: E402
from tests.conformance import WORLD, assert_bitwise, env, my_rows  # noqa: E402

OPS = ("Sum", "Average", "Min", "Max", "Product")
SCALES = ((1.0, 1.0), (2.0, 0.5))


def _ints(seed, tag, rank, shape, dtype=np.float64):
    return ref.rng(ref.seed_of(seed, tag), rank).integers(-5, 6, size=shape).astype(dtype)


def _w(seed, key, i, rank, shape, dtype=np.float64):
    """The output gradient rank gives output i of case key (an inf in broadcast's, on rank 0)."""
    w = _ints(seed, (key, "w", i), rank, shape, dtype)
    if key[0] == "broadcast" and rank == 0:
        w[0] = np.inf  # Horovod's `*= 0` off the root turns it into NaN there
    return w


def _cases(n, me, splits):
    """(key, function of the inputs, input shapes, dtype) of every case."""
    cases = []
    for op in OPS:
        for pre, post in SCALES:
            kw = {"op": getattr(hvd, op), "prescale_factor": pre, "postscale_factor": post}
            cases.append(
                (("allreduce", op, pre, post), lambda x, kw=kw: hvd.allreduce(x, **kw), [(5,)])
            )
            cases.append(
                (
                    ("reducescatter", op, pre, post),
                    lambda x, kw=kw: hvd.reducescatter(x, **kw),
                    [(7, 2)],
                )
            )
    for op in ("Average", "Max"):
        kw = {"op": getattr(hvd, op), "prescale_factor": 2.0, "postscale_factor": 0.5}
        cases.append(
            (
                ("grouped_allreduce", op),
                lambda a, b, kw=kw: hvd.grouped_allreduce([a, b], **kw),
                [(3,), (2, 2)],
            )
        )
    kw = {"op": hvd.Sum, "prescale_factor": 2.0, "postscale_factor": 0.5}
    cases += [
        (
            ("grouped_reducescatter",),
            lambda a, b: hvd.grouped_reducescatter([a, b], **kw),
            [(5,), (4, 2)],
        ),
        (("allgather",), hvd.allgather, [(me + 1, 2)]),
        (
            ("grouped_allgather",),
            lambda a, b: hvd.grouped_allgather([a, b]),
            [(me + 1,), (2 * me, 3)],
        ),
        (("broadcast",), lambda x: hvd.broadcast(x, n - 1), [(4,)]),
        (("alltoall",), lambda x: hvd.alltoall(x, splits=splits)[0], [(sum(splits), 2)]),
    ]
    return cases


def _grads(seed, mode):
    """x.grad of every case's inputs for loss = sum_i <w_i, output_i> (w: rank-specific)."""
    n, me, res = hvd.size(), hvd.rank(), {}
    splits = [(me + d) % 3 for d in range(n)]
    with env(RINGFLOW_TORCH_GRADIENTS=mode):
        for key, fn, shapes in _cases(n, me, splits):
            for dtype in (np.float64, np.float32):
                if dtype == np.float32 and key[0] not in ("allreduce", "allgather", "broadcast"):
                    continue
                xs = [
                    torch.tensor(_ints(seed, (key, i), me, s, dtype), requires_grad=True)
                    for i, s in enumerate(shapes)
                ]
                outs = fn(*xs)
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                loss = sum(
                    (o * torch.from_numpy(_w(seed, key, i, me, tuple(o.shape), dtype))).sum()
                    for i, o in enumerate(outs)
                )
                loss.backward()
                res[(*key, np.dtype(dtype).name)] = [x.grad.numpy().copy() for x in xs]
    return res


def _true_grad(xs, g_total, op, rank):
    """d/dx_rank of <g_total, reduce(xs)> by hand (prescale = postscale = 1)."""
    stack = np.stack(xs)
    if op == "Product":
        return g_total * np.prod(np.delete(stack, rank, axis=0), axis=0)
    target = stack.min(0) if op == "Min" else stack.max(0)
    ties = (stack == target).sum(0)
    return np.where(stack[rank] == target, g_total / ties, 0.0)


def _expected(seed, n, key, rank, dtype, mode):
    """The gradients Horovod's backward computes (mode "horovod") or the true ones ("exact");
    None where a case is checked approximately (true Min/Max/Product)."""
    kind = key[0]

    def ws(i, shape_of):
        return [_w(seed, key, i, r, shape_of(r), dtype) for r in range(n)]

    def xs(i, shape):
        return [_ints(seed, (key, i), r, shape, dtype) for r in range(n)]

    if kind == "allreduce":
        _, op, pre, post = key
        g = ws(0, lambda r: (5,))
        if mode == "exact" and op not in ("Sum", "Average"):
            total = ref.allreduce_exact(g, "Sum")
            return [_true_grad(xs(0, (5,)), total, op, rank)] if pre == post == 1.0 else None
        return [ref.allreduce_exact(g, op, pre, post)]
    if kind == "reducescatter":
        _, op, pre, post = key
        rows = [my_rows(np.zeros(7), n, r).shape[0] for r in range(n)]
        full = np.concatenate(ws(0, lambda r: (rows[r], 2)))
        if mode == "horovod":
            full = full * n if op == "Sum" else full
            return [full * pre * post]
        if op in ("Sum", "Average"):
            return [(full / n if op == "Average" else full) * (pre * post)]
        return [_true_grad(xs(0, (7, 2)), full, op, rank)] if pre == post == 1.0 else None
    if kind == "grouped_allreduce":
        op, want = key[1], []
        for i, s in enumerate([(3,), (2, 2)]):
            g = ws(i, lambda r, s=s: s)
            if mode == "exact" and op == "Max":  # post * max(pre * x): pre * post * max's
                total = ref.allreduce_exact(g, "Sum")
                want.append(_true_grad(xs(i, s), total, op, rank) * (2.0 * 0.5))
            else:
                want.append(ref.allreduce_exact(g, op, 2.0, 0.5))
        return want
    if kind == "grouped_reducescatter":
        want = []
        for i, s in enumerate([(5,), (4, 2)]):
            rows = [my_rows(np.zeros(s), n, r).shape for r in range(n)]
            full = np.concatenate(ws(i, lambda r, rows=rows: rows[r]))
            want.append(full * n * 2.0 * 0.5 if mode == "horovod" else full * (2.0 * 0.5))
        return want
    if kind == "allgather":
        total = ref.allreduce_exact(ws(0, lambda r: (n * (n + 1) // 2, 2)), "Average")
        start = rank * (rank + 1) // 2
        return [total[start : start + rank + 1]]
    if kind == "grouped_allgather":
        a = ref.allreduce_exact(ws(0, lambda r: (n * (n + 1) // 2,)), "Average")
        b = ref.allreduce_exact(ws(1, lambda r: (n * (n - 1), 3)), "Average")
        start = rank * (rank + 1) // 2
        return [a[start : start + rank + 1], b[rank * (rank - 1) : rank * (rank + 1)]]
    if kind == "broadcast":
        g = ref.allreduce_exact(ws(0, lambda r: (4,)), "Average")
        if rank == n - 1:
            return [g]
        with np.errstate(invalid="ignore"):
            return [np.zeros_like(g) if mode == "exact" else g * dtype(0)]
    assert kind == "alltoall", key
    splits = [[(r + d) % 3 for d in range(n)] for r in range(n)]
    parts = []
    for dest in range(n):
        received = sum(splits[src][dest] for src in range(n))
        offset = sum(splits[src][dest] for src in range(rank))
        parts.append(
            _w(seed, key, 0, dest, (received, 2), dtype)[offset : offset + splits[rank][dest]]
        )
    return [np.concatenate(parts)]


@pytest.mark.parametrize("mode", ["horovod", "exact"])
@pytest.mark.parametrize("n", WORLD)
def test_gradients(pools, n, mode):
    seed = ref.seed_of("conformance gradients", n)
    results = pools.call(n, _grads, seed, mode)
    for rank, got in enumerate(results):
        for full_key, grads in got.items():
            key, dtype = full_key[:-1], np.dtype(full_key[-1]).type
            want = _expected(seed, n, key, rank, dtype, mode)
            context = f"rank {rank} of {n}, {mode} gradients, {full_key}"
            if want is None:  # true Min/Max/Product derivative with scaling: not checked here
                continue
            assert len(grads) == len(want), context
            for i, (g, w) in enumerate(zip(grads, want)):
                w = np.asarray(w, dtype=dtype)
                exact = not (mode == "exact" and key[1:2] and key[1] in ("Min", "Max", "Product"))
                if exact:
                    assert_bitwise(g, w, f"{context}, input {i}")
                else:
                    np.testing.assert_allclose(g, w, rtol=1e-12, atol=0, err_msg=context)


def test_float32_average_gradient_is_horovods_rounding():
    """The float32 data above separates Horovod's sum * float32(1/3) from sum / 3."""
    n = 3
    seed = ref.seed_of("conformance gradients", n)
    key = ("allgather",)
    ws = [_w(seed, key, 0, r, (n * (n + 1) // 2, 2), np.float32) for r in range(n)]
    total = np.sum(ws, axis=0, dtype=np.float32)
    assert np.any(total * np.float32(1 / 3) != total / np.float32(3)), "no rounding difference"
