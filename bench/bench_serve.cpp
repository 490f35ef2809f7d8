// Serving capacity: how many conversations one machine carries in real time. Per iteration, one 80 ms
// frame of B conversations does what `moshi-ttt serve` does per frame (src/serve/engine.cpp and the
// websocket threads): Duplex::step on [B, 1, 1920] of the users' audio (Mimi encode, one LMGen step,
// Mimi decode of Moshi's reply), the copy of audio and text to the host (the step's one sync), B Opus
// encodes of the replies (OpusWriter) and B Opus decodes of the users' next frame (OpusReader). All of
// it runs on this thread, one after the other: on a machine whose cores all run libtorch's intra-op
// threads, the server's Opus work competes for the same cores.
//
// BM_ServeFrame/<preset>/<B>: tiny (B 1..16) and small (B 1..8) on the CPU; moshiko-7b (B 1..8) only
// with MOSHI_TTT_BENCH_DEVICE=cuda (and MOSHI_TTT_BENCH_DTYPE=bfloat16, as one would serve it). Random
// weights: the cost does not depend on their values. The codec is the released Mimi architecture.
// Counters (of every timed frame, measured here with steady_clock): p50_ms, p99_ms, max_ms; realtime
// (1 when p99 <= 80 ms); conv_per_s_audio = B * 80 / p50 (seconds of conversation audio served per
// second of compute); lm_ms, mimi_ms, opus_ms: the mean frame split into its parts, from a second,
// shorter pass over the same work with the parts timed apart (its sum is close to, not equal to, p50).
// others_cores: the CPU other programs took meanwhile, in cores (from /proc): read rows with more than
// ~0.1 as disturbed. At the end: one line per preset with the largest measured B whose p99 fits in a frame.
// Threads: MOSHI_TTT_BENCH_THREADS (default 2) intra-op threads, as `serve --threads`; printed first.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "app/duplex.h"
#include "audio/opus_stream.h"
#include "bench_main.h"
#include "lm/lm_gen.h"
#include "lm/lm_model.h"
#include "lm/model_config.h"
#include "mimi/mimi.h"

using mt::bench::bench_device;
using mt::bench::sync;

using namespace mt;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kFrameMs = 80.0;
constexpr int64_t kCycleFrames = 100;  // frames of distinct user audio; longer runs go round again
constexpr int64_t kSplitFrames = 30;   // frames of the second pass that times LM, Mimi and Opus apart

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct Model {
  lm::LMModel lm{nullptr};
  mimi::Mimi codec{nullptr};
};

lm::LMModel build_lm(const std::string& preset) {
  lm::ModelConfigFile mc;
  mc.lm = lm::preset_config(preset);
  lm::LMModel m{nullptr};
  if (preset == "moshiko-7b") {
    // Built in the benchmark's dtype and filled on the device: 28 GB of float32 initialised on the
    // host would take minutes (as bench_train's 7B).
    const c10::ScalarType was = c10::typeMetaToScalarType(c10::get_default_dtype());
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(mt::bench::bench_dtype()));
    m = lm::LMModel(mc.lm, mc.ttt, mc.lora);
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(was));
    m->to(bench_device());
    at::NoGradGuard ng;
    for (auto& p : m->parameters()) p.normal_(0, 0.02);
    for (auto& p : m->parameters()) p.set_requires_grad(false);
  } else {
    m = lm::build_model(mc, 0, mt::bench::bench_dtype());
    m->to(bench_device());
  }
  m->eval();
  return m;
}

// One LM and codec per preset, shared by every batch size (Duplex only reads them).
Model& model(const std::string& preset) {
  static std::map<std::string, Model> models;
  auto it = models.find(preset);
  if (it != models.end()) return it->second;
  Model x;
  x.lm = build_lm(preset);
  mimi::MimiConfig mc = mimi::MimiConfig::released();
  // tiny's LM has 64-entry codebooks; Duplex wants the codec to match. The codebook search is a
  // negligible part of Mimi's cost, so this is still the released codec's cost.
  mc.quantizer.bins = x.lm->cfg.card;
  x.codec = mimi::Mimi(mc);
  x.codec->init_random(0);
  x.codec->eval();
  return models.emplace(preset, x).first->second;
}

