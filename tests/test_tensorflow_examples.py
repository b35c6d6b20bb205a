"""examples/keras_digits.py and examples/tf2_digits_tape.py run under ``ringflow run -np 2``."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("tensorflow") is None:  # found, not imported: TF runs in the ranks
    pytest.skip("tensorflow-cpu is not installed", allow_module_level=True)
if importlib.util.find_spec("keras") is None:
    pytest.skip("keras is not installed", allow_module_level=True)
if importlib.util.find_spec("sklearn") is None:
    pytest.skip("the examples need scikit-learn ('.[examples]')", allow_module_level=True)

from tests import harness

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 120  # each takes ~10 s on an idle 2-core machine, most of it importing TensorFlow
LAUNCH = [sys.executable, "-m", "ringflow.run", "-np", "2", "--timeout", str(TIMEOUT), "--"]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [*LAUNCH, sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT + 30,
        env=harness.clean_env({"TF_CPP_MIN_LOG_LEVEL": "3", "TF_NUM_INTRAOP_THREADS": "1"}),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(TIMEOUT + 60)
def test_keras_digits_learns_and_checkpoints(tmp_path):
    out = run("keras_digits.py", "--epochs", "3", "--checkpoint-dir", str(tmp_path))
    finals = re.findall(
        r"^\[0\] final after 3 epochs on 2 rank\(s\): .*test accuracy ([0-9.]+)", out, re.M
    )
    assert len(finals) == 1, out
    assert float(finals[0]) >= 0.85, out
    assert not re.search(r"^\[1\]", out, re.M), "only rank 0 prints"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"checkpoint-{e}.keras" for e in (1, 2, 3)
    ]


@pytest.mark.timeout(TIMEOUT + 60)
def test_tf2_tape_example_learns():
    out = run("tf2_digits_tape.py", "--steps", "120")
    finals = re.findall(r"^\[0\] final test accuracy ([0-9.]+) on 2 rank\(s\)$", out, re.M)
    assert len(finals) == 1, out
    assert float(finals[0]) >= 0.85, out
