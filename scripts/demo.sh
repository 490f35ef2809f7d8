#!/usr/bin/env bash
# Installs what is missing, builds, then runs the built-in default job (`moshi-ttt demo`).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
exec "${BUILD_DIR:-build}/moshi-ttt" demo "$@"