// Voiced-speech stand-in for the users: a harmonic series on a gliding pitch (100-220 Hz) under a
// ~4 Hz syllable envelope, plus breath noise. Opus spends its effort on such audio as on speech,
// unlike on silence. [B, 1, frames * frame_size], each slot with its own pitch and phase.
at::Tensor speech_like(int64_t B, int64_t frames, int64_t frame_size, int64_t rate) {
  at::Tensor wav = at::empty({B, 1, frames * frame_size});
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 1.f);
  const double two_pi = 2 * M_PI;
  for (int64_t b = 0; b < B; ++b) {
    float* w = wav.data_ptr<float>() + b * frames * frame_size;
    const double base = 120 + 15.0 * static_cast<double>(b % 7), offset = 0.37 * static_cast<double>(b);
    double phase = 0;
    for (int64_t i = 0; i < frames * frame_size; ++i) {
      const double t = static_cast<double>(i) / static_cast<double>(rate);
      const double pitch = base + 50 * std::sin(two_pi * 0.7 * t + offset);
      phase += two_pi * pitch / static_cast<double>(rate);
      double voiced = 0;
      for (int h = 1; h <= 10; ++h) voiced += std::sin(h * phase) / h;
      const double env = std::pow(std::max(0.0, std::sin(two_pi * 2.1 * t + offset)), 2);
      w[i] = static_cast<float>(0.15 * env * voiced + 0.005 * noise(rng));
    }
  }
  return wav;
}

// The bytes a client sends for each frame of slot 0's audio: [0] holds the Ogg header pages and the
// first frame; [1..frames] one frame each (two 40 ms packets). Going round again from [1] reads as a
// lost page to the reader, which it skips, as a server does.
std::vector<std::string> client_opus(const at::Tensor& wav, int64_t frame_size, int64_t rate) {
  audio::OpusWriter w(static_cast<int>(rate));
  const float* p = wav.data_ptr<float>();
  const int64_t frames = wav.size(2) / frame_size;
  std::vector<std::string> out;
  for (int64_t f = 0; f < frames; ++f) out.push_back(w.append_pcm(p + f * frame_size, static_cast<size_t>(frame_size)));
  return out;
}

// One frame's Opus work of a server: each reply encoded, each user's next frame decoded.
void opus_frame(const at::Tensor& audio_cpu, std::vector<audio::OpusWriter>& writers,
                std::vector<audio::OpusReader>& readers, const std::string& user_bytes, int64_t frame_size) {
  const float* a = audio_cpu.data_ptr<float>();
  for (size_t b = 0; b < writers.size(); ++b)
    benchmark::DoNotOptimize(
        writers[b].append_pcm(a + static_cast<int64_t>(b) * frame_size, static_cast<size_t>(frame_size)));
  for (auto& r : readers)
    benchmark::DoNotOptimize(r.append_bytes(reinterpret_cast<const uint8_t*>(user_bytes.data()), user_bytes.size()));
}

// A conversation on a server lasts minutes; by then the temporal transformer's KV ring is full and
// every step attends over `context` keys (3000 for small and 7B; for small, 98 MB of keys and values
// per conversation read each step, next to 290 MB of weights shared by the batch). Stepping there would
// take minutes, so the positions jump ahead instead: the ring holds zeros, and attention over zeros costs
// what it does over real keys. (Mimi's rings fill within the first 125 frames and barely change its cost.)
void jump_to_full_context(lm::LMGenState& st, const lm::LMConfig& c) {
  const int64_t ahead = c.context.value_or(0);
  st.main.offsets.add_(ahead);
  st.main.offset_cpu += ahead;
}

// CPU seconds used so far by the whole machine (busy time of every core) and by this process, from
// /proc (NaN elsewhere). Their difference over a row tells how much of the cores other programs took: on
// a shared machine they inflate the tail far beyond their share, since libtorch's threads wait for
// each other at every operator.
std::pair<double, double> cpu_seconds() {
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  double all = NAN, self = NAN;
  if (std::FILE* f = std::fopen("/proc/stat", "r")) {
    unsigned long long v[8] = {};
    if (std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                    &v[7]) == 8)
      all = static_cast<double>(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;  // all but idle and iowait
    std::fclose(f);
  }
  if (std::FILE* f = std::fopen("/proc/self/stat", "r")) {
    unsigned long long ut = 0, st = 0;
    // Fields 14 and 15 (utime, stime); the command name (field 2) has no spaces for this program.
    if (std::fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
      self = static_cast<double>(ut + st) / tick;
    std::fclose(f);
  }
  return {all, self};
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];  // nearest rank
}

struct Row {
  int64_t B;
  double p50, p99, others_cores;
};
std::map<std::string, std::map<int64_t, Row>>& results() {
  static std::map<std::string, std::map<int64_t, Row>> r;
  return r;
}

