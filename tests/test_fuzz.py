"""The libFuzzer targets of fuzz/ (frame parser, handshake, store requests), run for a bounded time.

Builds them with clang (ASan + UBSan, ``fuzz/run.sh 0``) in ``build/fuzz`` (or
``RINGFLOW_FUZZ_BUILD_DIR``), then runs each target for its share of ``RINGFLOW_FUZZ_SECONDS``
(total, default 60). Any crash, sanitizer report or hang (one input > 10 s) fails the test with
the fuzzer's output; the input that caused it is left in the test's tmp directory. The corpus
grows in the build directory between runs. Skips when clang++, libFuzzer or cmake is missing
(``apt-get install clang-14 libclang-rt-14-dev cmake``, as ``.ci/run`` does). For longer runs,
use ``fuzz/run.sh SECONDS`` directly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("frame_fuzzer", "handshake_fuzzer", "store_fuzzer")
TOTAL_SECONDS = int(os.environ.get("RINGFLOW_FUZZ_SECONDS", "30"))
SECONDS_PER_TARGET = max(1, TOTAL_SECONDS // len(TARGETS))
BUILD_SECONDS = 600
"""Bound on the fuzz build (about 20 s on 2 cores here)."""

log = logging.getLogger(__name__)


def _find_clang() -> str | None:
    for name in ("clang++", *(f"clang++-{version}" for version in range(19, 13, -1))):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def fuzz_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clang = _find_clang()
    if clang is None:
        pytest.skip("no clang++ on PATH (apt-get install clang-14 libclang-rt-14-dev)")
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on PATH (apt-get install cmake)")
    probe = tmp_path_factory.mktemp("libfuzzer-probe")
    (probe / "probe.cc").write_text(
        'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n'
    )
    linked = subprocess.run(
        [clang, "-fsanitize=fuzzer,address,undefined", "probe.cc", "-o", "probe"],
        cwd=probe,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if linked.returncode != 0:
        pytest.skip(f"{clang} cannot link libFuzzer (apt-get install libclang-rt-14-dev)")
    build = Path(os.environ.get("RINGFLOW_FUZZ_BUILD_DIR", REPO / "build" / "fuzz"))
    env = dict(os.environ, CXX=clang, RINGFLOW_FUZZ_BUILD_DIR=str(build))
    built = subprocess.run(
        ["bash", str(REPO / "fuzz" / "run.sh"), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert built.returncode == 0, f"fuzz build failed:\n{(built.stdout + built.stderr)[-6000:]}"
    return build


@pytest.mark.timeout(BUILD_SECONDS + SECONDS_PER_TARGET + 120)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(fuzz_build: Path, target: str, tmp_path: Path) -> None:
    corpus = fuzz_build / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    command = [
        str(fuzz_build / "fuzz" / target),
        str(corpus),
        str(fuzz_build / "seeds" / target),
        f"-max_total_time={SECONDS_PER_TARGET}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SECONDS_PER_TARGET + 120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{target} failed (exit {result.returncode}); the input is in {tmp_path}:\n"
        + output[-8000:]
    )
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", output))
    executed = int(stats.get("number_of_executed_units", 0))
    log.info(
        "%s: %d inputs in %d s (%s exec/s), %s new corpus units",
        target,
        executed,
        SECONDS_PER_TARGET,
        stats.get("average_exec_per_sec"),
        stats.get("new_units_added"),
    )
    assert executed > 0, f"{target} ran no inputs:\n{output[-4000:]}"
