#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS (default 60).
#
#   fuzz/run.sh [SECONDS] [TARGET...]     SECONDS=0 only builds; TARGET defaults to all three
#
# Environment: CXX (default: the first of clang++, clang++-19 … clang++-14 on PATH),
# RINGFLOW_FUZZ_BUILD_DIR (default build/fuzz), RINGFLOW_FUZZ_JOBS (build parallelism).
# Each target's corpus grows in $RINGFLOW_FUZZ_BUILD_DIR/corpus/TARGET (kept between runs); a
# crash leaves its input as $RINGFLOW_FUZZ_BUILD_DIR/artifacts/TARGET-crash-* and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(frame_fuzzer handshake_fuzzer store_fuzzer)
build=${RINGFLOW_FUZZ_BUILD_DIR:-build/fuzz}

if [[ -z ${CXX:-} ]]; then
  for candidate in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$candidate" >/dev/null; then
      CXX=$candidate
      break
    fi
  done
fi
[[ -n ${CXX:-} ]] || { echo "fuzz/run.sh: no clang++ on PATH" >&2; exit 2; }

cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRINGFLOW_FUZZ=ON -DRINGFLOW_CUDA=OFF >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log" >&2; exit 1; }
cmake --build "$build" --parallel "${RINGFLOW_FUZZ_JOBS:-$(nproc)}" --target "${targets[@]}"
python3 fuzz/seeds.py "$build/seeds"

((seconds > 0)) || exit 0
for target in "${targets[@]}"; do
  corpus=$build/corpus/$target
  mkdir -p "$corpus" "$build/artifacts"
  echo "== $target for ${seconds}s"
  # -timeout: one input taking 10 s is a hang.
  "$build/fuzz/$target" "$corpus" "$build/seeds/$target" -max_total_time="$seconds" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-"
done
