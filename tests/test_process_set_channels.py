"""Process sets with channels of their own: disjoint sets never wait on each other.

Set A = [0, 1] runs large allreduces while set B = [2, 3] runs 32-byte ones; B's latency must
stay far below A's op time (it used to wait for A's ranks to finish each bucket, since every
negotiation round spanned the whole job). Overlapping sets (a cycle A, B, C) still complete,
exact; job-wide operations interleave with set operations; adding a set that overlaps a
channel gives the channel up with requests still pending in it; join works across channels; a
SIGKILLed member of A fails A's members within 5 s and B's members at their next operation
(a dead peer fails the whole job, as in Horovod).

Times are compared between the ranks of one job on one machine (CLOCK_MONOTONIC is shared).
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import time

import numpy as np
import pytest

import ringflow as rf
from tests import harness

N = 4
BIG = 8 * 1024 * 1024  # int32 elements (32 MiB) per A allreduce
BIG_STEPS = 8
DEAD_PEER_S = 5.0


@pytest.fixture(scope="module")
def ch_pools():
    pools = harness.Pools()
    yield pools
    pools.close()


def _small(name, rank, count=8):
    """Exact int32 input: the sum over ranks is known in closed form."""
    return (np.arange(count, dtype=np.int32) * 7 + len(name) + rank).astype(np.int32)


def _small_sum(name, ranks, count=8):
    return sum(_small(name, r, count).astype(np.int64) for r in ranks).astype(np.int32)


def _busy_and_quick(done_path, big_elements=BIG, big_steps=BIG_STEPS):
    """A submits ``big_steps`` allreduces of 32 MiB (by default) at once and waits for them:
    its ranks execute them back to back, with no gap in which a job-wide round could slip in.
    B loops over 32-byte allreduces until A is done (benchmarks/bench_set_channels.py uses this
    too). Returns the (start, end) monotonic times (A: its whole batch; B: every op) and whether
    every result was exact."""
    rank = rf.rank()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    times, exact = [], True
    try:
        rf.barrier()
        if rank < 2:
            big = (np.arange(big_elements, dtype=np.int32) % 1000 + rank).astype(np.int32)
            start = time.monotonic()
            handles = [
                rf.allreduce_async(big, op=rf.Sum, name=f"a.big.{step}", process_set=a)
                for step in range(big_steps)
            ]
            results = [rf.synchronize(handle) for handle in handles]
            times.append((start, time.monotonic()))
            if rank == 0:
                with open(done_path, "w") as done:
                    done.write("1")
            want = (2 * (np.arange(big_elements, dtype=np.int32) % 1000) + 1).astype(np.int32)
            exact = all(np.array_equal(got, want) for got in results)
        else:
            step = 0
            # Both members stop at the same step: the one that sees A done first tells the
            # other through the result itself (its input's last element says "stop").
            while step < 20000:
                name = f"b.small.{step}"
                x = _small(name, rank)
                x[-1] = 1 if os.path.exists(done_path) else 0
                start = time.monotonic()
                got = rf.allreduce(x, op=rf.Sum, name=name, process_set=b)
                times.append((start, time.monotonic()))
                want = _small_sum(name, (2, 3))
                exact = exact and np.array_equal(got[:-1], want[:-1])
                step += 1
                if got[-1] > 0:
                    break
        rf.barrier()
    finally:
        rf.remove_process_set(b)
        rf.remove_process_set(a)
    return times, exact


def b_during_a(results, big_steps=BIG_STEPS):
    """A's time per op, and the latencies of the B ops (rank 2's, 3's) that ran while A was busy."""
    (a_start, a_end), *_ = results[0][0]
    per_op = (a_end - a_start) / big_steps
    during = {
        rank: sorted(
            end - start for start, end in results[rank][0] if a_start <= start and end <= a_end
        )
        for rank in (2, 3)
    }
    return per_op, during


