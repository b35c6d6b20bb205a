"""Tensor fusion and the response cache change nothing, bit for bit.

The same float32/float16 requests run in a job with fusion (RINGFLOW_FUSION_THRESHOLD at its
default, or small enough that only some requests fit) and in a job without (threshold 0), at
N = 3 and 4 where the order of a float reduction matters. Inputs are random positive floats, so
any change of reduction order between the fused and the unfused path shows in the bits. Every
result is also checked against numpy (exactly on integer-valued inputs with power-of-two scale
factors, within the rounding bound otherwise), and `rf.engine_stats()` must show the fusion and,
on a repeated step of the same names, response-cache hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import ringflow as rf
from tests import reference as ref

CYCLE = {"RINGFLOW_CYCLE_TIME": "5", "RINGFLOW_CACHE_CAPACITY": None}
"""Both jobs collect submissions for 5 ms, so that many requests are ready in one round; the
response cache at its default whatever the suite runs under."""

CONFIGS = {
    "default": {**CYCLE, "RINGFLOW_FUSION_THRESHOLD": None},
    "4KiB": {**CYCLE, "RINGFLOW_FUSION_THRESHOLD": "4096"},
    "unfused": {**CYCLE, "RINGFLOW_FUSION_THRESHOLD": "0"},
}

STATS = ("rounds", "negotiation_bytes", "cache_hits", "fused_ops", "fused_tensors")
STEPS = 2


@dataclass(frozen=True)
class Item:
    name: str
    kind: str  # allreduce, reducescatter or allgather
    dtype: str
    size: int
    op: str = "Sum"
    data: str = "positive"  # "positive" (rounds), "exact" (integer-valued) or "bits" (copies)
    prescale: float = 1.0
    postscale: float = 1.0

    def input(self, seed: int, rank: int, step: int) -> np.ndarray:
        seed = ref.seed_of(seed, self.name, step)
        if self.data == "bits":
            return ref.bit_patterns(seed, rank, (self.size,), self.dtype)
        return ref.reduction_input(self.data, seed, rank, (self.size,), self.dtype, self.op)


# (kind, dtype, op, data, prescale, postscale, how many)
GROUPS = [
    ("allreduce", "float32", "Sum", "positive", 1.0, 1.0, 12),
    ("allreduce", "float16", "Sum", "positive", 1.0, 1.0, 12),
    ("allreduce", "float32", "Average", "positive", 1.0, 1.0, 8),
    ("allreduce", "float16", "Average", "positive", 1.0, 1.0, 8),
    ("allreduce", "float32", "Sum", "positive", 1 / 3, 3.1, 6),
    ("allreduce", "float16", "Average", "positive", 1 / 3, 3.1, 6),
    ("allreduce", "float32", "Sum", "exact", 0.5, 4.0, 6),
    ("allreduce", "float16", "Average", "exact", 2.0, 0.25, 6),
    ("reducescatter", "float32", "Sum", "positive", 1.0, 1.0, 6),
    ("reducescatter", "float16", "Average", "positive", 1.0, 1.0, 6),
    ("allgather", "float16", "Sum", "bits", 1.0, 1.0, 6),
]


def make_items(n: int) -> list[Item]:
    sizes = [1, 7, n + 1, 1000, 0, 4097, 2 * n + 1, 100_003]
    items = []
    for g, (kind, dtype_name, op, data, pre, post, count) in enumerate(GROUPS):
        for i in range(count):
            items.append(
                Item(
                    f"f.{g}.{i}.{kind}.{dtype_name}",
                    kind,
                    dtype_name,
                    sizes[(g + i) % len(sizes)],
                    op,
                    data,
                    pre,
                    post,
                )
            )
    return items


# -- rank function --------------------------------------------------------------------------------


def _steps(seed: int, items: list[Item], steps: int):
    """Per step: every request async in this rank's own order, then synchronize all in another;
    engine_stats() before the first step and after each."""
    rank = rf.rank()
    stats = [dict(rf.engine_stats())]
    outputs = []
    for step in range(steps):
        gen = ref.rng(seed, 100 * step + rank)
        xs = {item.name: item.input(seed, rank, step) for item in items}
        handles = {}
        for index in gen.permutation(len(items)):
            item = items[index]
            x = xs[item.name]
            if item.kind == "allreduce":
                handles[item.name] = rf.allreduce_async(
                    x,
                    op=getattr(rf, item.op),
                    name=item.name,
                    prescale_factor=item.prescale,
                    postscale_factor=item.postscale,
                )
            elif item.kind == "reducescatter":
                handles[item.name] = rf.reducescatter_async(
                    x, op=getattr(rf, item.op), name=item.name
                )
            else:
                handles[item.name] = rf.allgather_async(x, name=item.name)
        names = list(handles)
        out = {}
        for index in gen.permutation(len(names)):
            out[names[index]] = rf.synchronize(handles[names[index]])
        outputs.append(out)
        stats.append(dict(rf.engine_stats()))
    return outputs, stats


# -- checks ---------------------------------------------------------------------------------------


def check_reference(outputs, items, seed, n, context):
    """Every rank's results against numpy."""
    for step in range(STEPS):
        for item in items:
            inputs = [item.input(seed, r, step) for r in range(n)]
            dt = inputs[0].dtype
            where = f"{context}, step {step}, {item}"
            if item.kind == "allgather":
                expected = np.concatenate(inputs)
                for rank in range(n):
                    ref.assert_bits_equal(outputs[rank][step][item.name], expected, where)
                continue
            pre, post = item.prescale, item.postscale
            if item.data == "exact":
                full = ref.allreduce_exact(inputs, item.op, pre, post)
            else:
                full = ref.allreduce_float64(inputs, item.op, pre, post)
            extra = 0 if post == 1.0 else 1
            for rank in range(n):
                got = outputs[rank][step][item.name]
                want = full if item.kind == "allreduce" else ref.reducescatter_block(full, n, rank)
                if item.data == "exact":
                    ref.assert_exact(got, want, f"rank {rank}, {where}")
                else:
                    rtol = ref.float_rtol(dt, n, extra)
                    ref.assert_close(got, want, dt, rtol, f"rank {rank}, {where}")


