#!/usr/bin/env bash
# Configures and builds on a lent GPU machine against its CUDA PyTorch, with the bundled dependencies
# (.gpu-deps, from bundle_deps.sh) and reference cases (.ref). Usage: build.sh [TARGET...] (default: all).
# Logs go to $OUT; prints the build time.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-gpu "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DMOSHI_TTT_CUDA=ON -DMOSHI_TTT_DEPS_DIR="$PWD/.gpu-deps" -DMOSHI_TTT_REFERENCE_DIR="$PWD/.ref" >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
targets=(); for t in "$@"; do targets+=(--target "$t"); done
t0=$(date +%s)
cmake --build build-gpu -j"$(nproc)" "${targets[@]}" -- -k 0 >"$OUT/build.log" 2>&1 || grep -E "error" -A3 "$OUT/build.log" | head -40
echo "build: $(( $(date +%s) - t0 )) s"
