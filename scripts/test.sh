#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test tier (unit, reference, e2e; gpu skips
# without CUDA), then the unit tier again in an ASan + UBSan build (build-asan/; skipped when
# MOSHI_TTT_SANITIZE_TESTS=0 or when arguments are given). Extra arguments go to ctest (e.g. -L unit).
# Tests labelled `slow` (hour-long soaks) run only with --slow as the first argument.
set -euo pipefail
slow=(-LE slow)
if [ "${1:-}" = "--slow" ]; then
  slow=()
  shift
fi
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
ref=${MOSHI_TTT_REFERENCE_DIR:-$here/../shared/reference}
if [ ! -d "$ref" ]; then
  echo "[test] reference cases not found at $ref (set MOSHI_TTT_REFERENCE_DIR)" >&2
  exit 1
fi
"$BUILD_DIR/moshi-ttt" --version | head -4
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 900 -j2 ${slow[@]+"${slow[@]}"} "$@"

if [ $# -eq 0 ] && [ ${#slow[@]} -gt 0 ] && [ "${MOSHI_TTT_SANITIZE_TESTS:-1}" != 0 ]; then
  # Leaks are reported (LeakSanitizer, part of ASan; no suppressions are needed) and UBSan stops at
  # the first report: either fails the test.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  echo "[test] unit tier under ASan + UBSan (build-asan)" >&2
  BUILD_DIR=build-asan MOSHI_TTT_CMAKE_ARGS="-DMOSHI_TTT_SANITIZE=ON -DMOSHI_TTT_BUILD_BENCH=OFF" \
    MOSHI_TTT_BUILD_TARGETS=test_unit scripts/setup.sh
  ctest --test-dir build-asan -L unit --output-on-failure --timeout 1800 -j2
fi