void BM_ServeFrame(benchmark::State& state, const std::string& preset, int64_t B) {
  Model& m = model(preset);
  at::InferenceMode im;  // as the server's frame thread
  const lm::LMConfig& c = m.lm->cfg;
  lm::SamplingConfig sampling;  // the server's defaults: sampled text and audio
  // Held in an optional so that it goes before the second pass: two batches of 7B KV rings at B=8
  // would take 25 GB in bf16.
  std::optional<app::Duplex> duplex;
  duplex.emplace(m.lm, m.codec, sampling, B, "released Mimi, random weights");
  // The Duplex's LM state, reached through its read-only accessor: the jump changes positions only.
  jump_to_full_context(const_cast<lm::LMGenState&>(duplex->lm_state()), c);
  const int64_t fs = duplex->frame_size(), rate = duplex->sample_rate();
  const at::Device dev = duplex->device();

  const at::Tensor wav = speech_like(B, kCycleFrames + 1, fs, rate);
  std::vector<at::Tensor> frames;  // ready-made [B, 1, fs] inputs: the server fills one the same way
  for (int64_t f = 0; f <= kCycleFrames; ++f) frames.push_back(wav.narrow(2, f * fs, fs).contiguous());
  const std::vector<std::string> user_bytes = client_opus(wav.select(0, 0).unsqueeze(0), fs, rate);
  std::vector<audio::OpusWriter> writers;
  std::vector<audio::OpusReader> readers;
  for (int64_t b = 0; b < B; ++b) {
    writers.emplace_back(static_cast<int>(rate));
    readers.emplace_back(static_cast<int>(rate));
    readers.back().append_bytes(reinterpret_cast<const uint8_t*>(user_bytes[0].data()), user_bytes[0].size());
  }

  int64_t f = 0;
  auto one_frame = [&]() {
    const int64_t i = 1 + f++ % kCycleFrames;
    std::optional<app::DuplexFrame> out = duplex->step(frames[static_cast<size_t>(i)]);
    if (!out) return;  // the LM's first max_delay frames
    const at::Tensor audio = out->audio.to(at::kCPU, at::kFloat).contiguous();
    benchmark::DoNotOptimize(out->text.to(at::kCPU).contiguous());
    opus_frame(audio, writers, readers, user_bytes[static_cast<size_t>(i)], fs);
  };
  // Past the LM's delays (no output, no Opus yet), then a few full frames: allocator and caches warm.
  for (int64_t w = 0; w < c.max_delay() + 5; ++w) one_frame();

  std::vector<double> times;
  times.reserve(static_cast<size_t>(state.max_iterations));
  const auto [all0, self0] = cpu_seconds();
  const auto start = Clock::now();
  for (auto _ : state) {
    const auto t0 = Clock::now();
    one_frame();
    times.push_back(ms_since(t0));
  }
  const auto [all1, self1] = cpu_seconds();
  const double others_cores = ((all1 - all0) - (self1 - self0)) / (ms_since(start) / 1e3);
  duplex.reset();

  // Second pass: the same work as Duplex::step, unrolled, with LM, Mimi and Opus timed apart (each part
  // ends on its host copy, so device time lands in the part that queued it).
  double lm_ms = 0, mimi_ms = 0, opus_ms = 0;
  {
    lm::LMGen gen(m.lm, sampling);
    lm::LMGenState st = gen.make_state(B);
    jump_to_full_context(st, c);
    mimi::MimiState enc = m.codec->make_state(B), dec = m.codec->make_state(B);
    int64_t timed = 0;
    for (int64_t k = 0; k < c.max_delay() + 5 + kSplitFrames; ++k) {
      const bool count = k >= c.max_delay() + 5;
      const int64_t i = 1 + k % kCycleFrames;
      auto t0 = Clock::now();
      at::Tensor user = m.codec->encode_step(frames[static_cast<size_t>(i)].to(dev), enc).narrow(1, 0, c.n_q - c.dep_q);
      sync(user);
      const double enc_ms = ms_since(t0);
      t0 = Clock::now();
      std::optional<at::Tensor> y = gen.step(st, user);
      if (y) sync(*y);
      const double step_ms = ms_since(t0);
      if (!y) continue;
      t0 = Clock::now();
      const at::Tensor tokens = y->clamp_min(0);
      const at::Tensor audio = m.codec->decode_step(tokens.narrow(1, 1, c.dep_q), dec).to(at::kCPU, at::kFloat);
      benchmark::DoNotOptimize(tokens.select(1, 0).to(at::kCPU));
      const double dec_ms = ms_since(t0);
      t0 = Clock::now();
      opus_frame(audio.contiguous(), writers, readers, user_bytes[static_cast<size_t>(i)], fs);
      if (!count) continue;
      opus_ms += ms_since(t0);
      lm_ms += step_ms;
      mimi_ms += enc_ms + dec_ms;
      ++timed;
    }
    lm_ms /= static_cast<double>(timed);
    mimi_ms /= static_cast<double>(timed);
    opus_ms /= static_cast<double>(timed);
  }

  const double p50 = percentile(times, 0.5), p99 = percentile(times, 0.99);
  state.counters["p50_ms"] = p50;
  state.counters["p99_ms"] = p99;
  state.counters["max_ms"] = *std::max_element(times.begin(), times.end());
  state.counters["realtime"] = p99 <= kFrameMs ? 1 : 0;
  state.counters["conv_per_s_audio"] = static_cast<double>(B) * kFrameMs / p50;
  state.counters["lm_ms"] = lm_ms;
  state.counters["mimi_ms"] = mimi_ms;
  state.counters["opus_ms"] = opus_ms;
  state.counters["others_cores"] = others_cores;  // cores' worth of CPU other programs used meanwhile
  state.SetLabel(std::string(mt::bench::kernel_path()) + ", " + c10::toString(mt::bench::bench_dtype()));
  results()[preset][B] = Row{B, p50, p99, others_cores};
}

