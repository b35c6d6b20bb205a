"""ringflow.tensorflow gradients and training: every op's gradient by Horovod's rules, eager and
inside tf.function; DistributedGradientTape equal to one process on the concatenated batch;
PartialDistributedGradientTape keeping local gradients local (N = 2 and 3, persistent pools).
The Keras parts are in test_keras.py."""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow") is None:  # found, not imported: TF runs in the ranks
    pytest.skip("tensorflow-cpu is not installed", allow_module_level=True)

from tests import tf_ranks

WORLD = (2, 3)


def _splits(r: int, n: int) -> list[int]:
    return [1 + (r + j) % 2 for j in range(n)]


def _w(r, shape):
    return (np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) % 7) + r


# -- gradients of every op --------------------------------------------------------------------


def _op_gradients(graph):
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    n, me = hvd.size(), hvd.rank()
    total = n * (n + 1) // 2

    def losses():
        x = tf.constant(np.full(4, me + 1.0, np.float32))
        g = tf.constant(np.ones((me + 1, 2), np.float32))
        t = tf.constant(np.ones((sum(_splits(me, n)), 2), np.float32))
        r = tf.constant(np.ones((2 * n + 1, 2), np.float32))
        grads = {}
        cases = {
            **{
                f"allreduce {op}": (x, lambda v, op=op: hvd.allreduce(v, op=getattr(hvd, op)), (4,))
                for op in ("Sum", "Average", "Max")
            },
            "grouped": (x, lambda v: sum(hvd.grouped_allreduce([v, v * 2], op=hvd.Sum)), (4,)),
            "allgather": (g, hvd.allgather, (total, 2)),
            "grouped_allgather": (g, lambda v: hvd.grouped_allgather([v, v])[1], (total, 2)),
            "broadcast": (x, lambda v: hvd.broadcast(v, 1), (4,)),
            "alltoall": (
                t,
                lambda v: hvd.alltoall(v, splits=_splits(me, n))[0],
                (sum(_splits(r, n)[me] for r in range(n)), 2),
            ),
            **{
                f"reducescatter {op}": (
                    r,
                    lambda v, op=op: hvd.reducescatter(v, op=getattr(hvd, op)),
                    ((2 * n + 1) // n + (1 if me < (2 * n + 1) % n else 0), 2),
                )
                for op in ("Sum", "Average")
            },
        }
        for key, (inp, fn, out_shape) in cases.items():
            with tf.GradientTape() as tape:
                tape.watch(inp)
                y = fn(inp)
                loss = tf.reduce_sum(y * tf.constant(_w(me, out_shape)))
            grads[key] = tape.gradient(loss, inp)
        return grads

    out = tf.function(losses)() if graph else losses()
    return {k: tf_ranks.to_np(v) for k, v in out.items()}


def _expected_gradients(n, me):
    total = n * (n + 1) // 2
    ws = [_w(r, (4,)) for r in range(n)]
    exp = {
        "allreduce Sum": sum(ws),
        "allreduce Average": sum(ws) / n,
        "allreduce Max": np.max(ws, axis=0),
        "grouped": sum(ws) * 3,
        "broadcast": sum(ws) / n if me == 1 else np.zeros(4, np.float32),
    }
    start = me * (me + 1) // 2
    gathered = sum(_w(r, (total, 2)) for r in range(n)) / n
    exp["allgather"] = exp["grouped_allgather"] = gathered[start : start + me + 1]
    # alltoall: rank me's rows sent to rank j come back from j's gradient, at j's offset for me
    back = []
    for j in range(n):
        rows_j = sum(_splits(r, n)[j] for r in range(n))
        v = _w(j, (rows_j, 2))
        offset = sum(_splits(r, n)[j] for r in range(me))
        back.append(v[offset : offset + _splits(me, n)[j]])
    exp["alltoall"] = np.concatenate(back)
    blocks = [_w(r, ((2 * n + 1) // n + (1 if r < (2 * n + 1) % n else 0), 2)) for r in range(n)]
    exp["reducescatter Average"] = np.concatenate(blocks)
    exp["reducescatter Sum"] = np.concatenate(blocks) * n
    return exp


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("n", WORLD)
def test_gradients_of_every_op(pools, n, graph):
    for me, got in enumerate(pools.call(n, _op_gradients, graph)):
        for key, want in _expected_gradients(n, me).items():
            np.testing.assert_allclose(got[key], want, rtol=1e-6, err_msg=f"rank {me} {key}")


# -- gradient tapes -------------------------------------------------------------------------

BATCH = 6


def _data(r):
    gen = np.random.default_rng([7, r])
    return (
        gen.standard_normal((BATCH, 5)).astype(np.float32),
        gen.integers(0, 10, BATCH),
        gen.standard_normal((BATCH, 3)).astype(np.float32),
    )


def _model(tf):
    gen = np.random.default_rng(3)
    shapes = {"W1": (5, 4), "b1": (4,), "E": (10, 4), "W2": (4, 3)}
    return {k: tf.Variable(gen.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}


def _loss(tf, m, x, ids, t):
    h = tf.tanh(x @ m["W1"] + m["b1"] + tf.gather(m["E"], ids))
    return tf.reduce_mean(tf.reduce_sum((h @ m["W2"] - t) ** 2, axis=1))


def _tapes():
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    n, me = hvd.size(), hvd.rank()
    m = _model(tf)
    keys = sorted(m)
    variables = [m[k] for k in keys]

    def dense(g):
        return tf_ranks.to_np(tf.convert_to_tensor(g))

    everyone = [_data(r) for r in range(n)]
    x, ids, t = (np.concatenate(parts) for parts in zip(*everyone))
    with tf.GradientTape() as tape:
        loss = _loss(tf, m, x, ids, t)
    out = {"reference": [dense(g) for g in tape.gradient(loss, variables)]}

    def distributed(**options):
        with tf.GradientTape() as tape:
            loss = _loss(tf, m, *everyone[me])
        return hvd.DistributedGradientTape(tape, **options).gradient(loss, variables)

    variants = {
        "default": {},
        "groups=2": {"groups": 2},
        "groups lists": {"groups": [[m["W1"], m["W2"]]]},
        "sparse_as_dense": {"sparse_as_dense": True},
        "predivide": {"gradient_predivide_factor": 2.0},
        "fp16": {"compression": hvd.Compression.fp16},
        "Sum": {"op": hvd.Sum},
    }
    for name, options in variants.items():
        out[f"{name} eager"] = [dense(g) for g in distributed(**options)]
        graph = tf.function(lambda options=options: distributed(**options))()
        out[f"{name} graph"] = [dense(g) for g in graph]
    # the partial tape: W2 stays local (divided by the size unless scale_local_gradients=False)
    with tf.GradientTape() as tape:
        loss = _loss(tf, m, *everyone[me])
    out["local"] = dense(tape.gradient(loss, m["W2"]))

    for scale in (True, False):
        with tf.GradientTape() as tape:
            loss = _loss(tf, m, *everyone[me])
        partial = hvd.PartialDistributedGradientTape(
            tape,
            local_layers=types.SimpleNamespace(trainable_weights=[m["W2"]]),
            scale_local_gradients=scale,
        )
        out[f"partial {scale}"] = [dense(g) for g in partial.gradient(loss, variables)]
    out["keys"] = keys
    return out


@pytest.mark.parametrize("n", WORLD)
def test_tapes_equal_one_process_on_the_whole_batch(pools, n):
    results = pools.call(n, _tapes)
    for me, out in enumerate(results):
        reference = out["reference"]
        w2 = out["keys"].index("W2")
        for key, grads in out.items():
            if key in ("reference", "keys", "local") or key.startswith("partial"):
                continue
            factor = n if key.startswith("Sum") else 1
            rtol = 1e-2 if key.startswith("fp16") else 1e-5
            for i, (g, r) in enumerate(zip(grads, reference)):
                np.testing.assert_allclose(
                    g, r * factor, rtol=rtol, atol=rtol * 1e-1, err_msg=f"rank {me} {key} {i}"
                )
        for scale in (True, False):
            grads = out[f"partial {scale}"]
            local = out["local"] / n if scale else out["local"]
            np.testing.assert_allclose(grads[w2], local, rtol=1e-6)
            for i, (g, r) in enumerate(zip(grads, reference)):
                if i != w2:
                    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    # the local gradients differ between ranks: they were not averaged
    assert not np.allclose(results[0]["partial False"][w2], results[1]["partial False"][w2])
