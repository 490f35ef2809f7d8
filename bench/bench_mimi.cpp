// Mimi speed for the released config (512-d SEANet latent, 8+8 transformer layers, 32 codebooks of which
// 8 are used; random weights: the cost does not depend on the values), fp32, batch 1:
//   - whole-signal encode and decode of 10 s of audio: real-time factor (audio seconds per second);
//   - streaming, one 80 ms frame per call as Moshi runs it: ms per frame and real-time factor;
//   - full duplex, as `generate --user` runs it: per 80 ms frame, Mimi encodes the user's audio, the
//     `small` LM (dim 512, 8 layers; plain, or with hybrid TTT-Linear in layers 2 and 5) takes one
//     step and Mimi decodes Moshi's frame: ms per frame (real time needs <= 80).
// Threads: MOSHI_TTT_BENCH_THREADS (default 2). MOSHI_TTT_BENCH_DEVICE=cuda runs on the GPU.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include <cstdlib>

#include <yaml-cpp/yaml.h>

#include "bench_main.h"
#include "lm/lm_gen.h"
#include "lm/lm_model.h"
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
    if (mode == 0)
      out = m->encode(wav);
    else if (mode == 1)
      out = m->decode(codes);
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
    state.counters["ms/frame"] =
        benchmark::Counter(static_cast<double>(frames) / 1000.0,
                           benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  static const char* names[] = {"encode 10 s", "decode 10 s", "streaming encode, 80 ms frames",
                                "streaming decode, 80 ms frames"};
  state.SetLabel(names[mode]);
}

// Full duplex: Mimi encode step -> LM step -> Mimi decode step, per 80 ms frame. Arg: 0 plain LM, 1 hybrid TTT.
void BM_FullDuplexFrame(benchmark::State& state) {
  Mimi& codec = model();
  mt::lm::TTTIntegrationConfig ttt;
  if (state.range(0) == 1)
    ttt = mt::lm::TTTIntegrationConfig::from_yaml(
        YAML::Load("enable: true\nvariant: hybrid\nlayers: \"2,5\"\ntype: linear\nmini_batch_size: 16"));
  mt::lm::LMModel lm(mt::lm::LMConfig::small(), ttt);
  lm->init_weights(0);
  lm->to(bench_device());
  for (auto& p : lm->parameters()) p.set_requires_grad(false);
  lm->eval();
  at::InferenceMode im;
  const auto& c = lm->cfg;
  const int64_t fs = codec->cfg.frame_size(), frames = 25, user_q = c.n_q - c.dep_q;
  at::Tensor user = (at::randn({1, 1, frames * fs}) * 0.1).to(bench_device());
  mt::lm::SamplingConfig sc;
  sc.use_sampling = false;
  mt::lm::LMGen gen(lm, sc);
  for (auto _ : state) {
    mt::lm::LMGenState st = gen.make_state(1);
    MimiState enc = codec->make_state(1), dec = codec->make_state(1);
    at::Tensor out;
    for (int64_t f = 0; f < frames; ++f) {
      at::Tensor uc = codec->encode_step(user.narrow(2, f * fs, fs), enc).narrow(1, 0, user_q);
      std::optional<at::Tensor> y = gen.step(st, uc);
      if (y) out = codec->decode_step(y->narrow(1, 1, c.dep_q), dec);
    }
    sync(out);
  }
  state.counters["ms/frame"] =
      benchmark::Counter(static_cast<double>(frames) / 1000.0,
                         benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["x_realtime"] =
      benchmark::Counter(static_cast<double>(frames) * 0.08, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(state.range(0) == 0 ? "Mimi + small LM + Mimi, per 80 ms frame"
                                     : "Mimi + small LM with hybrid TTT-Linear + Mimi");
}

}  // namespace

BENCHMARK(BM_FullDuplexFrame)->DenseRange(0, 1)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_Mimi)->DenseRange(0, 3)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

int main(int argc, char** argv) { return mt::bench::run_benchmarks(argc, argv); }