// Timed frames per row: 200 for a p99 (nearest rank: the 3rd slowest frame). The slowest rows (tiny
// at 16, small and 7B at 8: well past 80 ms on a 2-core machine) get 100 (p99 = the 2nd slowest),
// which keeps the whole program near 3 minutes on 2 cores.
int64_t frames_for(const std::string& preset, int64_t B) {
  if ((preset == "tiny" && B >= 16) || (preset != "tiny" && B >= 8)) return 100;
  return 200;
}

void print_summary(const std::vector<std::string>& presets) {
  const char* where = bench_device().is_cpu() ? "this CPU" : "this GPU";
  for (const std::string& preset : presets) {
    auto it = results().find(preset);
    if (it == results().end()) continue;  // filtered out
    const Row* best = nullptr;            // the largest B in real time
    for (const auto& [B, r] : it->second)
      if (r.p99 <= kFrameMs) best = &r;
    const Row* next = nullptr;  // the smallest B above it
    for (const auto& [B, r] : it->second)
      if (!next && (!best || B > best->B)) next = &r;
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s: %lld conversations in real time on %s (", preset.c_str(),
                  static_cast<long long>(best ? best->B : 0), where);
    std::string line = buf;
    if (best) {
      std::snprintf(buf, sizeof buf, "p99 %.1f ms at B=%lld; ", best->p99, static_cast<long long>(best->B));
      line += buf;
    }
    if (next) {
      std::snprintf(buf, sizeof buf, "B=%lld: p99 %.1f ms)", static_cast<long long>(next->B), next->p99);
      line += buf;
    } else {
      line += "no larger B measured)";
    }
    double others = 0;
    for (const auto& [B, r] : it->second) others = std::max(others, r.others_cores);
    if (others > 0.1) {
      std::snprintf(buf, sizeof buf, " [disturbed: other programs took up to %.1f cores]", others);
      line += buf;
    }
    std::printf("%s\n", line.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(mt::bench::bench_threads());
  std::printf("intra-op threads: %d, device: %s\n", at::get_num_threads(), bench_device().str().c_str());
  benchmark::RegisterBenchmark("BM_Sgemm2048", mt::bench::BM_Sgemm2048)
      ->Unit(benchmark::kMillisecond)
      ->MinTime(1.0)
      ->UseRealTime();
  std::vector<std::pair<std::string, std::vector<int64_t>>> plan = {{"tiny", {1, 2, 4, 8, 16}},
                                                                    {"small", {1, 2, 4, 8}}};
  if (bench_device().is_cuda()) plan.push_back({"moshiko-7b", {1, 2, 4, 8}});
  for (const auto& [preset, batches] : plan)
    for (int64_t B : batches)
      benchmark::RegisterBenchmark(("BM_ServeFrame/" + preset + "/" + std::to_string(B)).c_str(), BM_ServeFrame, preset,
                                   B)
          ->Iterations(frames_for(preset, B))
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  const int rc = mt::bench::run_benchmarks(argc, argv);
  std::fflush(stdout);
  std::vector<std::string> presets;
  for (const auto& [preset, batches] : plan) presets.push_back(preset);
  print_summary(presets);
  return rc;
}
