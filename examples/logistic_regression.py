"""Data-parallel multinomial logistic regression on scikit-learn's bundled digits, in plain numpy.

    ringflow run -np 4 python examples/logistic_regression.py
    python examples/logistic_regression.py            # one process, the reference

Every rank loads the same data and the same fixed train/test split, trains on its own contiguous
shard of the training set (shards may differ in size by one sample), and takes full-batch
gradient steps: each step's gradient is the sum over the shard, added up over all ranks with
``allreduce(op=Sum)`` and divided by the global number of training samples. The parameters start
on rank 0 and are broadcast to the others, so all ranks hold identical parameters at every step,
and the run matches single-process full-batch training up to floating-point summation order.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits

import ringflow as rf

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed split: every rank, every run, every world size gets the same one
INIT_SEED = 1


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits (1797 images, 8x8 pixels, 10 classes) scaled to [0, 1], split train/test."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float64) / 16.0
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def shard(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` samples; sizes differ by at most one."""
    return slice(rank * n // size, (rank + 1) * n // size)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_gradient_sums(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Cross-entropy loss and its gradients, *summed* (not averaged) over the samples given."""
    p = softmax(x @ w + b)
    loss_sum = -np.log(p[np.arange(len(y)), y] + 1e-300).sum()
    p[np.arange(len(y)), y] -= 1.0  # d(loss)/d(logits) for softmax + cross-entropy
    return float(loss_sum), x.T @ p, p.sum(axis=0)


def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ w + b).argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="full-batch steps (default 100)")
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate (default 0.5)")
    parser.add_argument("--save-weights", metavar="FILE", help="rank 0 saves [W; b] as .npy")
    args = parser.parse_args()

    rf.init()
    rank, size = rf.rank(), rf.size()
    x_train, y_train, x_test, y_test = load_split()
    n_train, n_features = x_train.shape
    n_classes = 10
    mine = shard(n_train, rank, size)
    x, y = x_train[mine], y_train[mine]
    if rank == 0:
        print(
            f"{size} rank(s), {n_train} training samples ({len(x)} on rank 0), {len(x_test)} test"
        )

    # Rank 0 draws the initial parameters; the others receive them. (The other ranks start from
    # different values on purpose: only the broadcast makes the ranks agree.)
    init_rng = np.random.default_rng(INIT_SEED if rank == 0 else INIT_SEED + 1000 + rank)
    params = init_rng.normal(scale=0.01, size=(n_features + 1, n_classes))
    rf.broadcast_(params, root_rank=0)

    for epoch in range(1, args.epochs + 1):
        w, b = params[:-1], params[-1]
        loss_sum, grad_w, grad_b = loss_and_gradient_sums(w, b, x, y)
        # One buffer, one allreduce: [dW; db] followed by the loss sum.
        local = np.concatenate([grad_w.ravel(), grad_b, [loss_sum]])
        # Sum, then divide by the global sample count -- not op=Average. Average would give the
        # mean of the per-rank values; if each rank sent its shard's *mean* gradient, that would
        # be a mean of means, which weights every shard equally whatever its size. With uneven
        # shards (the 1438 training samples split 359/360/359/360 over 4 ranks) that is not the
        # gradient of the full training set, and N ranks would not equal 1 rank. Summing the
        # per-sample terms over all ranks and dividing once by n_train is exactly the full-batch
        # mean; only the order of the floating-point additions differs (~1e-16 relative).
        total = rf.allreduce(local, op=rf.Sum, name="gradients_and_loss")
        grad = total[:-1].reshape(n_features + 1, n_classes) / n_train
        params -= args.lr * grad
        if rank == 0:
            loss = total[-1] / n_train  # loss of the parameters before this step
            acc = accuracy(params[:-1], params[-1], x_test, y_test)
            print(f"epoch {epoch:4d}  loss {loss:.6f}  test accuracy {acc:.4f}", flush=True)

    if rank == 0 and args.save_weights:
        np.save(args.save_weights, params)
    rf.shutdown()


if __name__ == "__main__":
    main()
