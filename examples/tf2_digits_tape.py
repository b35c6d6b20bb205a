"""A TensorFlow 2 GradientTape training loop on scikit-learn's digits, as Horovod's TF2 example
writes it.

    ringflow run -np 2 python examples/tf2_digits_tape.py

A script written for ``horovod.tensorflow`` with one changed import:
``import ringflow.tensorflow as hvd``. The step is a ``tf.function``: the
``hvd.DistributedGradientTape`` enqueues each gradient's allreduce as soon as backward has
produced it and waits once per step; after the first step every rank takes rank 0's variables.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

import ringflow.tensorflow as hvd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps over all ranks")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    # Horovod: initialize Horovod.
    hvd.init()

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[: len(x) // 5], order[len(x) // 5 :]
    dataset = (
        tf.data.Dataset.from_tensor_slices((x[train], y[train].astype(np.int64)))
        .shard(hvd.size(), hvd.rank())  # Horovod: each rank its own shard
        .repeat()
        .shuffle(1000, seed=hvd.rank())
        .batch(args.batch_size)
    )

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # Horovod: adjust learning rate based on number of workers.
    opt = keras.optimizers.Adam(0.001 * hvd.size())
    opt.build(model.trainable_variables)
    checkpoint_dir = tempfile.mkdtemp(prefix="tf2_digits_")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=opt)

    @tf.function
    def training_step(images, labels, first_batch):
        with tf.GradientTape() as tape:
            loss_value = loss(labels, model(images, training=True))
        # Horovod: add Horovod Distributed GradientTape.
        tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss_value, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        # Horovod: broadcast initial variable states from rank 0 to all other processes.
        # This is necessary to ensure consistent initialization of all workers when
        # training is started with random weights or restored from a checkpoint.
        # Note: broadcast should be done after the first gradient step to ensure optimizer
        # initialization.
        if first_batch:
            hvd.broadcast_variables(model.variables, root_rank=0)
            hvd.broadcast_variables(opt.variables, root_rank=0)
        return loss_value

    # Horovod: adjust number of steps based on number of workers.
    for batch, (images, labels) in enumerate(dataset.take(args.steps // hvd.size())):
        loss_value = training_step(images, labels, batch == 0)
        if batch % 50 == 0 and hvd.rank() == 0:
            print(f"Step #{batch}\tLoss: {float(loss_value):.6f}", flush=True)

    # Horovod: save checkpoints only on worker 0 to prevent other workers from corrupting it.
    if hvd.rank() == 0:
        checkpoint.save(os.path.join(checkpoint_dir, "ckpt"))
        logits = model(x[test], training=False)
        accuracy = float(np.mean(np.argmax(logits, axis=1) == y[test]))
        print(f"final test accuracy {accuracy:.4f} on {hvd.size()} rank(s)", flush=True)


if __name__ == "__main__":
    main()