def test_disjoint_set_not_delayed_by_busy_set(ch_pools, tmp_path):
    results = ch_pools.call(N, _busy_and_quick, str(tmp_path / "a-done"))
    for rank, (_, exact) in enumerate(results):
        assert exact, f"rank {rank}: a result differs from numpy"
    a_per_op, during = b_during_a(results)
    for rank, latencies in during.items():
        # Before channels, B's ops waited for A's whole batch: one or two ran while A was busy.
        assert len(latencies) >= 10, (
            f"rank {rank}: only {len(latencies)} B ops ran while A was busy"
        )
        b_median = statistics.median(latencies)
        assert b_median < a_per_op / 5, (
            f"rank {rank}: B's 32-byte allreduce took {b_median * 1e3:.2f} ms (median of "
            f"{len(latencies)}) while A's 32 MiB allreduces took {a_per_op * 1e3:.2f} ms each"
        )


def test_without_channels_set_b_waits(make_job, tmp_path):
    """RINGFLOW_SET_CHANNELS=0 brings back job-wide rounds for every set: B's ops then wait for
    A's whole batch (what the test above guards against), and results stay exact."""
    job = make_job(N, env={"RINGFLOW_SET_CHANNELS": "0"}).start()
    results = harness.values(job.run(_busy_and_quick, str(tmp_path / "a-done")))
    for rank, (_, exact) in enumerate(results):
        assert exact, f"rank {rank}: a result differs from numpy"
    a_per_op, _ = b_during_a(results)
    (a_start, a_end), *_ = results[0][0]
    for rank in (2, 3):
        # Some B op waited for (most of) a round of A's ops: at least half an A op.
        longest = max(
            end - start for start, end in results[rank][0] if end > a_start and start < a_end
        )
        assert longest >= a_per_op / 2, (
            f"rank {rank}: {longest * 1e3:.1f} ms, A {a_per_op * 1e3:.1f} ms"
        )