def check_stats_shape(stats, context):
    for rank, snapshots in enumerate(stats):
        for snapshot in snapshots:
            missing = [key for key in STATS if key not in snapshot]
            assert not missing, f"rank {rank}, {context}: engine_stats() lacks {missing}"
            for key in STATS:
                assert isinstance(snapshot[key], int), f"rank {rank}: {key} = {snapshot[key]!r}"
        for key in STATS:
            series = [snapshot[key] for snapshot in snapshots]
            assert series == sorted(series), f"rank {rank}, {context}: {key} went down: {series}"


def delta(snapshots, key, first=0, last=-1):
    return snapshots[last][key] - snapshots[first][key]


FUSED_CASES = [(3, "default"), (4, "default"), (4, "4KiB")]


@pytest.mark.parametrize(("n", "config"), FUSED_CASES, ids=[f"n{n}-{c}" for n, c in FUSED_CASES])
def test_fused_equals_unfused(make_job, n, config):
    seed = ref.seed_of("fusion", n)
    items = make_items(n)
    runs = {}
    for name in (config, "unfused"):
        job = make_job(n, env=CONFIGS[name]).start()
        runs[name] = job.call(_steps, seed, items, STEPS, deadline=60)
        job.close()

    fused_out = [outputs for outputs, _ in runs[config]]
    plain_out = [outputs for outputs, _ in runs["unfused"]]
    check_reference(fused_out, items, seed, n, f"n {n}, {config}")
    check_reference(plain_out, items, seed, n, f"n {n}, unfused")
    for rank in range(n):
        for step in range(STEPS):
            for item in items:
                ref.assert_bits_equal(
                    fused_out[rank][step][item.name],
                    plain_out[rank][step][item.name],
                    f"rank {rank}, step {step}, {item}: {config} fusion vs none",
                )

    fused_stats = [stats for _, stats in runs[config]]
    plain_stats = [stats for _, stats in runs["unfused"]]
    check_stats_shape(fused_stats, config)
    check_stats_shape(plain_stats, "unfused")
    for rank in range(n):
        ops, tensors = (
            delta(fused_stats[rank], "fused_ops"),
            delta(fused_stats[rank], "fused_tensors"),
        )
        assert ops > 0, f"rank {rank}, {config}: no fused op in {len(items) * STEPS} requests"
        assert tensors > ops, (
            f"rank {rank}, {config}: {tensors} fused tensors in {ops} fused ops: "
            "no op carried more than one tensor"
        )
        plain_ops = delta(plain_stats[rank], "fused_ops")
        plain_tensors = delta(plain_stats[rank], "fused_tensors")
        assert plain_tensors == plain_ops, (
            f"rank {rank}, threshold 0: {plain_tensors} tensors in {plain_ops} fused ops"
        )
        for name, stats in ((config, fused_stats[rank]), ("unfused", plain_stats[rank])):
            hits = delta(stats, "cache_hits", first=1, last=2)
            assert hits > 0, (
                f"rank {rank}, {name}: no response-cache hit on step 2, which repeats the "
                f"{len(items)} names of step 1: {stats}"
            )
            assert delta(stats, "rounds") > 0, f"rank {rank}, {name}: no round counted: {stats}"


def test_cache_disabled(make_job):
    """RINGFLOW_CACHE_CAPACITY=0: no cache hits, same exact results."""
    n = 2
    seed = ref.seed_of("no cache")
    items = [item for item in make_items(n) if item.data != "positive"]
    job = make_job(n, env={**CYCLE, "RINGFLOW_CACHE_CAPACITY": "0"}).start()
    results = job.call(_steps, seed, items, STEPS, deadline=60)
    check_reference([outputs for outputs, _ in results], items, seed, n, "cache off")
    stats = [snapshots for _, snapshots in results]
    check_stats_shape(stats, "cache off")
    for rank in range(n):
        assert delta(stats[rank], "cache_hits") == 0, f"rank {rank}: cache hits: {stats[rank]}"
