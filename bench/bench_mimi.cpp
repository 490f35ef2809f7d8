// Mimi speed for the released config (512-d SEANet latent, 8+8 transformer layers, 32 codebooks of which
// 8 are used; random weights: the cost does not depend on the values), fp32, batch 1:
//   - whole-signal encode and decode of 10 s of audio: real-time factor (audio seconds per second);
//   - streaming, one 80 ms frame per call as Moshi runs it: ms per frame and real-time factor.
// Threads: MOSHI_TTT_BENCH_THREADS (default 2). MOSHI_TTT_BENCH_DEVICE=cuda runs on the GPU.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <cstdlib>

#include "bench_main.h"
#include "mimi/mimi.h"

using mt::bench::bench_device;
using mt::bench::sync;

using namespace mt::mimi;

namespace {



Mimi& model() {
  static Mimi m = [] {
    Mimi x(MimiConfig::released());
    x->init_random(0);
    x->eval();
    x->to(bench_device());
    x->quantizer->refresh();
    return x;
  }();
  return m;
}

// Mode 0: whole-signal encode, 1: whole-signal decode, 2: streaming encode, 3: streaming decode.
void BM_Mimi(benchmark::State& state) {
  const int64_t mode = state.range(0);
  Mimi& m = model();
  at::InferenceMode im;
  const int64_t fs = m->cfg.frame_size();
  const int64_t frames = mode < 2 ? 125 : 25;  // 10 s whole, 2 s streamed per iteration
  at::Tensor wav = (at::randn({1, 1, frames * fs}) * 0.1).to(bench_device());
  at::Tensor codes = m->encode(wav);
  for (auto _ : state) {
    at::Tensor out;
    if (mode == 0) out = m->encode(wav);
    else if (mode == 1) out = m->decode(codes);
    else {
      MimiState st = m->make_state(1);
      for (int64_t f = 0; f < frames; ++f)
        out = mode == 2 ? m->encode_step(wav.narrow(2, f * fs, fs), st) : m->decode_step(codes.narrow(2, f, 1), st);
    }
    sync(out);
  }
  const double audio_s = static_cast<double>(frames * fs) / static_cast<double>(m->cfg.sample_rate);
  state.counters["x_realtime"] = benchmark::Counter(audio_s, benchmark::Counter::kIsIterationInvariantRate);
  if (mode >= 2)
    state.counters["ms/frame"] = benchmark::Counter(static_cast<double>(frames) / 1000.0,
                                                    benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  static const char* names[] = {"encode 10 s", "decode 10 s", "streaming encode, 80 ms frames", "streaming decode, 80 ms frames"};
  state.SetLabel(names[mode]);
}

}  // namespace

BENCHMARK(BM_Mimi)->DenseRange(0, 3)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

int main(int argc, char** argv) { return mt::bench::run_benchmarks(argc, argv); }
