"""The Spark and Ray integrations are optional: nothing of them loads until used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_importing_ringflow_loads_neither_spark_nor_ray():
    result = python(
        """
        import sys
        import ringflow, ringflow.spark, ringflow.ray
        loaded = sorted(m for m in ("pyspark", "py4j", "ray") if m in sys.modules)
        print(loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        ("pyspark", "ringflow.spark.run(print, num_proc=1)", "ringflow[spark]"),
        ("ray", "ringflow.ray.RayExecutor(1).start()", "ringflow[ray]"),
    ],
)
def test_missing_extra_says_which_to_install(blocked, call, extra):
    # sys.modules[name] = None makes `import name` raise ImportError, as if it were absent.
    result = python(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        import ringflow.spark, ringflow.ray
        try:
            {call}
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install '{extra}'" in result.stdout, result.stdout
