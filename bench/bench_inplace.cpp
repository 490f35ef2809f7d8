// In-Place TTT FFN speed and memory: D 1024, H 2816, chunk 256, T 2048, batch 1, fp32, lr 1e-3, with
// target projection; forward (no grad) and forward+backward tokens/s for each strategy of
// InPlaceStrategy, next to the plain gated FFN (no TTT) on the same shapes, plus streaming ms/token.
// peak_MB: the largest sum of live CPU tensor bytes allocated on the calling thread during one
// iteration (util/peak_memory.h), beyond the weights and inputs. maxrss_growth_MB: growth of the
// process's peak RSS from before the warm-up to the end (what the Python script reports); only
// meaningful for the first benchmark of a process, so run one per process for it:
//   for b in Forward/0 Forward/2 ForwardBackward/0 ...; do bench_inplace --benchmark_filter="$b\$"; done
// The official Python code on the same shapes: scripts/reference/bench_inplace_reference.py.
// Threads: MOSHI_TTT_BENCH_THREADS (default 2). Device: MOSHI_TTT_BENCH_DEVICE (default cpu; on CUDA
// peak_MB is not measured).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <cstdlib>

#include "bench_main.h"
#include "ttt/inplace.h"
#include "util/peak_memory.h"

using mt::bench::bench_device;
using mt::bench::sync;

using namespace mt::ttt;

namespace {

constexpr int64_t kDim = 1024, kHidden = 2816, kChunk = 256, kSeq = 2048;

InPlaceFFN make(InPlaceStrategy s) {
  InPlaceConfig c;
  c.dim = kDim;
  c.hidden = kHidden;
  c.chunk_size = kChunk;
  c.lr = 1e-3;
  c.use_proj = true;
  c.strategy = s;
  InPlaceFFN m(c);
  m->init_weights(0);
  // A non-zero conv: with the released zero init the targets vanish and the TTT path is trivial.
  {
    at::NoGradGuard ng;
    m->conv_weight.normal_(0, 0.02);
  }
  m->to(bench_device());
  return m;
}

struct Inputs {
  at::Tensor x, t, g;
};
Inputs inputs(bool grad) {
  at::Generator gen = at::detail::createCPUGenerator(1);
  auto o = at::TensorOptions().dtype(at::kFloat);
  Inputs in{at::randn({1, kSeq, kDim}, gen, o), at::randn({1, kSeq, kDim}, gen, o), at::randn({1, kSeq, kDim}, gen, o)};
  in.x = in.x.to(bench_device()).requires_grad_(grad);
  in.t = in.t.to(bench_device()).requires_grad_(grad);
  in.g = in.g.to(bench_device());
  return in;
}

// range(0): strategy (0 linear attention, 1 running, 2 materialized), -1: the plain FFN without TTT.
at::Tensor run_forward(const InPlaceFFN& m, const Inputs& in, int64_t strategy) {
  if (strategy < 0) return at::linear(m->hidden_act(in.x), m->gating->linear_out->weight);
  return m->forward(in.x, in.t);
}

double maxrss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

InPlaceStrategy strat(int64_t i) { return static_cast<InPlaceStrategy>(i < 0 ? 0 : i); }

void label(benchmark::State& state, int64_t s) { state.SetLabel(s < 0 ? "plain_ffn" : strategy_name(strat(s))); }

void BM_InPlaceForward(benchmark::State& state) {
  const int64_t s = state.range(0);
  InPlaceFFN m = make(strat(s));
  Inputs in = inputs(false);
  at::NoGradGuard ng;
  const double rss0 = maxrss_mb();
  sync(run_forward(m, in, s));  // warm-up
  int64_t peak = 0;
  for (auto _ : state) {
    mt::PeakMemory pm;
    sync(run_forward(m, in, s));
    peak = std::max(peak, pm.peak());
  }
  label(state, s);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(kSeq), benchmark::Counter::kIsIterationInvariantRate);
  if (bench_device().is_cpu()) state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;
  state.counters["maxrss_growth_MB"] = maxrss_mb() - rss0;
}

void BM_InPlaceForwardBackward(benchmark::State& state) {
  const int64_t s = state.range(0);
  InPlaceFFN m = make(strat(s));
  Inputs in = inputs(true);
  auto once = [&] {
    at::Tensor y = run_forward(m, in, s);
    (y * in.g).sum().backward();
    sync(in.x.grad());
    m->zero_grad(/*set_to_none=*/true);
    in.x.mutable_grad().reset();
    in.t.mutable_grad().reset();
  };
  const double rss0 = maxrss_mb();
  once();  // warm-up
  int64_t peak = 0;
  for (auto _ : state) {
    mt::PeakMemory pm;
    once();
    peak = std::max(peak, pm.peak());
  }
  label(state, s);
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(kSeq), benchmark::Counter::kIsIterationInvariantRate);
  if (bench_device().is_cpu()) state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;
  state.counters["maxrss_growth_MB"] = maxrss_mb() - rss0;
}

// Decoding: one token per step through the per-stream state (a chunk completes every 256 steps).
void BM_InPlaceStreamStep(benchmark::State& state) {
  InPlaceFFN m = make(InPlaceStrategy::kLinearAttention);
  Inputs in = inputs(false);
  at::InferenceMode im;
  InPlaceState st = m->make_state(1);
  int64_t i = 0;
  for (auto _ : state) {
    sync(m->step(in.x.narrow(1, i % kSeq, 1), in.t.narrow(1, i % kSeq, 1), st));
    ++i;
  }
  state.counters["tok/s"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_InPlaceForward)
    ->Arg(-1)
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK(BM_InPlaceForwardBackward)
    ->Arg(-1)
    ->Arg(0)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3.0)
    ->UseRealTime();
BENCHMARK(BM_InPlaceStreamStep)->Unit(benchmark::kMillisecond)->MinTime(3.0)->UseRealTime();

int main(int argc, char** argv) { return mt::bench::run_benchmarks(argc, argv); }
