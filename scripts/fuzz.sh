#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang + ASan + UBSan) and runs each for a given time.
#   scripts/fuzz.sh [--time SECONDS] [--out DIR] [TARGET...]
#     targets: safetensors yaml_config jsonl_index alignments wav codes (default: all, one after another)
#     --time   seconds per target (default 600)
#     --out    where corpora, logs and crash inputs go (default build-fuzz/runs)
# Each target starts from the seed corpus written at build time (build-fuzz/fuzz-seeds/<target>) plus the
# regression inputs of tests/fuzz/regressions/<target>; what it finds is left as crash-*/leak-*/oom-*/
# timeout-* under --out/<target>/ and listed at the end. Copy a finding into
# tests/fuzz/regressions/<target>/ once it is fixed: the unit tests replay that folder.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
secs=600
out=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) secs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(safetensors yaml_config jsonl_index alignments wav codes)
BUILD_DIR=build-fuzz
out=${out:-$BUILD_DIR/runs}

CC=clang CXX=clang++ BUILD_DIR=$BUILD_DIR MOSHI_TTT_EXTRA_PKGS="clang libclang-rt-dev" \
  MOSHI_TTT_CMAKE_ARGS="-DMOSHI_TTT_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo" \
  MOSHI_TTT_BUILD_TARGETS=fuzz_all scripts/setup.sh

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OMP_NUM_THREADS=1
summary=()
for t in "${targets[@]}"; do
  bin="$BUILD_DIR/tests/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "[fuzz] no target '$t'" >&2; exit 2; }
  dir="$out/$t"
  mkdir -p "$dir/corpus"
  seeds=("$BUILD_DIR/fuzz-seeds/$t")
  [ -d "tests/fuzz/regressions/$t" ] && seeds+=("tests/fuzz/regressions/$t")
  echo "[fuzz] $t: ${secs} s (log: $dir/log.txt)" >&2
  set +e
  (cd "$dir" && "$here/$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=2048 \
     -max_len=8192 -print_final_stats=1 -artifact_prefix="$(pwd)/" corpus "${seeds[@]/#/$here/}") >"$dir/log.txt" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/log.txt" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$dir/log.txt" | tail -1 || true)
  found=$(ls "$dir" | grep -E '^(crash|leak|oom|timeout|slow-unit)-' || true)
  summary+=("$t: exit $rc, ${execs} runs, ${cov:-cov ?}, corpus $(ls "$dir/corpus" | wc -l) files${found:+, FINDINGS: $(echo $found)}")
  echo "[fuzz] ${summary[-1]}" >&2
done
printf '[fuzz] summary\n' >&2
printf '  %s\n' "${summary[@]}" >&2
