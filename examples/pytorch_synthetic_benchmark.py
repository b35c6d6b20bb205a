"""Training throughput (images/s) of a small ResNet on synthetic data, as Horovod's benchmark.

    ringflow run -np 2 --bind-to core python examples/pytorch_synthetic_benchmark.py
    python examples/pytorch_synthetic_benchmark.py --num-iters 3    # one process

Horovod's ``pytorch_synthetic_benchmark.py`` with ``import ringflow.torch as hvd``, on CPU, and a
model small enough for a laptop: a ResNet defined here (no torchvision) with one basic block per
stage by default and widths 32-64-128-256 on 32x32 RGB images (1.2 M parameters, 38 gradient
tensors, 4.9 MB of float32 gradients per step). Every rank trains on the same fixed random batch;
``hvd.DistributedOptimizer`` averages the gradients. After ``--num-warmup-batches`` untimed steps,
it times ``--num-iters`` iterations of ``--num-batches-per-iter`` steps each and prints, on rank 0,
Horovod's lines: images/s per iteration, ``Img/sec per CPU: mean +-1.96 std`` over iterations,
and the total for all ranks (size x per-rank figure). benchmarks/bench_torch_ddp.py reuses the
model, data and timing below to measure torch DistributedDataParallel the same way.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import ringflow.torch as hvd


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1, bias=False)
        self.bn2 = norm(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), norm(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class MLP(nn.Sequential):
    """784-1024-1024-10 perceptron (``--model mlp``): few, large gradients, little compute."""

    def __init__(self, sizes: Sequence[int] = (784, 1024, 1024, 10)):
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
            layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        super().__init__(*layers)


class ResNet(nn.Module):
    """3x3 stem, then stages of basic blocks (each stage after the first halves H and W)."""

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: int = 1,
        num_classes: int = 10,
        norm: type[nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), norm(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, norm))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", choices=("resnet", "mlp"), default="resnet", help="the model to train"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="input batch size per rank")
    parser.add_argument(
        "--num-warmup-batches",
        type=int,
        default=10,
        help="number of warm-up batches that don't count towards the benchmark",
    )
    parser.add_argument(
        "--num-batches-per-iter", type=int, default=10, help="batches per benchmark iteration"
    )
    parser.add_argument("--num-iters", type=int, default=10, help="benchmark iterations")
    parser.add_argument("--image-size", type=int, default=32, help="height and width of an image")
    parser.add_argument(
        "--widths", default="32,64,128,256", help="channels of each stage, comma-separated"
    )
    parser.add_argument("--blocks-per-stage", type=int, default=1, help="basic blocks per stage")
    parser.add_argument("--num-classes", type=int, default=10, help="classes of the labels")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument(
        "--fp16-allreduce", action="store_true", help="use fp16 compression during allreduce"
    )
    parser.add_argument(
        "--sync-batch-norm", action="store_true", help="hvd.SyncBatchNorm instead of BatchNorm2d"
    )
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, norm: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """The model the arguments describe, with the same initial parameters in every process."""
    torch.manual_seed(0)
    if args.model == "mlp":
        return MLP()
    widths = [int(w) for w in args.widths.split(",")]
    return ResNet(widths, args.blocks_per_stage, args.num_classes, norm)


def synthetic_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images and labels (the same in every process)."""
    generator = torch.Generator().manual_seed(1)
    size = (args.batch_size, 3, args.image_size, args.image_size)
    if args.model == "mlp":
        size = (args.batch_size, 784)
    data = torch.randn(size, generator=generator)
    target = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator)
    return data, target


def run_benchmark(
    benchmark_step: Callable[[], None], args: argparse.Namespace, log: Callable[[str], None]
) -> list[float]:
    """Warm up, then time the iterations; images/s of this process per iteration."""
    log("Running warmup...")
    timeit.timeit(benchmark_step, number=args.num_warmup_batches)
    log("Running benchmark...")
    img_secs = []
    for x in range(args.num_iters):
        time = timeit.timeit(benchmark_step, number=args.num_batches_per_iter)
        img_sec = args.batch_size * args.num_batches_per_iter / time
        log(f"Iter #{x}: {img_sec:.1f} img/sec per CPU")
        img_secs.append(img_sec)
    return img_secs


def report(img_secs: Sequence[float], size: int, log: Callable[[str], None]) -> None:
    """Horovod's two result lines: per rank, and for all ranks, mean +- 1.96 std."""
    img_sec_mean = float(np.mean(img_secs))
    img_sec_conf = 1.96 * float(np.std(img_secs))
    log(f"Img/sec per CPU: {img_sec_mean:.1f} +-{img_sec_conf:.1f}")
    log(f"Total img/sec on {size} CPU(s): {size * img_sec_mean:.1f} +-{size * img_sec_conf:.1f}")


def main() -> None:
    args = parse_args()
    hvd.init()
    torch.set_num_threads(args.num_threads)

    model = build_model(args, hvd.SyncBatchNorm if args.sync_batch_norm else nn.BatchNorm2d)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size())
    # Horovod: (optional) compression algorithm.
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    # Horovod: wrap optimizer with DistributedOptimizer.
    optimizer = hvd.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters(), compression=compression
    )
    # Horovod: broadcast parameters & optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    data, target = synthetic_batch(args)

    def benchmark_step() -> None:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()

    def log(s: str) -> None:
        if hvd.rank() == 0:
            print(s, flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    if args.model == "mlp":
        log("Model: MLP 784-1024-1024-10")
        log(f"Parameters: {n_params / 1e6:.2f} M, inputs of 784 features")
    else:
        log(f"Model: ResNet, widths {args.widths}, {args.blocks_per_stage} block(s) per stage")
        log(f"Parameters: {n_params / 1e6:.2f} M, images {args.image_size}x{args.image_size}")
    log(f"Batch size: {args.batch_size}")
    log(f"Number of CPUs: {hvd.size()}")
    img_secs = run_benchmark(benchmark_step, args, log)
    report(img_secs, hvd.size(), log)
    hvd.shutdown()


if __name__ == "__main__":
    main()
