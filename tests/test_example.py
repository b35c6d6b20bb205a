"""examples/logistic_regression.py: 4 ranks train the same model as 1 process, to 1e-6."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_shutdown import assert_ends_clean

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "logistic_regression.py"
EPOCHS = 15
TIMEOUT = 120
LINE_RE = re.compile(r"epoch +(\d+)  loss ([0-9.]+)  test accuracy ([0-9.]+)")


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def epochs(stdout: str) -> list[tuple[float, float]]:
    found = [(float(m[2]), float(m[3])) for m in LINE_RE.finditer(stdout)]
    assert [int(m[1]) for m in LINE_RE.finditer(stdout)] == list(range(1, EPOCHS + 1)), stdout
    return found


@pytest.mark.timeout(2 * TIMEOUT + 10)
def test_four_ranks_equal_one_process(tmp_path):
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pytest.fail("the example needs scikit-learn: pip install '.[test,examples]'")
    args = [str(EXAMPLE), "--epochs", str(EPOCHS)]
    single = run([sys.executable, *args, "--save-weights", str(tmp_path / "one.npy")])
    launch = [sys.executable, "-m", "ringflow.run", "-np", "4", "--"]
    multi = run([*launch, sys.executable, *args, "--save-weights", str(tmp_path / "four.npy")])
    assert_ends_clean(multi)  # no ERROR or WARNING line either
    one, four = np.load(tmp_path / "one.npy"), np.load(tmp_path / "four.npy")
    assert one.shape == four.shape == (65, 10)
    np.testing.assert_allclose(four, one, rtol=0, atol=1e-6)
    assert np.any(one != 0)

    # Only rank 0 reports, once per epoch, and its losses match the single process's.
    assert all(line.startswith("[0] ") for line in multi.stdout.splitlines()), multi.stdout
    single_epochs, multi_epochs = epochs(single.stdout), epochs(multi.stdout)
    np.testing.assert_allclose(
        [loss for loss, _ in multi_epochs], [loss for loss, _ in single_epochs], atol=1e-6
    )
    assert single_epochs[-1][0] < single_epochs[0][0]  # it learns
