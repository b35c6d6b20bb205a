"""The core's own contract: shutdown really closes, and the raw `_core` calls check buffers."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from ringflow import _core


def _reinit_while_old_runtime_is_referenced() -> tuple[list[float], str]:
    old = rf._state.runtime  # what a saved exception's traceback would keep alive
    rf.shutdown()
    try:
        old.barrier()
        closed = "old runtime still usable"
    except rf.Error as error:
        closed = str(error)
    rf.init()
    return rf.allreduce(np.ones(2), op=rf.Sum).tolist(), closed


def test_shutdown_closes_even_while_referenced(make_job):
    """shutdown() closes connections (and a hosted store) at once, not when the object dies."""
    job = make_job(2).start()
    for total, closed in job.call(_reinit_while_old_runtime_is_referenced):
        assert total == [2.0, 2.0]
        assert "shut down" in closed


@pytest.fixture
def single():
    runtime = _core.Runtime(0, 1, -1, -1, "127.0.0.1", 0, False, b"s", "job", 0, 10.0)
    yield runtime
    runtime.close()


def test_raw_calls_check_output_buffers(single):
    x = np.ones(8, np.float32)
    tensor = _core.Tensor(x, _core.DType.float32, "x")
    with pytest.raises(rf.InvalidArgumentError, match="32 bytes"):
        single.allreduce(tensor, np.empty(4, np.float32), rf.Sum, 1.0, 1.0)
    read_only = np.empty(8, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(rf.InvalidArgumentError, match="writable"):
        single.allreduce(tensor, read_only, rf.Sum, 1.0, 1.0)
    with pytest.raises(rf.InvalidArgumentError, match="one per rank"):
        single.alltoall_sizes(tensor, [4, 4])
    with pytest.raises(rf.InvalidArgumentError, match="add up"):
        single.alltoall(tensor, [9], [9], np.empty(9, np.float32))


def test_calls_after_close_raise(single):
    single.close()
    x = np.ones(2)
    with pytest.raises(rf.Error, match="shut down"):
        single.allreduce(_core.Tensor(x, _core.DType.float64, "x"), x, rf.Sum, 1.0, 1.0)
