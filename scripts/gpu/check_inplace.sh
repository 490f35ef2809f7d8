set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi -L
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
export TORCH_CUDA_ARCH_LIST=9.0
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B build-gpu "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DMOSHI_TTT_CUDA=ON -DMOSHI_TTT_DEPS_DIR="$PWD/.gpu-deps" -DMOSHI_TTT_REFERENCE_DIR="$PWD/.ref" >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
t0=$(date +%s)
cmake --build build-gpu -j16 --target test_gpu moshi-ttt bench_inplace >"$OUT/build.log" 2>&1 || { grep -E 'error|Error' -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
echo "== gpu tests"; build-gpu/tests/test_gpu --gtest_filter='InPlace*' 2>&1 | tail -12
echo "== check-reference --device cuda"; build-gpu/moshi-ttt check-reference -v .ref/inplace --device cuda 2>&1 | tail -12
echo "== bench cuda"; MOSHI_TTT_BENCH_DEVICE=cuda timeout 120 build-gpu/bench/bench_inplace --benchmark_min_time=0.3 2>&1 | grep -E "BM_|Run on" | tee "$OUT/bench_cuda.txt"
