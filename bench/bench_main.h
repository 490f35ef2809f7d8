#pragma once
// The main() every benchmark program shares: intra-op threads from MOSHI_TTT_BENCH_THREADS (default 2,
// the CI machine's cores), then Google Benchmark's own flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>

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

// Waits for the device by copying one element of t to the host (a no-op on the CPU).
inline void sync(const at::Tensor& t) {
  if (t.defined() && t.numel() > 0 && !t.device().is_cpu()) t.reshape({-1}).narrow(0, 0, 1).cpu();
}

inline int run_benchmarks(int argc, char** argv) {
  at::set_num_threads(bench_threads());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace mt::bench
