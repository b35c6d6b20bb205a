"""ringflow.keras (Keras 3, TensorFlow backend) at N = 2: the broadcast callback makes ranks
that started from different seeds identical; averaged metrics are equal everywhere; warm-up and
schedule learning rates follow Horovod's formulas; save -> load_model keeps the optimizer's
iterations and trains on. Plus: `import ringflow` never imports TensorFlow, and a missing
TensorFlow is an ImportError naming the extra."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

if importlib.util.find_spec("tensorflow") is None:  # found, not imported: TF runs in the ranks
    pytest.skip("tensorflow-cpu is not installed", allow_module_level=True)
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)

from tests import harness, tf_ranks  # noqa: F401  (tf_ranks: TF environment, before TF)

N = 2
STEPS = 4


def _net(keras, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)]
    )


def _xy(r, rows=STEPS * 8):
    gen = np.random.default_rng([11, r])
    return gen.standard_normal((rows, 6)).astype(np.float32), gen.standard_normal((rows, 1)).astype(
        np.float32
    )


class _Recorder:
    """Keras callbacks that record what the tests check."""

    @staticmethod
    def logs(keras, store):
        class Logs(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                store.append(dict(logs))

        return Logs()

    @staticmethod
    def lrs(keras, store):
        class Rates(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                store.append(float(np.asarray(self.model.optimizer.learning_rate)))

        return Rates()


def _keras_session(path):
    import keras

    import ringflow.keras as hvd

    me = hvd.rank()
    out = {}
    # 1. different seeds; identical after the broadcast callback and one step
    model = _net(keras, seed=me)
    out["before"] = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse")
    x, y = _xy(me)
    raw, averaged = [], []
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            _Recorder.logs(keras, raw),
            hvd.callbacks.MetricAverageCallback(),
            _Recorder.logs(keras, averaged),
        ],
    )
    out["after"] = model.get_weights()
    out["raw"], out["averaged"] = raw[0]["loss"], averaged[0]["loss"]
    # 2. warm-up (3 epochs, 2 of warm-up) and a staircase schedule
    for name, callback, opt_lr in (
        ("warmup", hvd.callbacks.LearningRateWarmupCallback(0.1, warmup_epochs=2, verbose=0), 0.1),
        (
            "schedule",
            hvd.callbacks.LearningRateScheduleCallback(0.1, lambda e: 0.5**e, start_epoch=1),
            0.3,
        ),
    ):
        rates: list = []
        model = _net(keras, seed=0)
        model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(opt_lr)), loss="mse")
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[callback, _Recorder.lrs(keras, rates)],
        )
        out[name] = rates
    # 3. save on rank 0, load everywhere, train on
    model = _net(keras, seed=0)
    model.compile(
        optimizer=hvd.DistributedOptimizer(keras.optimizers.Adam(0.01)),
        loss="mse",
        jit_compile=False,
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    if me == 0:
        model.save(path)
    hvd.allreduce(0.0, name="saved")  # rank 0 has written the file
    loaded = hvd.load_model(path)
    out["iterations loaded"] = int(loaded.optimizer.iterations.numpy())
    out["loaded is distributed"] = type(loaded.optimizer).__name__ == "Adam" and hasattr(
        loaded.optimizer, "_ringflow"
    )
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    out["iterations trained"] = int(loaded.optimizer.iterations.numpy())
    out["loaded after"] = loaded.get_weights()
    return out


def _warmup_lr(epoch, batch, n):
    e = epoch + batch / STEPS + 1.0 / STEPS
    return 0.1 / n * (e * (n - 1) / 2 + 1)


def test_keras_callbacks_optimizer_and_checkpoints(pools, tmp_path):
    path = str(tmp_path / "model.keras")
    results = pools.call(N, _keras_session, path)
    first, second = results
    assert not all(np.array_equal(a, b) for a, b in zip(first["before"], second["before"]))
    for a, b in zip(first["after"], second["after"]):
        np.testing.assert_array_equal(a, b)
    mean = np.mean([r["raw"] for r in results])
    for r in results:
        np.testing.assert_allclose(r["averaged"], mean, rtol=1e-6)
    warmup = [_warmup_lr(e, b, N) for e in range(2) for b in range(STEPS)]
    warmup += [warmup[-1]] * STEPS  # after the warm-up the last rate stays
    schedule = [0.3] * STEPS + [0.05] * STEPS + [0.025] * STEPS
    for r in results:
        np.testing.assert_allclose(r["warmup"], warmup, rtol=1e-6)
        np.testing.assert_allclose(r["schedule"], schedule, rtol=1e-6)
        assert r["loaded is distributed"]
        assert r["iterations loaded"] == STEPS
        assert r["iterations trained"] == 2 * STEPS
    for a, b in zip(first["loaded after"], second["loaded after"]):
        np.testing.assert_array_equal(a, b)


# -- imports --------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=harness.clean_env({"TF_CPP_MIN_LOG_LEVEL": "3"}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_ringflow_never_imports_tensorflow():
    done = _python(
        "import sys, ringflow, ringflow.torch; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_tensorflow_names_the_extra():
    done = _python(
        "import sys; sys.modules['tensorflow'] = None\n"
        "try:\n    import ringflow.tensorflow\nexcept ImportError as e:\n    print(e)\n"
        "try:\n    import ringflow.keras\nexcept ImportError as e:\n    print(e)\n"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "ringflow[tensorflow]" in lines[0]
    assert "ringflow[keras,tensorflow]" in lines[1]


def _alias():
    import ringflow.tensorflow.keras.callbacks as c

    import ringflow.keras
    import ringflow.tensorflow.keras as k

    return k is ringflow.keras, c is ringflow.keras.callbacks


def test_tensorflow_keras_alias(pools):
    assert pools.call(N, _alias) == [(True, True)] * N
