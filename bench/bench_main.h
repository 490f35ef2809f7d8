#pragma once
// The main() every benchmark program shares: intra-op threads from MOSHI_TTT_BENCH_THREADS (default 2,
// the CI machine's cores), then Google Benchmark's own flags.
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>

namespace mt::bench {

inline int bench_threads() {
  const char* t = std::getenv("MOSHI_TTT_BENCH_THREADS");
  return t ? std::atoi(t) : 2;
}

inline int run_benchmarks(int argc, char** argv) {
  at::set_num_threads(bench_threads());
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace mt::bench
