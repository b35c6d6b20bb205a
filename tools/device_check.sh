#!/usr/bin/env bash
# The device check of issue 14 (GPU memory), end to end in at most 8 minutes on one H200; on a
# machine without a GPU every GPU stage is skipped with its reason and the script exits 0.
#
#   OUT=/some/dir tools/device_check.sh
#
# Stages, in this order; each is timed, logged and bounded by `timeout`, and a failure is
# recorded without stopping the stages that do not depend on it:
#   probe           nvidia-smi, driver, python/torch/CuPy/NCCL versions, GPU name, and a
#                   two-process CUDA IPC smoke test (device_check/ipc_smoke.py)
#   build           pip install --target build-device/site with CUDAARCHS=90-real RINGFLOW_CUDA=ON
#                   (OpenSSL headers from .devdeps/ when the machine has none)
#   kernels         device_check/kernels.py --out $OUT/kernels.json ("missing" if absent)
#   staging         pinned staging against torch's pinned cudaMemcpyAsync and the D2D copy rate
#   bench           ringflow bench --device cuda: allreduce 8 B..256 MiB at N = 2, 4 beside torch
#                   nccl, and 64 MiB beside torch gloo on CUDA tensors
#   streams         stream ordering on 2 ranks (torch side stream, CuPy stream, CAI v3)
#   collectives_nN  N = 1, 2, 4 ranks on the one GPU: every collective x dtype x op x size
#   pytest_gpu      python -m pytest tests/gpu
# Stages after build use that build; without one they are skipped.
#
# Results: $OUT/results.json (per stage: status, seconds, reason, figures), $OUT/device_check.log
# (every stage's output), $OUT/kernels.json; a summary of at most 20 lines is printed last.
# Environment: OUT (default $TMPDIR/ringflow-device-check), PYTHON (python3),
# DEVICE_CHECK_BUDGET_S (465: the whole run, summary included, stays within it),
# DEVICE_CHECK_STAGES (comma-separated subset, e.g. "build,pytest_gpu" for a rerun; a previous
# build in build-device/ is reused when build is not selected).
# Exit status: 0 when no stage failed or timed out (skipped and missing are not failures), else 1.
set -u -o pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
HERE=$REPO/tools/device_check

# --- one stage, run by the driver below as `device_check.sh --stage NAME` under `timeout` ------

reason() { printf '%s\n' "$*" >"$WORK/reason/$STAGE"; }

gpu_env() {
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  export RINGFLOW_TEST_DEVICE=0 RINGFLOW_TIMEOUT=60 PYTHONUNBUFFERED=1
  # shellcheck disable=SC1091
  [ -f "$BUILD_ROOT/runtime.env" ] && . "$BUILD_ROOT/runtime.env"
  return 0
}

stage_probe() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi || true; fi
  "$PY" "$HERE/probe.py" --figures "$WORK/fig/probe.versions.json" || return 1
  if [ -n "$NO_GPU" ]; then
    reason "no GPU: $NO_GPU"
    return 77
  fi
  "$PY" "$HERE/ipc_smoke.py" --figures "$WORK/fig/probe.ipc.json"
}

# The libcrypto to link against when the machine has no OpenSSL development files.
find_libcrypto() {
  local candidate
  for candidate in /usr/lib/x86_64-linux-gnu/libcrypto.so.3 /lib/x86_64-linux-gnu/libcrypto.so.3 \
    /usr/lib64/libcrypto.so.3 $(ldconfig -p 2>/dev/null | awk '/libcrypto\.so\.3 / {print $NF}'); do
    [ -e "$candidate" ] && { echo "$candidate"; return 0; }
  done
  # The one Python's own ssl module loads.
  candidate=$("$PY" -c 'import _ssl; print(_ssl.__file__)' 2>/dev/null | xargs -r ldd 2>/dev/null |
    awk '/libcrypto/ {print $3; exit}')
  [ -n "$candidate" ] && [ -e "$candidate" ] && { echo "$candidate"; return 0; }
  candidate="$REPO/.devdeps/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
  [ -e "$candidate" ] && { echo "$candidate"; return 0; }
  return 1
}

