"""Train the digits CNN of pytorch_digits.py on Spark: the training set is a DataFrame whose
partitions are the ranks' shards.

    python examples/spark_digits.py --num-proc 4                  # local[4]
    spark-submit --master yarn --num-executors 4 --executor-cores 1 \\
        --conf spark.dynamicAllocation.enabled=false examples/spark_digits.py --num-proc 4

``ringflow.spark.run(train, data=df, num_proc=N)`` starts N barrier tasks; rank r receives the
rows of partition r and trains on them with ``hvd.DistributedOptimizer`` (Horovod's pattern:
broadcast rank 0's state, average the gradients). Partitions are uneven, so every rank takes the
same number of steps per epoch (the largest shard's, the others wrap around their rows) and no
allreduce waits for a rank that has run out of data. Every rank scores its share of the test set
and the sums are exact. The driver prints rank 0's result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the model lives beside this script
import pytorch_digits

# The tasks import neither this script nor pytorch_digits: ship their code by value.
cloudpickle.register_pickle_by_value(pytorch_digits)
if __name__ != "__main__":  # imported (tests): __main__ goes by value anyway
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def train(
    rows: list[dict[str, Any]], epochs: int, batch_size: int, lr: float, seed: int
) -> dict[str, float]:
    """One rank: its partition's rows -> a trained replica; the metrics over all ranks."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset

    import ringflow.torch as hvd

    hvd.init()
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # one core per task
    images = torch.tensor(np.array([row["features"] for row in rows], np.float32)).view(-1, 1, 8, 8)
    labels = torch.tensor([row["label"] for row in rows], dtype=torch.int64)
    # The same number of steps on every rank: the largest shard's.
    steps = int(hvd.allreduce(torch.tensor(-(-len(rows) // batch_size)), op=hvd.Max))

    model = pytorch_digits.Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr * hvd.size(), momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    generator = torch.Generator().manual_seed(seed + hvd.rank())
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(rows), generator=generator)
        order = order.repeat(-(-steps * batch_size // max(len(rows), 1)))  # wrap around
        for step in range(steps):
            batch = order[step * batch_size : (step + 1) * batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()

    _, test_set = pytorch_digits.load_split()
    share = Subset(test_set, range(hvd.rank(), len(test_set), hvd.size()))
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss, correct, count
    with torch.no_grad():
        for x, y in DataLoader(share, batch_size=256):
            logits = model(x)
            sums += torch.tensor(
                [
                    F.cross_entropy(logits, y, reduction="sum").item(),
                    (logits.argmax(1) == y).sum().item(),
                    len(y),
                ],
                dtype=torch.float64,
            )
    loss, correct, count = hvd.allreduce(sums, op=hvd.Sum, name="test_metrics").tolist()
    hvd.shutdown()
    return {"test_loss": loss / count, "test_accuracy": correct / count, "rows": len(rows)}


def train_on_spark(spark: Any, num_proc: int, epochs: int, batch_size: int = 16) -> dict:
    """Build the training DataFrame, run the job, return rank 0's metrics plus the shard sizes."""
    import ringflow.spark

    train_set, _ = pytorch_digits.load_split()
    images, labels = train_set.tensors
    df = spark.createDataFrame(
        [(x.flatten().tolist(), int(y)) for x, y in zip(images, labels)],
        "features array<float>, label int",
    ).repartition(num_proc)
    results = ringflow.spark.run(
        train, args=(epochs, batch_size, 0.02, 42), num_proc=num_proc, data=df
    )
    return {**results[0], "rows_per_rank": [r["rows"] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-proc", type=int, default=2, help="ranks = Spark tasks (2)")
    parser.add_argument("--epochs", type=int, default=15, help="passes over the data (15)")
    parser.add_argument("--master", default=None, help="Spark master (spark-submit's, else local)")
    args = parser.parse_args()

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("ringflow spark_digits")
    if args.master:
        builder = builder.master(args.master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit, which sets a master
        builder = builder.master(f"local[{args.num_proc}]")
    spark = builder.getOrCreate()
    start = time.perf_counter()
    metrics = train_on_spark(spark, args.num_proc, args.epochs)
    print(
        f"{args.num_proc} ranks, rows per rank {metrics['rows_per_rank']}, {args.epochs} epochs "
        f"({time.perf_counter() - start:.1f} s): test loss {metrics['test_loss']:.4f}  "
        f"test accuracy {metrics['test_accuracy']:.4f}",
        flush=True,
    )
    spark.stop()


if __name__ == "__main__":
    main()
