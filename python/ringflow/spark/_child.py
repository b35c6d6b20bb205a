"""One rank of a `ringflow.spark.run` job: ``python -m ringflow.spark._child WORKDIR``.

Reads ``WORKDIR/input.pkl`` (header, cloudpickled (fn, args, kwargs), rows), runs ``fn`` and
writes ``("ok", pickled result)`` or ``("error", message)`` to ``WORKDIR/output.pkl``. A failure
is reported to the driver's control store *before* this process exits, so the driver learns of
the rank that failed first, ahead of the peers that fail after it (they see it leave).

The task holds this process's stdin open for its whole life; EOF means the task is gone (killed,
cancelled), and the rank goes with it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from pathlib import Path

import cloudpickle


def _exit_with_task() -> None:
    # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts the interpreter's
    # shutdown. Returns b"" at EOF: the task process closed its end or died.
    while os.read(0, 4096):
        pass
    os._exit(1)


def main() -> int:
    workdir = Path(sys.argv[1])
    threading.Thread(target=_exit_with_task, name="ringflow-spark-parent", daemon=True).start()
    header, payload, rows = cloudpickle.loads((workdir / "input.pkl").read_bytes())
    try:
        fn, args, kwargs = cloudpickle.loads(payload)
        if rows is not None:
            args = (rows, *args)
        outcome = ("ok", cloudpickle.dumps(fn(*args, **kwargs)))
        code = 0
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        _report(header, message, traceback.format_exc(), peer=_is_peer_failure(error))
        _leave()  # peers blocked on this rank raise now rather than at their timeout
        outcome, code = ("error", message), 1
    partial = workdir / "output.pkl.partial"
    partial.write_bytes(cloudpickle.dumps(outcome))
    partial.rename(workdir / "output.pkl")
    return code


def _is_peer_failure(error: BaseException) -> bool:
    from ringflow import PeerFailureError

    return isinstance(error, PeerFailureError)


def _report(header: dict, message: str, trace: str, *, peer: bool) -> None:
    from ringflow import _core
    from ringflow.spark._task import send_failure

    try:
        control = _core.StoreClient(
            *header["control"],
            secret=header["secret"].encode(),
            job_id=header["job_id"],
            timeout_s=10.0,
        )
    except Exception:
        return  # the driver is gone: the task's own exit status still fails the job
    try:
        send_failure(control, header["rank"], header["host"], message, trace, peer=peer)
    finally:
        control.close()


def _leave() -> None:
    import ringflow

    with contextlib.suppress(Exception):
        ringflow.shutdown()


if __name__ == "__main__":
    sys.exit(main())
