"""ringflow.tensorflow collectives against numpy: every op, eager and inside tf.function, every
dtype Horovod's TF API takes (uint16 too), sizes 0/1/odd/uneven, at N = 2 and 3; IndexedSlices
allreduce equal to the dense one; errors on every rank.

One request per (N, mode) runs the whole matrix inside the ranks (TF is imported once per
persistent pool process); the parent, without TF, rebuilds every rank's input and checks exactly.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow") is None:  # found, not imported: TF runs in the ranks
    pytest.skip("tensorflow-cpu is not installed", allow_module_level=True)

from tests import reference as ref
from tests import tf_ranks

WORLD = (2, 3)
DTYPES = (*ref.INT_DTYPES, "uint16", *ref.FLOAT_DTYPES, "bool")
OPS = ("Sum", "Average", "Min", "Max", "Product")
GRAPH_N3_DTYPES = ("int8", "uint16", "bfloat16", "float32", "bool")


def sizes(n: int, graph: bool = False) -> list[int]:
    """0, 1, odd, not divisible by n; inside tf.function (tracing is the slow part): 0 and
    odd-uneven."""
    return [0, 2 * n + 1] if graph else sorted({0, 1, 7, 2 * n + 1})


def ops_for(dtype_name: str) -> list[str]:
    return [op for op in OPS if ref.valid_reduction(dtype_name, op)]


def red_in(seed, tag, size, op, rank, dtype_name, cols=None):
    shape = (size,) if cols is None else (size, cols)
    return ref.exact_input(ref.seed_of(seed, tag, size, op), rank, shape, dtype_name, op)


def copy_in(seed, tag, shape, rank, dtype_name):
    return ref.bit_patterns(ref.seed_of(seed, tag, shape), rank, shape, dtype_name)


# -- rank side ------------------------------------------------------------------------------


def _inputs(seed, dtype_name, n, me, graph):
    """Every input of the matrix, as numpy arrays, keyed like the results."""
    ins = {}
    for size in sizes(n, graph):
        for op in ops_for(dtype_name):
            ins["a", size, op] = red_in(seed, "a", size, op, me, dtype_name)
            ins["b", size, op] = red_in(seed, "b", size, op, me, dtype_name)
            ins["r", size, op] = red_in(seed, "r", size, op, me, dtype_name, 2)
        ins["g", size] = copy_in(seed, "g", (size + me, 2), me, dtype_name)
        ins["h", size] = copy_in(seed, "h", (size + 2 * me,), me, dtype_name)
        ins["bc", size] = copy_in(seed, "bc", (size,), me, dtype_name)
        ins["t", size] = copy_in(seed, "t", (size, 3), me, dtype_name)
        ins["e", size] = copy_in(seed, "e", (n * size,), me, dtype_name)
        ins["splits", size] = np.array(ref.alltoall_splits(ref.seed_of(seed, size), me, n, size))
    return ins


def _matrix(hvd, tf, ins, dtype_name, n, graph):
    """Every collective on the inputs (tensors); {key: tensor}."""
    out = {}
    scaled = dtype_name in ref.FLOAT_DTYPES
    for size in sizes(n, graph):
        for op in ops_for(dtype_name):
            kw = {"op": getattr(hvd, op)}
            a, b, r = ins["a", size, op], ins["b", size, op], ins["r", size, op]
            out["allreduce", size, op] = hvd.allreduce(a, **kw)
            out["grouped", size, op] = hvd.grouped_allreduce([a, b], **kw)
            out["reducescatter", size, op] = hvd.reducescatter(r, **kw)
            out["grouped_reducescatter", size, op] = hvd.grouped_reducescatter([r, a], **kw)
            if scaled and op in ("Sum", "Average"):
                sc = {"prescale_factor": 0.5, "postscale_factor": 4.0}
                out["allreduce scaled", size, op] = hvd.allreduce(a, **kw, **sc)
                out["reducescatter scaled", size, op] = hvd.reducescatter(r, **kw, **sc)
        out["allgather", size] = hvd.allgather(ins["g", size])
        out["grouped_allgather", size] = hvd.grouped_allgather([ins["g", size], ins["h", size]])
        out["broadcast", size] = hvd.broadcast(ins["bc", size], n - 1)
        out["alltoall", size] = hvd.alltoall(ins["t", size], splits=ins["splits", size])
        out["alltoall even", size] = hvd.alltoall(ins["e", size])
    return out


def _run_matrix(seed, dtype_names, graph):
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    n, me = hvd.size(), hvd.rank()
    results = {}
    for dtype_name in dtype_names:
        ins = {k: tf.constant(v) for k, v in _inputs(seed, dtype_name, n, me, graph).items()}
        fn = tf.function(lambda i, d=dtype_name: _matrix(hvd, tf, i, d, n, True)) if graph else None
        out = fn(ins) if graph else _matrix(hvd, tf, ins, dtype_name, n, False)
        results[dtype_name] = tf.nest.map_structure(tf_ranks.to_np, out)
        if not graph:  # broadcast_ on variables, eager
            v = tf.Variable(ins["bc", 7])
            hvd.broadcast_([v], n - 1)
            results[dtype_name]["broadcast_", 7] = tf_ranks.to_np(v)
    return results


# -- parent side ----------------------------------------------------------------------------


def _expected(seed, dtype_name, n, me, graph):
    all_ins = [_inputs(seed, dtype_name, n, r, graph) for r in range(n)]
    exp = {}
    for size in sizes(n, graph):
        for op in ops_for(dtype_name):

            def red(tag, op=op, size=size, **sc):
                return ref.allreduce_exact([i[tag, size, op] for i in all_ins], op, **sc)

            exp["allreduce", size, op] = red("a")
            exp["grouped", size, op] = [red("a"), red("b")]
            exp["reducescatter", size, op] = ref.reducescatter_block(red("r"), n, me)
            exp["grouped_reducescatter", size, op] = [
                ref.reducescatter_block(red("r"), n, me),
                ref.reducescatter_block(red("a"), n, me),
            ]
            if dtype_name in ref.FLOAT_DTYPES and op in ("Sum", "Average"):
                sc = {"prescale": 0.5, "postscale": 4.0}
                exp["allreduce scaled", size, op] = red("a", **sc)
                exp["reducescatter scaled", size, op] = ref.reducescatter_block(
                    red("r", **sc), n, me
                )
        exp["allgather", size] = np.concatenate([i["g", size] for i in all_ins])
        exp["grouped_allgather", size] = [
            np.concatenate([i["g", size] for i in all_ins]),
            np.concatenate([i["h", size] for i in all_ins]),
        ]
        exp["broadcast", size] = all_ins[n - 1]["bc", size]
        got, received = ref.alltoall_expected(
            [i["t", size] for i in all_ins], [list(i["splits", size]) for i in all_ins], me
        )
        exp["alltoall", size] = (got, received.astype(np.int32))
        even = [i["e", size] for i in all_ins]
        exp["alltoall even", size] = ref.alltoall_expected(even, [[size] * n] * n, me)[0]
    if not graph:
        exp["broadcast_", 7] = all_ins[n - 1]["bc", 7]
    return exp


def _check(got, want, context, bitwise):
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want), context
        for i, (g, w) in enumerate(zip(got, want)):
            _check(g, w, f"{context}[{i}]", bitwise)
    elif bitwise:
        ref.assert_bits_equal(got, want, context)
    else:
        ref.assert_exact(got, want, context)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("n", WORLD)
def test_every_op_every_dtype(pools, n, graph):
    seed = ref.seed_of("tf ops", n)
    # Tracing is the slow part: at N=3 the graph runs a dtype of each kind (all at N=2).
    dtypes = GRAPH_N3_DTYPES if graph and n == 3 else DTYPES
    results = pools.call(n, _run_matrix, seed, dtypes, graph)
    for me, res in enumerate(results):
        for dtype_name in dtypes:
            expected = _expected(seed, dtype_name, n, me, graph)
            got = res[dtype_name]
            assert got.keys() == expected.keys()
            for key, want in expected.items():
                copy = key[0] in ("allgather", "grouped_allgather", "broadcast", "broadcast_")
                copy = copy or key[0].startswith("alltoall")
                _check(got[key], want, f"rank {me} n {n} {dtype_name} {key}", copy)


# -- IndexedSlices, shapes, errors ----------------------------------------------------------


def _sparse(graph):
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    me = hvd.rank()
    values = tf.constant(np.arange(6, dtype=np.float32).reshape(3, 2) + 10 * me)
    indices = tf.constant([me, 4, 1], tf.int64)
    shape = tf.constant([5, 2], tf.int64)

    def run(values):
        s = tf.IndexedSlices(values, indices, shape)
        out = []
        for op in (hvd.Average, hvd.Sum):
            sparse = hvd.allreduce(s, op=op)
            out.append(tf.convert_to_tensor(sparse))
            out.append(hvd.allreduce(tf.convert_to_tensor(s), op=op))
        mixed = hvd.grouped_allreduce([s, values])
        out += [tf.convert_to_tensor(mixed[0]), out[1], mixed[1], hvd.allreduce(values)]
        return out

    out = tf.function(run)(values) if graph else run(values)
    static = None
    if graph:  # shapes restored on the graph outputs
        conc = tf.function(lambda x: hvd.allgather(x)).get_concrete_function(
            tf.TensorSpec([None, 2], tf.float32)
        )
        static = conc.structured_outputs.shape.as_list()
    return [tf_ranks.to_np(t) for t in out], static


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_indexed_slices_equal_dense(pools, graph):
    for outs, static in pools.call(2, _sparse, graph):
        for sparse, dense in zip(outs[0::2], outs[1::2]):
            np.testing.assert_allclose(sparse, dense, rtol=1e-6)
        if graph:
            assert static == [None, 2]


def _mismatch(graph):
    import ringflow
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    x = tf.ones([3 + hvd.rank()])
    start = time.monotonic()
    try:
        (tf.function(hvd.allreduce) if graph else hvd.allreduce)(x)
    except Exception as error:
        kinds = (
            isinstance(error, tf.errors.OpError),
            isinstance(error, ringflow.Error),
            isinstance(error, tf.errors.FailedPreconditionError),
        )
        return time.monotonic() - start, kinds, str(error)[:2000]
    return time.monotonic() - start, None, ""


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("n", WORLD)
def test_mismatch_raises_on_every_rank(pools, n, graph):
    for elapsed, kinds, message in pools.call(n, _mismatch, graph):
        assert kinds is not None, "no error"
        assert elapsed < 5.0
        assert "shape" in message.lower()
        # eager: TensorFlow's error (Horovod's FailedPreconditionError) and ringflow's;
        # inside a graph: TensorFlow's numpy_function error carrying ringflow's message.
        assert kinds[0] and (kinds[1] and kinds[2] if not graph else True)


def _jit():
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    try:
        tf.function(hvd.allreduce, jit_compile=True)(tf.ones([2]))
    except ValueError as error:
        return str(error)
    return ""


def test_jit_compile_is_a_clear_error(pools):
    for message in pools.call(2, _jit):
        assert "jit_compile=False" in message


def _misc():
    import ringflow.tensorflow as hvd

    tf = tf_ranks.tf_module()
    me = hvd.rank()
    out = {
        "object": hvd.broadcast_object({"from": me}, root_rank=1),
        "objects": hvd.allgather_object(("rank", me)),
        "size_op": int(hvd.size_op()),
    }
    v = [tf.Variable(tf.fill([3], float(me))), tf.Variable(me)]
    hvd.broadcast_variables(v, root_rank=1)
    out["variables"] = [tf_ranks.to_np(x) for x in v]
    ps = hvd.add_process_set([0, 1])
    if me in (0, 1):
        out["ps"] = tf_ranks.to_np(
            hvd.allreduce(tf.constant([me + 1.0]), op=hvd.Sum, process_set=ps)
        )
    hvd.remove_process_set(ps)
    try:
        hvd.allreduce(tf.ones([1]), op=hvd.Adasum)
    except NotImplementedError as error:
        out["adasum"] = str(error)
    # join: rank 0 joins at once, the others allreduce once more (rank 0 contributes zeros).
    if me != 0:
        out["joined allreduce"] = tf_ranks.to_np(
            hvd.allreduce(tf.constant([2.0]), op=hvd.Sum, name="joined")
        )
    out["join"] = int(hvd.join())
    return out


@pytest.mark.parametrize("n", WORLD)
def test_objects_variables_process_sets_join(pools, n):
    for me, out in enumerate(pools.call(n, _misc)):
        assert out["object"] == {"from": 1}
        assert out["objects"] == [("rank", r) for r in range(n)]
        assert out["size_op"] == n
        np.testing.assert_array_equal(out["variables"][0], np.ones(3, np.float32))
        assert out["variables"][1] == 1
        if me in (0, 1):
            np.testing.assert_array_equal(out["ps"], [3.0])
        assert "Adasum" in out["adasum"]
        if me != 0:
            np.testing.assert_array_equal(out["joined allreduce"], [2.0 * (n - 1)])
        assert 0 <= out["join"] < n
