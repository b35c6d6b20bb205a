"""examples/pytorch_digits.py and pytorch_synthetic_benchmark.py run under ``ringflow run -np 2``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_shutdown import assert_ends_clean

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # per job; each takes ~5 s on an idle 2-core machine
LAUNCH = [sys.executable, "-m", "ringflow.run", "-np", "2", "--timeout", str(TIMEOUT), "--"]
# 4 epochs at 2 ranks reach 0.969 here (the run is deterministic: seeded, fixed summation order);
# the bound leaves room for another platform's floating-point rounding.
DIGITS_EPOCHS, DIGITS_MIN_ACCURACY = 4, 0.90
FINAL_RE = re.compile(
    r"^\[0\] final after (\d+) epochs \([0-9.]+ s\): train loss ([0-9.]+)  "
    r"test loss ([0-9.]+)  test accuracy ([0-9.]+)$",
    re.M,
)


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT + 30
    )
    assert_ends_clean(result)  # exit status 0, and no ERROR or WARNING line
    return result


@pytest.mark.timeout(TIMEOUT + 60)
def test_digits_two_ranks_learn_and_rank_0_reports_once() -> None:
    pytest.importorskip("sklearn", reason="the example needs scikit-learn ('.[examples]')")
    pytest.importorskip("tqdm", reason="the example needs tqdm")
    script = str(EXAMPLES / "pytorch_digits.py")
    result = run([*LAUNCH, sys.executable, script, "--epochs", str(DIGITS_EPOCHS)])

    # Only rank 0 writes to stdout: a header line, then the result exactly once.
    lines = result.stdout.splitlines()
    assert all(line.startswith("[0] ") for line in lines), result.stdout
    finals = FINAL_RE.findall(result.stdout)
    assert len(finals) == 1, result.stdout
    epochs, train_loss, test_loss, accuracy = finals[0]
    assert int(epochs) == DIGITS_EPOCHS
    assert float(accuracy) >= DIGITS_MIN_ACCURACY, result.stdout
    assert 0 < float(test_loss) < 1.0 and 0 < float(train_loss) < 1.0, result.stdout
    assert "2 rank(s), 1438 training images (719 per rank), 359 test" in lines[0]


@pytest.mark.timeout(TIMEOUT + 60)
def test_synthetic_benchmark_two_iterations_two_ranks() -> None:
    script = str(EXAMPLES / "pytorch_synthetic_benchmark.py")
    small = ["--batch-size", "8", "--widths", "8,16", "--image-size", "16"]
    steps = ["--num-iters", "2", "--num-batches-per-iter", "2", "--num-warmup-batches", "1"]
    result = run([*LAUNCH, sys.executable, script, *small, *steps])

    out = result.stdout
    assert all(line.startswith("[0] ") for line in out.splitlines()), out
    iters = re.findall(r"^\[0\] Iter #(\d+): ([0-9.]+) img/sec per CPU$", out, re.M)
    assert [int(i) for i, _ in iters] == [0, 1], out
    assert all(float(v) > 0 for _, v in iters), out
    assert "[0] Number of CPUs: 2" in out
    per_cpu = re.findall(r"^\[0\] Img/sec per CPU: ([0-9.]+) \+-([0-9.]+)$", out, re.M)
    total = re.findall(r"^\[0\] Total img/sec on 2 CPU\(s\): ([0-9.]+) \+-([0-9.]+)$", out, re.M)
    assert len(per_cpu) == len(total) == 1, out
    assert float(total[0][0]) == pytest.approx(2 * float(per_cpu[0][0]), abs=0.15), out


@pytest.mark.timeout(TIMEOUT + 60)
def test_synthetic_benchmark_mlp_two_ranks() -> None:
    script = str(EXAMPLES / "pytorch_synthetic_benchmark.py")
    steps = ["--num-iters", "2", "--num-batches-per-iter", "2", "--num-warmup-batches", "1"]
    result = run([*LAUNCH, sys.executable, script, "--model", "mlp", "--batch-size", "64", *steps])

    out = result.stdout
    assert "[0] Model: MLP 784-1024-1024-10" in out, out
    # 784*1024 + 1024 + 1024*1024 + 1024 + 1024*10 + 10 parameters
    assert "[0] Parameters: 1.86 M, inputs of 784 features" in out, out
    iters = re.findall(r"^\[0\] Iter #(\d+): ([0-9.]+) img/sec per CPU$", out, re.M)
    assert [int(i) for i, _ in iters] == [0, 1], out
    assert all(float(v) > 0 for _, v in iters), out
