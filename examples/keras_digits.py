"""Keras 3 data-parallel training of an MLP on scikit-learn's bundled digits, Horovod style.

    ringflow run -np 2 python examples/keras_digits.py
    python examples/keras_digits.py                    # one process

A script written for ``horovod.tensorflow.keras`` with one changed import:
``import ringflow.keras as hvd``. Each rank trains on its own shard of the training set; the
learning rate is scaled by the number of ranks (the global batch is size times larger) and warmed
up to it over the first epochs; ``hvd.DistributedOptimizer`` averages the gradients over the ranks
before every step; rank 0's initial weights are broadcast after the first batch; metrics are
averaged over the ranks at the end of each epoch; rank 0 alone writes checkpoints and prints.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits

import ringflow.keras as hvd


def load_split(seed: int = 0):
    """Digits (1797 images, 64 pixels, 10 classes) scaled to [0, 1], a fixed 80/20 split."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    return (x[order[n_test:]], y[order[n_test:]]), (x[order[:n_test]], y[order[:n_test]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="per-rank learning rate")
    parser.add_argument("--checkpoint-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()

    # Horovod: initialize.
    hvd.init()
    keras.utils.set_random_seed(1234 + hvd.rank())  # ranks start apart; the callback aligns them

    (x_train, y_train), (x_test, y_test) = load_split()
    # Horovod: every rank reads its own shard.
    x_train, y_train = x_train[hvd.rank() :: hvd.size()], y_train[hvd.rank() :: hvd.size()]

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    # Horovod: scale the learning rate by the number of workers.
    scaled_lr = args.lr * hvd.size()
    opt = keras.optimizers.SGD(learning_rate=scaled_lr, momentum=0.9)
    # Horovod: add the distributed optimizer.
    opt = hvd.DistributedOptimizer(opt)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    callbacks = [
        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Horovod: average metrics among workers at the end of every epoch.
        hvd.callbacks.MetricAverageCallback(),
        # Horovod: warm the learning rate up from lr to lr * size over the first 2 epochs.
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=2, verbose=0),
    ]
    checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="keras_digits_")
    # Horovod: save checkpoints only on worker 0 to prevent other workers from corrupting them.
    if hvd.rank() == 0:
        path = os.path.join(checkpoint_dir, "checkpoint-{epoch}.keras")
        callbacks.append(keras.callbacks.ModelCheckpoint(path))

    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=2 if hvd.rank() == 0 else 0,
    )
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    if hvd.rank() == 0:
        print(
            f"final after {args.epochs} epochs on {hvd.size()} rank(s): test loss {loss:.4f}  "
            f"test accuracy {accuracy:.4f}  checkpoints in {checkpoint_dir}",
            flush=True,
        )


if __name__ == "__main__":
    main()
