// TTT-Linear / TTT-MLP layer throughput at the paper's 125M layer size (C=768, 12 heads, L=2048,
// mini-batch 16), float32 on CPU, next to a measured sgemm ceiling; deep TTT-MLPs of 3 and 5 inner
// layers beside the reference's 2. Compare with
// scripts/reference/bench_ttt_reference.py run in the same session (same FLOP formula).
//   MT_BENCH_THREADS (default 2), MT_BENCH_L (default 2048), MOSHI_TTT_BENCH_DEVICE (cpu | cuda).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <benchmark/benchmark.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "bench_main.h"
#include "ttt/ttt_layer.h"

namespace {

int64_t env_int(const char* k, int64_t d) {
  const char* v = std::getenv(k);
  return v ? std::atoll(v) : d;
}

const int64_t kC = 768, kHeads = 12, kK = 16, kB = 1;

using mt::bench::bench_device;
using mt::bench::sync;

// layers: 1 = TTT-Linear, n >= 2 = TTT-MLP of n inner layers (widths f -> 4f -> ... -> f). For n = 2
// this is the reference script's formula: per mini-batch 7 K f h + 2 K^2 (f + h) multiply-adds, i.e.
// 3.5 K per inner weight and 2 K^2 per inner layer input width.
double layer_flops(int layers, int64_t L) {
  const double f = kC / kHeads, K = kK, n = L / kK, h = 4 * f;
  double proj = 2.0 * kB * L * kC * kC * 4;  // q, k, v, o
  double per = 0;
  if (layers == 1) {
    per = 2 * (3 * K * f * f + 2 * K * K * f);
  } else {
    double weights = 2 * f * h + (layers - 2) * h * h, in_widths = f + (layers - 1) * h;
    per = 2 * (3.5 * K * weights + 2 * K * K * in_widths);
  }
  return proj + kB * kHeads * n * per;
}

mt::ttt::TTTLayer make_layer(int layers) {
  mt::ttt::TTTConfig c;
  c.hidden_size = kC;
  c.num_attention_heads = kHeads;
  c.mini_batch_size = kK;
  c.ttt_layer_type = layers > 1 ? "mlp" : "linear";
  if (layers > 1) c.ttt_mlp_layers = layers;
  c.ttt_base_lr = layers > 1 ? 0.1 : 1.0;
  return mt::ttt::TTTLayer::init(c, 0, at::kFloat, bench_device());
}

void BM_TTT(benchmark::State& s, int layers, bool backward) {
  const int64_t L = env_int("MT_BENCH_L", 2048);
  auto layer = make_layer(layers);
  auto opt = at::TensorOptions().device(bench_device());
  auto x = at::randn({kB, L, kC}, opt);
  auto gout = at::randn({kB, L, kC}, opt);
  std::vector<at::Tensor> wrt;
  for (auto& [n, p] : layer.named_parameters()) wrt.push_back(p);
  auto xg = x.clone().requires_grad_(true);
  wrt.push_back(xg);
  {  // untimed warm-up, as the reference script does (first-touch allocations, thread pool start)
    at::NoGradGuard ng;
    sync(layer.forward(x));
  }
  for (auto _ : s) {
    if (backward) {
      auto y = layer.forward(xg);
      auto g = torch::autograd::grad({(y * gout).sum()}, wrt);
      sync(g.back());
    } else {
      at::NoGradGuard ng;
      sync(layer.forward(x));
    }
  }
  const double flops = layer_flops(layers, L) * (backward ? 3 : 1);
  s.counters["tok/s"] = benchmark::Counter(static_cast<double>(kB * L), benchmark::Counter::kIsIterationInvariantRate);
  s.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

// The machine may be shared: every case runs single iterations, repeated, and we report the best
// (min time / max rate), like the reference script's best-of-reps.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double max_of(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }
#define MT_BEST                          \
  ->Unit(benchmark::kMillisecond)        \
      ->UseRealTime()                    \
      ->Iterations(1)                    \
      ->Repetitions(5)                   \
      ->ReportAggregatesOnly(true)       \
      ->ComputeStatistics("min", min_of) \
      ->ComputeStatistics("max", max_of)

BENCHMARK(mt::bench::BM_Sgemm2048) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, linear_fwd, 1, false) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, linear_fwdbwd, 1, true) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, mlp_fwd, 2, false) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, mlp_fwdbwd, 2, true) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, mlp3_fwd, 3, false) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, mlp3_fwdbwd, 3, true) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, mlp5_fwd, 5, false) MT_BEST;
BENCHMARK_CAPTURE(BM_TTT, mlp5_fwdbwd, 5, true) MT_BEST;

int main(int argc, char** argv) {
  at::set_num_threads(static_cast<int>(env_int("MT_BENCH_THREADS", 2)));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
