"""Data-parallel training of a small CNN on scikit-learn's bundled digits, Horovod style.

    ringflow run -np 4 python examples/pytorch_digits.py
    python examples/pytorch_digits.py                  # one process

A script written for ``horovod.torch`` with one changed import: ``import ringflow.torch as hvd``.
Each rank trains on its own shard of the training set (``DistributedSampler`` with
``num_replicas=hvd.size()``, ``rank=hvd.rank()``, reshuffled every epoch), so one epoch is one pass
over the data by all ranks together. Rank 0's initial parameters and optimizer state are broadcast
to the others; ``hvd.DistributedOptimizer`` averages the gradients over the ranks (each gradient's
allreduce starts from a hook during backward) before every step, so every rank holds the same
model throughout. The learning rate is scaled by the number of ranks, as the global batch is.

Metrics are summed over ranks with ``hvd.allreduce(op=hvd.Sum)`` and divided once by the global
count: the test accuracy is exact (each test image is counted once, on one rank), not a mean of
per-rank means. Rank 0 alone draws the progress bar (stderr) and prints the result (stdout).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import ringflow.torch as hvd

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed split: every rank, every run, every world size gets the same one


def load_split() -> tuple[TensorDataset, TensorDataset]:
    """Digits (1797 images, 8x8 pixels, 10 classes) scaled to [0, 1], split train/test."""
    x, y = load_digits(return_X_y=True)
    images = torch.from_numpy(x.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
    labels = torch.from_numpy(y.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(x)))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test])


class Net(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool, two fully connected layers (~40k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8 -> 4x4
        x = self.dropout(torch.flatten(x, 1))
        return self.fc2(F.relu(self.fc1(x)))


def sums_over_ranks(values: list[float], name: str) -> list[float]:
    """Each value summed over all ranks (one allreduce for the lot)."""
    total = hvd.allreduce(torch.tensor(values, dtype=torch.float64), op=hvd.Sum, name=name)
    return total.tolist()


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    bar: tqdm,
    device: torch.device,
) -> float:
    """One pass over this rank's shard; the mean training loss over all ranks' samples."""
    model.train()
    loss_sum, count = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()  # the hooks start each gradient's allreduce as soon as it is ready
        optimizer.step()  # waits for the averaged gradients, then steps
        loss_sum += loss.item() * len(labels)
        count += len(labels)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    total_loss, total_count = sums_over_ranks([loss_sum, count], "train_metrics")
    return total_loss / total_count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy over the whole test set (every rank scores its own share)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    total_loss, total_correct, total_count = sums_over_ranks(
        [loss_sum, correct, count], "test_metrics"
    )
    return total_loss / total_count, total_correct / total_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="passes over the data (15)")
    parser.add_argument("--batch-size", type=int, default=16, help="per-rank batch size (16)")
    parser.add_argument("--lr", type=float, default=0.02, help="per-rank learning rate (0.02)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (42)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to train (cpu)"
    )
    args = parser.parse_args()

    start = time.perf_counter()
    hvd.init()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # one core per rank: the ranks share the machine's cores
    device = torch.device("cpu")
    if args.device == "cuda":
        # Horovod: one GPU per local rank (ranks share GPUs when there are fewer).
        torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())

    train_set, test_set = load_split()
    # Horovod: each rank reads its own 1/size of the training set, reshuffled each epoch.
    train_sampler = DistributedSampler(
        train_set, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=True, seed=args.seed
    )
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler)
    # Test shares are disjoint (no padding, unlike DistributedSampler): each image counts once.
    test_share = Subset(test_set, range(hvd.rank(), len(test_set), hvd.size()))
    test_loader = DataLoader(test_share, batch_size=256)

    model = Net().to(device)
    # Horovod: scale the learning rate by the number of ranks, as the global batch grows.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=args.momentum)
    # Horovod: start every rank from rank 0's parameters and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    # Horovod: average the gradients over the ranks before each step.
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    if hvd.rank() == 0:
        print(
            f"{hvd.size()} rank(s), {len(train_set)} training images "
            f"({len(train_sampler)} per rank), {len(test_set)} test, batch {args.batch_size} "
            f"per rank",
            flush=True,
        )
    train_loss = test_loss = accuracy = float("nan")
    for epoch in range(1, args.epochs + 1):
        train_sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        with tqdm(
            total=len(train_loader),
            desc=f"epoch {epoch:2d}/{args.epochs}",
            disable=hvd.rank() != 0,
            leave=True,
            mininterval=1.0,  # few refreshes: under `ringflow run` stderr is a pipe
            dynamic_ncols=True,
        ) as bar:
            train_loss = train_epoch(model, train_loader, optimizer, bar, device)
            test_loss, accuracy = evaluate(model, test_loader, device)
            bar.set_postfix(train_loss=f"{train_loss:.4f}", test_accuracy=f"{accuracy:.4f}")

    if hvd.rank() == 0:
        elapsed = time.perf_counter() - start
        print(
            f"final after {args.epochs} epochs ({elapsed:.1f} s): train loss {train_loss:.4f}  "
            f"test loss {test_loss:.4f}  test accuracy {accuracy:.4f}",
            flush=True,
        )
    hvd.shutdown()


if __name__ == "__main__":
    main()
