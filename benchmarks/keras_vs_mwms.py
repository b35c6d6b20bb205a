"""ringflow.keras against TensorFlow's MultiWorkerMirroredStrategy (RING collectives), and the
overlapped gradient path against one grouped allreduce per step.

    python benchmarks/keras_vs_mwms.py [--rounds 3] [--sizes 0.6,8,33] [--steps 30]

An MLP 784-h-h-10 whose gradients are 0.6 / 8 / 33 MiB (float32), batch 64 per worker, SGD,
synthetic data, 2 workers on this machine, trained with ``model.fit`` four ways:

- ringflow: Keras 3 with ``ringflow.keras.DistributedOptimizer`` under ``ringflow run -np 2``
  (one allreduce enqueued per gradient as backward produces it, one wait per step);
- grouped: the same with ``groups=1``: one grouped allreduce of every gradient per step, after
  backward (the overlap's yardstick, run at the largest size);
- MWMS: ``tf.distribute.MultiWorkerMirroredStrategy`` with
  ``CommunicationImplementation.RING``, through tf-keras (``TF_USE_LEGACY_KERAS=1``): Keras 3's
  ``model.fit`` does not run under MWMS;
- single: one process, plain Keras 3, batch 64 (the N=1 yardstick); ringflow1: the same with
  ``ringflow.keras.DistributedOptimizer`` in a job of one (its N=1 overhead).

Every process runs TensorFlow with 1 intra-op and 2 inter-op threads. The jobs alternate
(ringflow, MWMS, grouped, single per size) ``--rounds`` times so that machine load hits all; each
job reports rank 0's steps/s over the steps after ``--warmup``; a system's figure is the median
over rounds. Needs tensorflow-cpu and, for MWMS, tf-keras matching TF (tf-keras==2.21.0).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
BATCH = 64


def width_for(mib: float) -> int:
    """h such that the MLP 784-h-h-10 has about mib MiB of float32 parameters."""
    target = mib * 2**20 / 4
    h = 1
    while 784 * h + h + h * h + h + 10 * h + 10 < target:
        h += 1
    return h


def _env() -> dict:
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2")
    return env


# -- workers ----------------------------------------------------------------------------------


def _timer(callback_base, warmup, out):
    class Timer(callback_base):
        def on_train_batch_end(self, batch, logs=None):
            if batch == warmup - 1 or batch == out["last"]:
                out["t"].append(time.perf_counter())

    return Timer()


def _data(np, steps):
    gen = np.random.default_rng(0)
    x = gen.standard_normal((BATCH, 784)).astype(np.float32)
    y = gen.integers(0, 10, BATCH)
    return x, y


def worker(kind: str, mib: float, steps: int, warmup: int) -> None:
    import numpy as np

    h = width_for(mib)
    out = {"t": [], "last": steps - 1}
    if kind == "mwms":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tensorflow as tf
        import tf_keras as keras

        comm = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)
        x, y = _data(np, steps)
        ds = tf.data.Dataset.from_tensors((x, y)).unbatch().repeat().batch(BATCH * 2)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
        with strategy.scope():
            model = _mlp(keras, h)
            model.compile(optimizer=keras.optimizers.SGD(0.01), loss=_loss(keras))
        rank = strategy.cluster_resolver.task_id
    else:
        os.environ["KERAS_BACKEND"] = "tensorflow"
        import keras
        import tensorflow as tf

        x, y = _data(np, steps)
        ds = tf.data.Dataset.from_tensors((x, y)).repeat()
        model = _mlp(keras, h)
        optimizer = keras.optimizers.SGD(0.01)
        rank = 0
        if kind in ("ringflow", "grouped", "ringflow1"):
            import ringflow.keras as hvd

            hvd.init()
            rank = hvd.rank()
            optimizer = hvd.DistributedOptimizer(optimizer, groups=1 if kind == "grouped" else None)
        model.compile(optimizer=optimizer, loss=_loss(keras), jit_compile=False)
    model.fit(
        ds,
        steps_per_epoch=steps,
        epochs=1,
        verbose=0,
        callbacks=[_timer(keras.callbacks.Callback, warmup, out)],
    )
    if rank == 0:
        t0, t1 = out["t"]
        print("RESULT " + json.dumps({"steps_per_s": (steps - warmup) / (t1 - t0)}), flush=True)


def _mlp(keras, h):
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(h, activation="relu"),
            keras.layers.Dense(h, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# -- driver -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(text: str) -> float:
    for line in text.splitlines():
        if "RESULT " in line:
            return json.loads(line.split("RESULT ", 1)[1])["steps_per_s"]
    raise RuntimeError(f"no result in:\n{text[-3000:]}")


def run_job(kind: str, mib: float, args) -> float:
    me = [
        sys.executable,
        HERE,
        "--worker",
        kind,
        "--mib",
        str(mib),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    timeout = args.timeout
    if kind in ("single", "ringflow1"):
        done = subprocess.run(me, capture_output=True, text=True, env=_env(), timeout=timeout)
        return _result(done.stdout + done.stderr)
    if kind in ("ringflow", "grouped"):
        cmd = [
            sys.executable,
            "-m",
            "ringflow.run",
            "-np",
            "2",
            "--timeout",
            str(timeout),
            "--",
            *me,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout + 30)
        return _result(done.stdout + done.stderr)
    ports = [_free_port(), _free_port()]
    procs = []
    for i in range(2):
        config = {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": i},
        }
        env = _env() | {"TF_CONFIG": json.dumps(config)}
        procs.append(
            subprocess.Popen(
                me, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return _result(outputs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mib", type=float, default=8.0, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="0.6,8,33", help="gradient MiB of the MLPs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="steps per job")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed")
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.mib, args.steps, args.warmup)
        return
    sizes = [float(s) for s in args.sizes.split(",")]
    figures: dict = {}
    for r in range(args.rounds):
        for mib in sizes:
            kinds = ["ringflow", "mwms", "single", "ringflow1"] + (
                ["grouped"] if mib == max(sizes) else []
            )
            for kind in kinds:
                value = run_job(kind, mib, args)
                figures.setdefault(f"{kind} {mib}", []).append(value)
                print(f"round {r + 1}: {kind:8s} {mib:5.1f} MiB  {value:7.2f} steps/s", flush=True)
    print("\nmedians (steps/s):")
    medians = {k: statistics.median(v) for k, v in figures.items()}
    for mib in sizes:
        rf, mw, single, one = (
            medians[f"{k} {mib}"] for k in ("ringflow", "mwms", "single", "ringflow1")
        )
        print(
            f"  {mib:5.1f} MiB  ringflow {rf:7.2f}  MWMS {mw:7.2f}  ringflow/MWMS {rf / mw:5.2f}"
            f"  single {single:7.2f}  ringflow N=1 {one:7.2f} ({one / single:5.2f} of single)"
        )
    top = max(sizes)
    overlap = medians[f"ringflow {top}"] / medians[f"grouped {top}"]
    print(f"  overlapped / one grouped allreduce at {top} MiB: {overlap:5.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": figures, "medians": medians}, f, indent=1)


if __name__ == "__main__":
    main()