stage_build() {
  local args=() lib runtime=""
  if [ ! -f "$SYSTEM_OPENSSL_HEADER" ]; then
    if [ ! -f "$REPO/.devdeps/usr/include/openssl/hmac.h" ]; then
      reason "no OpenSSL headers ($SYSTEM_OPENSSL_HEADER) and no .devdeps/: run" \
        "tools/device_check/prepare_devdeps.sh here and carry .devdeps"
      return 1
    fi
    if ! lib=$(find_libcrypto); then
      reason "OpenSSL headers from .devdeps/ but no libcrypto.so.3 anywhere"
      return 1
    fi
    echo "OpenSSL: headers $REPO/.devdeps/usr/include, library $lib"
    args+=("-Ccmake.define.OPENSSL_INCLUDE_DIR=$REPO/.devdeps/usr/include")
    args+=("-Ccmake.define.OPENSSL_CRYPTO_LIBRARY=$lib")
    case $lib in "$REPO"/.devdeps/*) runtime="export LD_LIBRARY_PATH=$(dirname "$lib")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" ;; esac
  fi
  mkdir -p "$BUILD_ROOT"
  printf '%s\n' "$runtime" >"$BUILD_ROOT/runtime.env"
  # The image's compiler flags (CMake takes LDFLAGS as its linker flags) once linked libstdc++
  # statically into _core, whose own iostreams then crashed: build with the plain toolchain and
  # require the shared libstdc++.
  echo "toolchain: $(command -v c++) $(c++ --version | head -1); LDFLAGS='${LDFLAGS:-}'" \
    "CXXFLAGS='${CXXFLAGS:-}' CXX='${CXX:-}' CMAKE_ARGS='${CMAKE_ARGS:-}'" \
    "LIBRARY_PATH='${LIBRARY_PATH:-}' libstdc++.so: $(c++ -print-file-name=libstdc++.so)"
  local attempt shared=-lstdc++
  for attempt in plain by-path; do
    if [ "$attempt" = by-path ]; then  # name the shared library itself
      shared=$(ldconfig -p | awk '/libstdc\+\+\.so\.6 .*x86-64/ {print $NF; exit}')
      rm -rf "$BUILD_ROOT/cmake"
    fi
    env -u LDFLAGS -u CXXFLAGS -u CFLAGS -u CPPFLAGS -u CXX -u CC -u CMAKE_ARGS -u LIBRARY_PATH \
      CUDAARCHS=90-real RINGFLOW_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$PY" -m pip install --no-build-isolation --no-deps --no-index --upgrade --target "$SITE" \
      -Cbuild-dir="$BUILD_ROOT/cmake" "${args[@]}" \
      "-Ccmake.define.CMAKE_MODULE_LINKER_FLAGS=-Wl,--no-as-needed $shared -Wl,--as-needed" \
      "$REPO" || return 1
    ldd "$SITE"/ringflow/_core*.so | grep -E "stdc|crypto"
    ldd "$SITE"/ringflow/_core*.so | grep -q "libstdc++" && break
  done
  if ! ldd "$SITE"/ringflow/_core*.so | grep -q "libstdc++"; then
    reason "_core links libstdc++ statically (its iostreams crash next to the process's own)"
    return 1
  fi
  gpu_env
  "$PY" "$HERE/probe.py" --build-figures "$WORK/fig/build.ringflow.json"
}

stage_kernels() {
  if [ ! -f "$HERE/kernels.py" ]; then
    reason "tools/device_check/kernels.py is missing"
    return 78
  fi
  gpu_env
  "$PY" "$HERE/kernels.py" --out "$OUT/kernels.json"
  local rc=$?
  [ $rc = 77 ] && reason "kernels.py skipped itself (see kernels.json)"
  return $rc
}

stage_staging() {
  gpu_env
  "$PY" "$HERE/staging.py" --figures "$WORK/fig/staging.rates.json"
  local rc=$?
  [ $rc = 78 ] && reason "ringflow._core._cuda_staging_times is missing (torch's rates measured)"
  return $rc
}

stage_bench() {
  gpu_env
  local n status=0 common=(allreduce --device cuda --no-progress --timeout 45)
  for n in 2 4; do
    "$PY" -m ringflow.bench "${common[@]}" -np $n -b 8 -e 256M -f 32 -w 3 -n 10 --peers nccl \
      --json "$WORK/bench/n$n.sweep.json" || status=1
    "$PY" -m ringflow.bench "${common[@]}" -np $n -b 64M -e 64M -w 1 -n 3 --peers gloo \
      --json "$WORK/bench/n$n.gloo.json" || status=1
  done
  "$PY" "$HERE/summarize.py" bench "$WORK/bench" "$WORK/fig/bench.allreduce.json" || status=1
  return $status
}

# ringflow run -np N of a rank program that writes one JSON file per rank, then their merge.
ranks_stage() {
  local n=$1 program=$2 name=$3 limit
  limit=$(( ${STAGE_LIMIT:-120} - 15 ))
  gpu_env
  rm -rf "$WORK/ranks/$name"
  "$PY" -m ringflow.run -np "$n" --timeout "$limit" -- "$PY" "$HERE/$program" \
    --out "$WORK/ranks/$name"
  local rc=$?
  "$PY" "$HERE/rank_results.py" --merge "$WORK/ranks/$name" --ranks "$n" \
    --figures "$WORK/fig/$name.ranks.json" --reason "$WORK/reason/$STAGE" || return 1
  return $rc
}

stage_streams() { ranks_stage 2 stream_order.py streams; }
stage_collectives_n1() { ranks_stage 1 collectives.py collectives_n1; }
stage_collectives_n2() { ranks_stage 2 collectives.py collectives_n2; }
stage_collectives_n4() { ranks_stage 4 collectives.py collectives_n4; }

stage_pytest_gpu() {
  gpu_env
  cd "$REPO" || return 1
  "$PY" -m pytest tests/gpu -q -rfE -p no:cacheprovider --junitxml "$WORK/pytest_gpu.xml"
  local rc=$?
  "$PY" "$HERE/summarize.py" junit "$WORK/pytest_gpu.xml" "$WORK/fig/pytest_gpu.junit.json" ||
    rc=1
  return $rc
}

if [ "${1:-}" = "--stage" ]; then
  STAGE=$2
  "stage_$STAGE"
  exit $?
fi

# --- the driver ------------------------------------------------------------------------------

STAGES=(probe build kernels staging streams collectives_n1 collectives_n2 collectives_n4 bench
  pytest_gpu)
declare -A CAP=([probe]=60 [build]=240 [kernels]=75 [staging]=40 [bench]=150 [streams]=60
  [collectives_n1]=60 [collectives_n2]=90 [collectives_n4]=120 [pytest_gpu]=240)
declare -A NEEDS_BUILD=([kernels]=1 [staging]=1 [bench]=1 [streams]=1 [collectives_n1]=1
  [collectives_n2]=1 [collectives_n4]=1 [pytest_gpu]=1)
RESERVE_S=15 # the summary, and timeout's grace after a stage's limit

export REPO HERE SELF
export PY=${PYTHON:-python3}
export OUT=${OUT:-${TMPDIR:-/tmp}/ringflow-device-check}
export BUILD_ROOT=$REPO/build-device SITE=$REPO/build-device/site
# Where the machine's own OpenSSL headers would be (a test sets another path to use .devdeps/).
export SYSTEM_OPENSSL_HEADER=${DEVICE_CHECK_SYSTEM_OPENSSL_HEADER:-/usr/include/openssl/hmac.h}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-465}
SELECTED=",${DEVICE_CHECK_STAGES:-$(IFS=,; echo "${STAGES[*]}")},"
START=$(date +%s)

mkdir -p "$OUT"
export LOG=$OUT/device_check.log
: >"$LOG"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringflow-device-check.XXXXXX")
export WORK
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/fig" "$WORK/reason" "$WORK/bench" "$WORK/ranks"
: >"$WORK/stages.tsv"

NO_GPU=""
if ! command -v nvidia-smi >/dev/null; then
  NO_GPU="nvidia-smi not found"
elif ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  NO_GPU="nvidia-smi lists no GPU"
fi
export NO_GPU

if [ -f "$SITE/ringflow/__init__.py" ]; then BUILD_STATE=previous; else BUILD_STATE=none; fi

record() { # name status seconds limit reason
  local text=${5//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${text//$'\n'/ }" >>"$WORK/stages.tsv"
  printf '[device_check] %-15s %-8s %6ss  %s\n' "$1" "$2" "$3" "${text:0:120}" >&2
}

run_stage() {
  local name=$1 cap=${CAP[$1]} left limit t0 rc status why
  left=$((BUDGET_S - ($(date +%s) - START) - RESERVE_S))
  if [[ $SELECTED != *",$name,"* ]]; then
    record "$name" skipped 0 0 "not selected (DEVICE_CHECK_STAGES)"
    return
  fi
  if [ -n "$NO_GPU" ] && [ "$name" != probe ]; then
    record "$name" skipped 0 0 "no GPU: $NO_GPU"
    return
  fi
  if [ -n "${NEEDS_BUILD[$name]:-}" ] && [ "$BUILD_STATE" != ok ] && [ "$BUILD_STATE" != previous ]; then
    record "$name" skipped 0 0 "no ringflow build (build $BUILD_STATE)"
    return
  fi
  if [ "$left" -lt 20 ]; then
    record "$name" skipped 0 0 "out of time: ${BUDGET_S}s budget spent"
    return
  fi
  limit=$((cap < left ? cap : left))
  printf '\n===== stage %s (limit %ss) %s =====\n' "$name" "$limit" "$(date -u +%H:%M:%S)" >>"$LOG"
  t0=$(date +%s.%N)
  STAGE_LIMIT=$limit timeout -k 10 "$limit" bash "$SELF" --stage "$name" >"$WORK/out.$name" 2>&1
  rc=$?
  cat "$WORK/out.$name" >>"$LOG"
  local seconds
  seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  why=$(cat "$WORK/reason/$name" 2>/dev/null || true)
  case $rc in
    0) status=passed ;;
    77) status=skipped ;;
    78) status=missing ;;
    124 | 137) status=timeout why="stopped at its ${limit}s limit${why:+; $why}" ;;
    *)
      status=failed
      [ -n "$why" ] || why="exit $rc: $(grep -iE 'error|fail|assert' "$WORK/out.$name" | tail -1 | cut -c1-200)"
      ;;
  esac
  printf '===== stage %s: %s in %ss %s\n' "$name" "$status" "$seconds" "$why" >>"$LOG"
  record "$name" "$status" "$seconds" "$limit" "$why"
  if [ "$name" = build ]; then if [ "$status" = passed ]; then BUILD_STATE=ok; else BUILD_STATE=$status; fi; fi
}

for stage in "${STAGES[@]}"; do
  run_stage "$stage"
done

"$PY" "$HERE/summarize.py" results --stages "$WORK/stages.tsv" --figures "$WORK/fig" \
  --out "$OUT" --budget "$BUDGET_S" --seconds "$(($(date +%s) - START))" --no-gpu "$NO_GPU"
