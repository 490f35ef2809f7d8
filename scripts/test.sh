#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test tier (unit, reference, e2e; gpu skips
# without CUDA). Extra arguments go to ctest (e.g. -L unit).
set -euo pipefail
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
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 900 -j2 "$@"
