"""The core's own contract: shutdown really closes, and the raw `_core` calls check buffers."""

from __future__ import annotations

import numpy as np
import pytest

import ringflow as rf
from ringflow import _core


def _reinit_while_old_engine_is_referenced() -> tuple[list[float], str]:
    old = rf._state.engine  # what a saved exception's traceback would keep alive
    rf.shutdown()
    try:
        tensor = _core.Tensor(np.empty(0, np.uint8), _core.DType.uint8, "b")
        old.submit(_core.OpKind.barrier, [tensor], [None])
        closed = "old engine still usable"
    except rf.Error as error:
        closed = str(error)
    rf.init()
    return rf.allreduce(np.ones(2), op=rf.Sum).tolist(), closed


def test_shutdown_closes_even_while_referenced(make_job):
    """shutdown() closes connections (and a hosted store) at once, not when the object dies."""
    job = make_job(2).start()
    for total, closed in job.call(_reinit_while_old_engine_is_referenced):
        assert total == [2.0, 2.0]
        assert "shut down" in closed


@pytest.fixture
def single():
    engine = _core.Engine(0, 1, -1, -1, "127.0.0.1", 0, False, b"s", "job", 0, 10.0)
    yield engine
    engine.close()


def _allreduce(engine, tensor, out):
    (handle,) = engine.submit(_core.OpKind.allreduce, [tensor], [out], rf.Sum)
    engine.wait(handle)
    handle.rethrow()


def test_raw_calls_check_output_buffers(single):
    x = np.ones(8, np.float32)
    tensor = _core.Tensor(x, _core.DType.float32, "x")
    with pytest.raises(rf.InvalidArgumentError, match="32 bytes"):
        _allreduce(single, tensor, np.empty(4, np.float32))
    read_only = np.empty(8, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(rf.InvalidArgumentError, match="writable"):
        _allreduce(single, tensor, read_only)
    (handle,) = single.submit(_core.OpKind.alltoall, [tensor], [None], splits=[9])
    single.wait(handle)
    with pytest.raises(rf.InvalidArgumentError, match="add up"):
        handle.rethrow()


def test_calls_after_close_raise(single):
    single.close()
    x = np.ones(2)
    with pytest.raises(rf.Error, match="shut down"):
        _allreduce(single, _core.Tensor(x, _core.DType.float64, "x"), x)
