"""ringflow.torch collectives against numpy: every dtype x op x form (blocking, in place, async,
grouped) x size (0, 1, odd, not divisible by N) at N = 2 and 3 (gradients:
test_horovod_conformance_gradients).

One request per (N, dtype) runs the whole matrix inside the ranks (one torch import per rank
process, persistent pools); the parent rebuilds every rank's input and checks exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ringflow.torch as hvd  # noqa: E402
from tests import reference as ref  # noqa: E402
from tests.conformance import to_numpy, to_torch  # noqa: E402

WORLD = (2, 3)
OPS = ("Sum", "Average", "Min", "Max", "Product")


def sizes(n: int) -> list[int]:
    """0, 1, odd, and not divisible by n."""
    return [0, 1, 7, 2 * n + 1]


def ops_for(dtype_name: str) -> list[str]:
    return [op for op in OPS if ref.valid_reduction(dtype_name, op)]


def reduce_input(seed, tag, size, op, rank, dtype_name, cols=None):
    shape = (size,) if cols is None else (size, cols)
    return ref.exact_input(ref.seed_of(seed, tag, size, op), rank, shape, dtype_name, op)


def copy_input(seed, tag, shape, rank, dtype_name):
    return ref.bit_patterns(ref.seed_of(seed, tag, shape), rank, shape, dtype_name)


# -- rank functions ---------------------------------------------------------------------------


def _reductions(seed, dtype_name):
    """Every reducing collective in every form; returns {key: numpy result} and the keys whose
    non-in-place input changed or whose in-place form did not return its argument."""
    me, res, bad = hvd.rank(), {}, []
    scaled = dtype_name in ref.FLOAT_DTYPES
    for size in sizes(hvd.size()):
        for op in ops_for(dtype_name):
            kw = {"op": getattr(hvd, op)}

            def mk(tag, cols=None, size=size, op=op):
                return to_torch(reduce_input(seed, tag, size, op, me, dtype_name, cols))

            x = mk("a")
            res["allreduce", size, op] = to_numpy(hvd.allreduce(x, **kw))
            if not np.array_equal(ref.bits(to_numpy(x)), ref.bits(to_numpy(mk("a")))):
                bad.append(("allreduce modified its input", size, op))
            y = mk("a")
            if hvd.allreduce_(y, **kw) is not y:
                bad.append(("allreduce_ did not return its argument", size, op))
            res["allreduce_", size, op] = to_numpy(y)
            strided = mk("a", 2).t()  # non-contiguous, in place
            hvd.allreduce_(strided, **kw)
            res["allreduce_ strided", size, op] = to_numpy(strided.t())
            z = mk("a")
            handles = [
                hvd.allreduce_async(mk("a"), **kw),
                hvd.allreduce_async_(z, **kw),
                hvd.grouped_allreduce_async([mk("a"), mk("b")], **kw),
                hvd.reducescatter_async(mk("r", 2), **kw),
                hvd.grouped_reducescatter_async([mk("r", 2), mk("s")], **kw),
            ]
            done = [hvd.synchronize(h) for h in reversed(handles)][::-1]
            assert all(hvd.poll(h) for h in handles)
            assert done[1] is z
            res["allreduce_async", size, op] = to_numpy(done[0])
            res["allreduce_async_", size, op] = to_numpy(z)
            res["grouped_async", size, op] = [to_numpy(t) for t in done[2]]
            res["reducescatter_async", size, op] = to_numpy(done[3])
            res["grouped_reducescatter_async", size, op] = [to_numpy(t) for t in done[4]]
            res["grouped", size, op] = [
                to_numpy(t) for t in hvd.grouped_allreduce([mk("a"), mk("b")], **kw)
            ]
            pair = [mk("a"), mk("b")]
            hvd.grouped_allreduce_(pair, **kw)
            res["grouped_", size, op] = [to_numpy(t) for t in pair]
            res["reducescatter", size, op] = to_numpy(hvd.reducescatter(mk("r", 2), **kw))
            res["grouped_reducescatter", size, op] = [
                to_numpy(t) for t in hvd.grouped_reducescatter([mk("r", 2), mk("s")], **kw)
            ]
            if scaled and op in ("Sum", "Average"):
                scale = {"prescale_factor": 0.5, "postscale_factor": 4.0}
                res["allreduce scaled", size, op] = to_numpy(hvd.allreduce(mk("a"), **kw, **scale))
                res["reducescatter scaled", size, op] = to_numpy(
                    hvd.reducescatter(mk("r", 2), **kw, **scale)
                )
    return res, bad


def _copies(seed, dtype_name):
    """allgather, broadcast and alltoall in every form, on arbitrary bit patterns."""
    n, me, res = hvd.size(), hvd.rank(), {}
    for size in sizes(n):

        def mk(tag, shape):
            return to_torch(copy_input(seed, tag, shape, me, dtype_name))

        rows = (size + me, 2)
        res["allgather", size] = to_numpy(hvd.allgather(mk("g", rows)))
        res["grouped_allgather", size] = [
            to_numpy(t) for t in hvd.grouped_allgather([mk("g", rows), mk("h", (size + 2 * me,))])
        ]
        x = mk("b", (size,))
        res["broadcast", size] = to_numpy(hvd.broadcast(x, n - 1))
        res["broadcast input", size] = to_numpy(x)
        y = mk("b", (size,))
        assert hvd.broadcast_(y, n - 1) is y
        res["broadcast_", size] = to_numpy(y)
        splits = ref.alltoall_splits(ref.seed_of(seed, size), me, n, size)
        out, received = hvd.alltoall(mk("t", (size, 3)), splits=torch.tensor(splits))
        res["alltoall", size] = (to_numpy(out), received.tolist())
        res["alltoall even", size] = to_numpy(hvd.alltoall(mk("e", (n * size,))))
        z = mk("b", (size,))
        handles = [
            hvd.allgather_async(mk("g", rows)),
            hvd.grouped_allgather_async([mk("g", rows), mk("h", (size + 2 * me,))]),
            hvd.broadcast_async(mk("b", (size,)), n - 1),
            hvd.broadcast_async_(z, n - 1),
            hvd.alltoall_async(mk("t", (size, 3)), splits=splits),
        ]
        done = [hvd.synchronize(h) for h in reversed(handles)][::-1]
        res["allgather_async", size] = to_numpy(done[0])
        res["grouped_allgather_async", size] = [to_numpy(t) for t in done[1]]
        res["broadcast_async", size] = to_numpy(done[2])
        res["broadcast_async_", size] = to_numpy(z)
        res["alltoall_async", size] = (to_numpy(done[4][0]), done[4][1].tolist())
    return res


# -- the matrix -------------------------------------------------------------------------------


def _reference_reductions(seed, n, dtype_name, rank):
    """{key: expected} for `_reductions` on one rank."""
    exp = {}
    for size in sizes(n):
        for op in ops_for(dtype_name):

            def ins(tag, cols=None, size=size, op=op):
                return [reduce_input(seed, tag, size, op, r, dtype_name, cols) for r in range(n)]

            full = ref.allreduce_exact(ins("a"), op)
            for form in ("allreduce", "allreduce_", "allreduce_async", "allreduce_async_"):
                exp[form, size, op] = full
            exp["allreduce_ strided", size, op] = ref.allreduce_exact(ins("a", 2), op)
            pair = [full, ref.allreduce_exact(ins("b"), op)]
            for form in ("grouped", "grouped_", "grouped_async"):
                exp[form, size, op] = pair
            rs = ref.reducescatter_block(ref.allreduce_exact(ins("r", 2), op), n, rank)
            rs2 = ref.reducescatter_block(ref.allreduce_exact(ins("s"), op), n, rank)
            exp["reducescatter", size, op] = exp["reducescatter_async", size, op] = rs
            for form in ("grouped_reducescatter", "grouped_reducescatter_async"):
                exp[form, size, op] = [rs, rs2]
            if dtype_name in ref.FLOAT_DTYPES and op in ("Sum", "Average"):
                exp["allreduce scaled", size, op] = ref.allreduce_exact(ins("a"), op, 0.5, 4.0)
                scaled = ref.allreduce_exact(ins("r", 2), op, 0.5, 4.0)
                exp["reducescatter scaled", size, op] = ref.reducescatter_block(scaled, n, rank)
    return exp


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize("n", WORLD)
def test_reductions(pools, n, dtype_name):
    seed = ref.seed_of("torch reductions", n, dtype_name)
    results = pools.call(n, _reductions, seed, dtype_name)
    for rank, (res, bad) in enumerate(results):
        assert not bad, f"rank {rank}, dtype {dtype_name}, n {n}: {bad}"
        expected = _reference_reductions(seed, n, dtype_name, rank)
        assert res.keys() == expected.keys()
        for key, want in expected.items():
            got = res[key]
            context = f"rank {rank}, n {n}, dtype {dtype_name}, {key}"
            if isinstance(want, list):
                for i, (g, w) in enumerate(zip(got, want)):
                    ref.assert_exact(g, w, f"{context}, tensor {i}")
            else:
                ref.assert_exact(got, want, context)


@pytest.mark.parametrize("dtype_name", ref.DTYPES)
@pytest.mark.parametrize("n", WORLD)
def test_copies(pools, n, dtype_name):
    seed = ref.seed_of("torch copies", n, dtype_name)
    results = pools.call(n, _copies, seed, dtype_name)
    for rank, res in enumerate(results):
        for size in sizes(n):
            context = f"rank {rank}, n {n}, dtype {dtype_name}, size {size}"

            def ins(tag, shape_of, size=size):
                return [copy_input(seed, tag, shape_of(r), r, dtype_name) for r in range(n)]

            gathered = np.concatenate(ins("g", lambda r, s=size: (s + r, 2)))
            second = np.concatenate(ins("h", lambda r, s=size: (s + 2 * r,)))
            for form in ("allgather", "allgather_async"):
                ref.assert_bits_equal(res[form, size], gathered, f"{context}, {form}")
            for form in ("grouped_allgather", "grouped_allgather_async"):
                ref.assert_bits_equal(res[form, size][0], gathered, f"{context}, {form}")
                ref.assert_bits_equal(res[form, size][1], second, f"{context}, {form}")
            sources = ins("b", lambda r, s=size: (s,))
            for form in ("broadcast", "broadcast_", "broadcast_async", "broadcast_async_"):
                ref.assert_bits_equal(res[form, size], sources[n - 1], f"{context}, {form}")
            ref.assert_bits_equal(res["broadcast input", size], sources[rank], context)
            splits = [ref.alltoall_splits(ref.seed_of(seed, size), r, n, size) for r in range(n)]
            want, received = ref.alltoall_expected(ins("t", lambda r, s=size: (s, 3)), splits, rank)
            for form in ("alltoall", "alltoall_async"):
                ref.assert_bits_equal(res[form, size][0], want, f"{context}, {form}")
                assert res[form, size][1] == received.tolist(), f"{context}, {form} splits"
            even = [np.array_split(x, n) for x in ins("e", lambda r, s=size: (n * s,))]
            want = np.concatenate([parts[rank] for parts in even])
            ref.assert_bits_equal(res["alltoall even", size], want, f"{context}, alltoall even")


# -- errors and arguments ---------------------------------------------------------------------


def _bad_device(which):
    """Rank `which` passes a tensor on the meta device (a stand-in for CUDA: no data)."""
    t = torch.ones(3, device="meta") if hvd.rank() == which else torch.ones(3)
    try:
        hvd.allreduce(t)
    except hvd.HorovodInternalError as error:
        return type(error).__name__, str(error)
    return None


def test_bad_device_fails_every_rank(pools):
    """The rank with the bad tensor says why; the others that it is at fault; nobody hangs."""
    (kind0, message0), (kind1, message1) = pools.call(2, _bad_device, 1)
    assert kind1 == "InvalidArgumentError" and "device 'meta'" in message1, message1
    assert kind0 == "MismatchError" and "rank 1 passed invalid input" in message0, message0


def test_cuda_tensors_pass_the_check():
    """CUDA tensors reach the core (which stages or reduces them on the device); other devices
    are refused with a reason."""
    from ringflow.torch import _tensors

    class FakeCuda(torch.Tensor):  # only .device is consulted by the check
        @property
        def device(self):
            return torch.device("cuda", 0)

    assert _tensors.problem(torch.ones(2).as_subclass(FakeCuda)) == ""
    assert "CPU and CUDA tensors only" in _tensors.problem(torch.ones(2, device="meta"))


def _legacy_average():
    x = torch.full((3,), float(hvd.rank() + 1))
    averaged = hvd.allreduce(x, average=True).tolist()
    summed = hvd.allreduce(x, average=False).tolist()
    try:
        hvd.allreduce(x, average=True, op=hvd.Sum)
    except ValueError:
        both = "ValueError"
    else:
        both = "no error"
    return averaged, summed, both


def test_legacy_average(pools):
    for averaged, summed, both in pools.call(2, _legacy_average):
        assert averaged == [1.5] * 3
        assert summed == [3.0] * 3
        assert both == "ValueError"


def _sparse():
    me = hvd.rank()
    indices = torch.tensor([[me, 3]])
    t = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0]), (5,), check_invariants=False)
    dense_sum = hvd.allreduce(t, op=hvd.Sum).to_dense()
    dense_avg = hvd.synchronize(hvd.sparse_allreduce_async(t, op=hvd.Average)).to_dense()
    return dense_sum.tolist(), dense_avg.tolist()


def test_sparse_allreduce(pools):
    for dense_sum, dense_avg in pools.call(2, _sparse):
        assert dense_sum == [1.0, 1.0, 0.0, 4.0, 0.0]
        assert dense_avg == [0.5, 0.5, 0.0, 2.0, 0.0]