def world_latency(with_sets, count=2000):
    """Median time of a blocking 8-byte job-wide allreduce, with the disjoint sets [0, 1] and
    [2, 3] in place (their members join each job-wide round through a channel round) or none
    (benchmarks/bench_set_channels.py)."""
    sets = [rf.add_process_set([0, 1]), rf.add_process_set([2, 3])] if with_sets else []
    x = np.ones(2, dtype=np.float32)
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            rf.allreduce(x, op=rf.Sum, name="w.lat")
            times.append(time.perf_counter() - start)
    finally:
        for ps in sets:
            rf.remove_process_set(ps)
    return statistics.median(times[count // 10 :])


_CYCLE = {"A": [0, 1], "B": [1, 2], "C": [0, 2]}


def _cycle(seed):
    """Three sets in a cycle; each rank alternates between its two sets, async in an order of
    its own, then blocking in the sets' order; a job-wide op at the end."""
    rank = rf.rank()
    sets = {name: rf.add_process_set(ranks) for name, ranks in _CYCLE.items()}
    out = {}
    try:
        mine = [name for name, ranks in _CYCLE.items() if rank in ranks]
        rng = np.random.default_rng(seed + rank)
        for step in range(6):
            order = list(mine) if rng.random() < 0.5 else list(reversed(mine))
            handles = {}
            for set_name in order:
                for k in range(3):
                    name = f"cy.{set_name}.{step}.{k}"
                    count = 1 + (step * 5 + k * 3) % 13 if k != 1 else 40000 + step
                    handles[name] = (
                        _CYCLE[set_name],
                        rf.allreduce_async(
                            _small(name, rank, count),
                            op=rf.Sum,
                            name=name,
                            process_set=sets[set_name],
                        ),
                    )
            for name, (ranks, handle) in handles.items():
                out[name] = (ranks, rf.synchronize(handle))
            for set_name in mine:  # blocking: in one order every rank shares
                name = f"cy.sync.{set_name}.{step}"
                out[name] = (
                    _CYCLE[set_name],
                    rf.allreduce(
                        _small(name, rank, 5), op=rf.Sum, name=name, process_set=sets[set_name]
                    ),
                )
        out["cy.world"] = (
            list(range(N)),
            rf.allreduce(_small("cy.world", rank), op=rf.Sum, name="cy.world"),
        )
    finally:
        for ps in sets.values():
            rf.remove_process_set(ps)
    return out


def test_overlapping_sets_in_a_cycle(ch_pools):
    results = ch_pools.call(N, _cycle, 7)
    for rank, out in enumerate(results):
        assert len(out) == (1 if rank == 3 else 6 * 8 + 1), f"rank {rank}: {sorted(out)}"
        for name, (ranks, got) in out.items():
            want = _small_sum(name, ranks, got.size)
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}: {name}")


def _channel_beside_overlapping():
    """A = [0, 1] has a channel; B and C = [2, 3] overlap each other, so they negotiate job-wide
    (as every rank's job-wide ops do) while A's ranks work in their channel."""
    rank = rf.rank()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    c = rf.add_process_set([2, 3])
    out = {}
    try:
        for step in range(6):
            handles = {}
            sets = [("a", a, [0, 1])] if rank < 2 else [("b", b, [2, 3]), ("c", c, [2, 3])]
            if rank == 3:
                sets.reverse()
            for tag, ps, members in sets:
                for k in range(2):
                    name = f"mx.{tag}.{step}.{k}"
                    x = _small(name, rank, 3 + 4000 * k)
                    handles[name] = (
                        members,
                        rf.allreduce_async(x, name=name, op=rf.Sum, process_set=ps),
                    )
            if step % 2:
                name = f"mx.w.{step}"
                out[name] = (list(range(N)), rf.allreduce(_small(name, rank), name=name, op=rf.Sum))
            for name, (members, handle) in handles.items():
                out[name] = (members, rf.synchronize(handle))
    finally:
        for ps in (c, b, a):
            rf.remove_process_set(ps)
    return out


def test_channel_beside_overlapping_sets(ch_pools):
    for rank, out in enumerate(ch_pools.call(N, _channel_beside_overlapping)):
        assert len(out) == 3 + 6 * (2 if rank < 2 else 4), f"rank {rank}: {sorted(out)}"
        for name, (ranks, got) in out.items():
            np.testing.assert_array_equal(got, _small_sum(name, ranks, got.size), err_msg=name)


def _interleaved():
    """Blocking and async ops on A = [0, 1] / B = [2, 3] between job-wide ones; then a set that
    overlaps A is added while A still has a request pending in its channel."""
    rank = rf.rank()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    mine, tag, members = (a, "a", [0, 1]) if rank < 2 else (b, "b", [2, 3])
    out = {}
    try:
        for step in range(5):
            name = f"il.{tag}.{step}"
            out[name] = (
                members,
                rf.allreduce(_small(name, rank), name=name, op=rf.Sum, process_set=mine),
            )
            name = f"il.w.{step}"
            out[name] = (
                list(range(N)),
                rf.allreduce(_small(name, rank, 3 + step), name=name, op=rf.Sum),
            )
            h1 = rf.allreduce_async(
                _small(f"il.{tag}.x{step}", rank, 100000),
                name=f"il.{tag}.x{step}",
                op=rf.Sum,
                process_set=mine,
            )
            h2 = rf.allreduce_async(
                _small(f"il.w.x{step}", rank, 1000), name=f"il.w.x{step}", op=rf.Sum
            )
            out[f"il.w.x{step}"] = (list(range(N)), rf.synchronize(h2))
            out[f"il.{tag}.x{step}"] = (members, rf.synchronize(h1))
        # Rank 0 submits to A before the job adds [1, 2], rank 1 after: A's channel is given up
        # with rank 0's request pending in it, which then runs among the job-wide rounds.
        handle = None
        if rank == 0:
            handle = rf.allreduce_async(
                _small("il.a.late", rank), name="il.a.late", op=rf.Sum, process_set=a
            )
        c = rf.add_process_set([1, 2])
        if rank == 1:
            handle = rf.allreduce_async(
                _small("il.a.late", rank), name="il.a.late", op=rf.Sum, process_set=a
            )
        if handle is not None:
            out["il.a.late"] = ([0, 1], rf.synchronize(handle))
        if rank in (1, 2):
            out["il.c"] = (
                [1, 2],
                rf.allreduce(_small("il.c", rank), name="il.c", op=rf.Sum, process_set=c),
            )
        out[f"il.{tag}.after"] = (
            members,
            rf.allreduce(
                _small(f"il.{tag}.after", rank), name=f"il.{tag}.after", op=rf.Sum, process_set=mine
            ),
        )
        rf.remove_process_set(c)
        out[f"il.{tag}.back"] = (
            members,
            rf.allreduce(
                _small(f"il.{tag}.back", rank), name=f"il.{tag}.back", op=rf.Sum, process_set=mine
            ),
        )
    finally:
        rf.remove_process_set(b)
        rf.remove_process_set(a)
    return out


def test_world_ops_interleaved_and_sets_changing(ch_pools):
    for rank, out in enumerate(ch_pools.call(N, _interleaved)):
        assert len(out) == 22 + (rank in (0, 1)) + (rank in (1, 2)), f"rank {rank}: {sorted(out)}"
        for name, (ranks, got) in out.items():
            want = _small_sum(name, ranks, got.size)
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}: {name}")


