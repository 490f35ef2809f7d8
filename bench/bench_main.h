#pragma once
// The main() every benchmark program shares: intra-op threads from MOSHI_TTT_BENCH_THREADS (default 2,
// the CI machine's cores), then Google Benchmark's own flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include "util/fused.h"
#include "util/runtime.h"

namespace mt::bench {

inline int bench_threads() {
  const char* t = std::getenv("MOSHI_TTT_BENCH_THREADS");
  return t ? std::atoi(t) : 2;
}

// MOSHI_TTT_BENCH_DEVICE=cuda runs a benchmark on the GPU (default: the CPU).
inline c10::Device bench_device() {
  const char* d = std::getenv("MOSHI_TTT_BENCH_DEVICE");
  return c10::Device(d ? d : "cpu");
}

// MOSHI_TTT_BENCH_DTYPE=bfloat16 holds the parameters in bf16 (with float32 masters in AdamW, as
// moshi-finetune on a GPU); default float32.
inline at::ScalarType bench_dtype() {
  const char* d = std::getenv("MOSHI_TTT_BENCH_DTYPE");
  return d && std::string(d) == "bfloat16" ? at::kBFloat16 : at::kFloat;
}

// Which kernels a benchmark row ran: the hand-fused CPU ones (util/fused.h) or the general tensor path.
inline const char* kernel_path() {
  return util::fused_kernels_enabled() && util::cpu_has_avx2_fma() ? "fused" : "general";
}

// Waits for the device by copying one element of t to the host (a no-op on the CPU).
inline void sync(const at::Tensor& t) {
  if (t.defined() && t.numel() > 0 && !t.device().is_cpu()) t.reshape({-1}).narrow(0, 0, 1).cpu();
}

// The machine's fp32 matrix-multiply rate in this run, on the benchmark's device (2048^3): the ceiling
// the LM, TTT and training benchmarks' useful GFLOP/s are read against.
inline void BM_Sgemm2048(benchmark::State& state) {
  const auto opt = at::TensorOptions().device(bench_device());
  const at::Tensor a = at::randn({2048, 2048}, opt), b = at::randn({2048, 2048}, opt);
  for (auto _ : state) sync(at::mm(a, b));
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * 2048 * 2048 * 2048 / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

inline int run_benchmarks(int argc, char** argv) {
  mt::keep_freed_memory();
  at::set_num_threads(bench_threads());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace mt::bench
