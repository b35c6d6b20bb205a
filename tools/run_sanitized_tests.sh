#!/usr/bin/env bash
# Builds ringflow's core with a sanitizer, in a virtual environment of its own, and runs tests
# with the sanitizer's runtime preloaded (Python itself is not instrumented).
#
#   tools/run_sanitized_tests.sh address|thread [pytest arguments]    (default: the whole suite)
#
# address = AddressSanitizer + UndefinedBehaviorSanitizer, every error fatal; thread =
# ThreadSanitizer. The tests run from a copy outside the checkout, so that `ringflow` is the
# instrumented install and not an editable one. RINGFLOW_SANITIZE_DIR (default
# /tmp/ringflow-<mode>) keeps the environment and the build between runs.
set -euo pipefail

mode=${1:?usage: tools/run_sanitized_tests.sh address|thread [pytest arguments]}
shift
case $mode in
  address) runtime="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" ;;
  thread) runtime="$(gcc -print-file-name=libtsan.so)" ;;
  *) echo "unknown sanitizer '$mode' (address or thread)" >&2 && exit 2 ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
work=${RINGFLOW_SANITIZE_DIR:-/tmp/ringflow-$mode}

# --system-site-packages: the test dependencies already installed beside the Python (CI installs
# them for the main run: torch, TensorFlow, Spark, Ray, mpi4py) are reused, not fetched again;
# ringflow itself is the instrumented install of this venv, which comes first on sys.path.
[[ -x $work/venv/bin/python ]] || python -m venv --system-site-packages "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
pip install -q scikit-build-core pybind11
# Without the CUDA kernels unless RINGFLOW_SANITIZE_CUDA says otherwise: the main build compiles
# them already and their code cannot run here. Exported: the tests read what was built.
export RINGFLOW_CUDA=${RINGFLOW_SANITIZE_CUDA:-OFF}
pip install -q --no-build-isolation \
  -Cbuild-dir="$work/build" -Ccmake.define.RINGFLOW_SANITIZE="$mode" \
  -Ccmake.build-type=RelWithDebInfo "$root[test,examples]"

rm -rf "$work/run" && mkdir -p "$work/run"
cp -r "$root/tests" "$root/examples" "$work/run/"
cd "$work/run"
export LD_PRELOAD=$runtime
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}  # CPython's own allocations are not leaks
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1}
# The fuzz targets are sanitized builds of their own, made from the checkout: not run here.
if (($#)); then
  exec python -m pytest --ignore=tests/test_fuzz.py "$@"
fi
exec python -m pytest --ignore=tests/test_fuzz.py tests