def _join_across_channels():
    """Rank 2 joins at once; rank 3 still runs a B allreduce, which goes on with rank 2's zeros."""
    rank = rf.rank()
    b = rf.add_process_set([2, 3])
    a = rf.add_process_set([0, 1])
    got = None
    try:
        if rank == 3:
            got = rf.allreduce(_small("j.b", rank), name="j.b", op=rf.Sum, process_set=b)
        if rank == 0:
            got = rf.allreduce(_small("j.a", rank), name="j.a", op=rf.Sum, process_set=a)
        last = rf.join()
    finally:
        rf.remove_process_set(a)
        rf.remove_process_set(b)
    return got, last


def test_join_across_channels(ch_pools):
    results = ch_pools.call(N, _join_across_channels)
    lasts = {last for _, last in results}
    assert len(lasts) == 1, f"join() returned {lasts}"
    np.testing.assert_array_equal(results[3][0], _small("j.b", 3))
    np.testing.assert_array_equal(results[0][0], _small("j.a", 0))


def _kill_in_a(death_path):
    """Rank 1 (in A) dies; rank 0 loops over A ops, ranks 2, 3 over B ops, until one raises."""
    rank = rf.rank()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    mine = a if rank < 2 else b
    rf.allreduce(_small("k.warm", rank), name="k.warm", op=rf.Sum, process_set=mine)
    rf.barrier()
    if rank == 1:
        with open(death_path, "w") as death:
            death.write(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGKILL)
    error, raised_at, step = None, None, 0
    give_up = time.monotonic() + 3 * DEAD_PEER_S
    while time.monotonic() < give_up:
        try:
            rf.allreduce(_small("k", rank, 1000), name=f"k.{step}", op=rf.Sum, process_set=mine)
        except rf.Error as exc:
            error, raised_at = exc, time.monotonic()
            break
        step += 1
    with contextlib.suppress(rf.Error):
        rf.shutdown()
    return type(error).__name__, str(error), raised_at


def test_killed_member_fails_both_sets(make_job, tmp_path):
    death_path = tmp_path / "death"
    job = make_job(N, rank_timeout=20.0, env={"RINGFLOW_TIMEOUT": "10"}).start()
    results = job.run(_kill_in_a, str(death_path))
    died_at = float(death_path.read_text())
    for result in results:
        if result.rank == 1:
            assert result.died and result.exitcode == -signal.SIGKILL, result.describe()
            continue
        assert result.ok, result.describe()
        kind, message, raised_at = result.value
        assert kind == "PeerFailureError", f"rank {result.rank}: {kind}: {message}"
        assert raised_at - died_at < DEAD_PEER_S, (
            f"rank {result.rank} raised {raised_at - died_at:.1f} s after rank 1 died: {message}"
        )
        assert "rank 1" in message, f"rank {result.rank}: {message}"


def _stuck_across_scopes():
    """Rank 2 waits on a B allreduce that rank 3 never submits; rank 3 and A's ranks wait in a
    job-wide barrier that rank 2 never reaches: a deadlock through a channel and the job-wide
    rounds, which B's members find (they see both) and A's members hear of."""
    rank = rf.rank()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    if rank < 2:
        rf.allreduce(_small("s.a", rank), name="s.a", op=rf.Sum, process_set=a)
    start = time.monotonic()
    try:
        if rank == 2:
            rf.allreduce(_small("s.lonely", rank), name="s.lonely", op=rf.Sum, process_set=b)
        else:
            rf.barrier()
        error = None
    except rf.Error as exc:
        error = exc
    elapsed = time.monotonic() - start
    with contextlib.suppress(rf.Error):
        rf.shutdown()
    return type(error).__name__, str(error), elapsed


def test_deadlock_across_channel_and_job(make_job):
    env = {"RINGFLOW_STALL_CHECK_TIME": "60", "RINGFLOW_STALL_SHUTDOWN_TIME": "60"}
    job = make_job(N, env=env, rank_timeout=30.0).start()
    for rank, (kind, message, elapsed) in enumerate(harness.values(job.run(_stuck_across_scopes))):
        context = f"rank {rank}: {kind} after {elapsed:.1f} s: {message}"
        assert "deadlock" in message and elapsed < 3.0, context
        if rank >= 2:
            assert kind == "MismatchError", context
            assert "rank 2 waits in allreduce of 's.lonely' (not submitted by rank 3)" in message
            assert "rank 3 waits in barrier of 'barrier.noname.0'" in message, context


def _stalled_in_a_channel(token):
    """Rank 2 waits on a B allreduce that rank 3 never submits, while rank 3 waits on nothing
    (it stays in the job, out of ringflow, until rank 2 is done): no deadlock, a stall, which
    the inspector reports from the channel's own table."""
    rank = rf.rank()
    store = harness.rank_store()
    b = rf.add_process_set([2, 3])
    result = None
    if rank == 2:
        start = time.monotonic()
        handle = rf.allreduce_async(_small("t.lonely", rank), name="t.lonely", process_set=b)
        try:
            rf.synchronize(handle)
        except rf.Error as exc:
            result = (type(exc).__name__, str(exc), time.monotonic() - start)
        store.set(f"{token}/done", b"1")
    else:
        store.get(f"{token}/done", timeout_s=20.0)
    with contextlib.suppress(rf.Error):
        rf.shutdown()
    return result


def test_stall_inspector_names_channel_tensors(make_job):
    env = {"RINGFLOW_STALL_CHECK_TIME": "1", "RINGFLOW_STALL_SHUTDOWN_TIME": "2"}
    job = make_job(N, env=env, rank_timeout=30.0).start()
    kind, message, elapsed = harness.values(
        job.run(_stalled_in_a_channel, f"stall-{time.monotonic_ns()}")
    )[2]
    context = f"rank 2: {kind} after {elapsed:.1f} s: {message}"
    assert kind == "TimeoutError" and elapsed < 10.0, context
    assert "allreduce of tensor 't.lonely' submitted by rank 2 but not by rank 3" in message, (
        context
    )


def _mismatch_in_a_channel():
    """B's members disagree on the shape; A runs meanwhile. The error names tensor, ranks and
    field on both members, and both sets go on."""
    rank = rf.rank()
    a = rf.add_process_set([0, 1])
    b = rf.add_process_set([2, 3])
    error = None
    try:
        if rank >= 2:
            try:
                rf.allreduce(np.ones(rank + 1, np.int32), name="m.b", op=rf.Sum, process_set=b)
            except rf.Error as exc:
                error = (type(exc).__name__, str(exc))
        mine = a if rank < 2 else b
        after = rf.allreduce(_small("m.after", rank), name="m.after", op=rf.Sum, process_set=mine)
    finally:
        rf.remove_process_set(b)
        rf.remove_process_set(a)
    return error, after


def test_mismatch_in_a_channel_names_the_field(ch_pools):
    for rank, (error, after) in enumerate(ch_pools.call(N, _mismatch_in_a_channel)):
        members = [0, 1] if rank < 2 else [2, 3]
        np.testing.assert_array_equal(after, _small_sum("m.after", members))
        if rank < 2:
            assert error is None
            continue
        kind, message = error
        assert kind == "MismatchError", message
        assert (
            "allreduce of tensor 'm.b': shape differs between ranks: rank 2 (3,), rank 3 (4,)"
            in (message)
        ), message
