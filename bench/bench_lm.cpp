// Moshi LM speed: forward tokens/s and streaming ms/step of the `small` preset (dim 512, 8 layers,
// 8 heads, 17 streams, card 2048, text 32000, depformer 256 x 2 layers, fp32), next to this machine's
// measured sgemm GFLOP/s and gemv bandwidth (the floor of a batch-1 streaming step is its weight bytes
// divided by that bandwidth). Threads: MOSHI_TTT_BENCH_THREADS (default 2).
// The second argument picks a TTT integration on layers 6 and 7 (issue 4's comparison): 0 none,
// 1 hybrid TTT-MLP, 2 hybrid TTT-Linear, 3 TTT adapters (rank 32, attention in/out projections),
// 4 In-Place TTT (chunk 256). The ratio to variant 0 is the cost of TTT.
// BM_LMStreamingStepQ8: the same step with Kyutai's q8 weights (int8 linears, util/gemv_q8.h) against
// float32, interleaved in one run (medians), next to the int8 weight-streaming floor: the step's weight
// bytes over the read bandwidth of a buffer of that size.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "bench_main.h"
#include "lm/lm_gen.h"
#include "lm/lm_model.h"
#include "op_profile.h"
#include "util/fused.h"
#include "util/gemv.h"
#include "util/gemv_q8.h"

using mt::bench::bench_device;
using mt::bench::sync;

using namespace mt::lm;

namespace {

TTTIntegrationConfig variant_config(int64_t v) {
  TTTIntegrationConfig t;
  if (v == 0) return t;
  t.enable = true;
  t.layers = "6,7";
  t.mini_batch_size = 16;
  if (v == 1 || v == 2) {
    t.variant = TTTVariant::kHybrid;
    t.type = v == 1 ? TTTInner::kMlp : TTTInner::kLinear;
    t.base_lr = v == 1 ? 0.1 : 1.0;
  } else if (v == 3) {
    t.variant = TTTVariant::kAdapter;
    t.adapter_rank = 32;
  } else {
    t.variant = TTTVariant::kInPlace;
    t.inplace_chunk_size = 256;
  }
  return t;
}

const char* variant_name(int64_t v) {
  static const char* names[] = {"base", "hybrid-mlp", "hybrid-linear", "adapter-r32", "inplace"};
  return names[v];
}

LMModel& small_model(int64_t variant = 0) {
  static std::map<int64_t, LMModel> models;
  auto it = models.find(variant);
  if (it != models.end()) return it->second;
  LMModel x(LMConfig::small(), variant_config(variant));
  x->init_weights(0);
  x->to(bench_device());
  for (auto& p : x->parameters()) p.set_requires_grad(false);
  x->eval();
  return models.emplace(variant, x).first->second;
}

// Bytes of weights a batch-1 streaming step reads: every matrix once (embedding tables only by row).
double step_weight_bytes(const LMModel& m) {
  double b = 0;
  for (const auto& kv : m->named_parameters()) {
    const std::string& n = kv.key();
    if (n.find("emb") != std::string::npos && n.find("low_rank") == std::string::npos) continue;
    b += static_cast<double>(kv.value().numel() * kv.value().element_size());
  }
  return b;
}

double g_gemv_gbps = 0;
double g_read_gbps = 0;  // plain sequential read (a sum over 256 MiB): the stricter floor

void BM_Gemv8192(benchmark::State& state) {
  at::Tensor w = at::randn({8192, 8192}), x = at::randn({8192});
  for (auto _ : state) benchmark::DoNotOptimize(at::mv(w, x));
  state.counters["GB/s"] = benchmark::Counter(8192.0 * 8192 * 4 / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LMForward(benchmark::State& state) {
  const int64_t T = state.range(0);
  LMModel& m = small_model(state.range(1));
  state.SetLabel(std::string(variant_name(state.range(1))) + ", " + mt::bench::kernel_path());
  at::InferenceMode im;
  at::Generator g = at::detail::createCPUGenerator(1);
  at::Tensor codes = at::randint(2048, {1, m->cfg.num_codebooks(), T}, g, at::kLong);
  codes.select(1, 0).random_(0, 32000, g);
  codes = codes.to(bench_device());
  sync(m->forward(codes).logits);  // warm-up
  const std::string title = "LM forward T=" + std::to_string(T) + ", " + variant_name(state.range(1));
  if (int rows = mt::bench::profile_rows(title))
    mt::bench::profile_ops(
        title, [&] { sync(m->forward(codes).logits); }, rows, 2);
  for (auto _ : state) sync(m->forward(codes).logits);
  state.counters["tok/s"] = benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
  // Useful work, a lower bound: every non-embedding weight is one multiply-add per time step (the
  // depformer applies each codebook's weights once per step); attention's own products are left out.
  // Next to BM_Sgemm2048's GFLOP/s it bounds the forward speed any fp32 implementation reaches here.
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * step_weight_bytes(m) / 4.0 * static_cast<double>(T) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LMStreamingStep(benchmark::State& state) {
  LMModel& m = small_model(state.range(0));
  state.SetLabel(std::string(variant_name(state.range(0))) + ", " + mt::bench::kernel_path());
  SamplingConfig s;
  s.use_sampling = false;
  LMGen gen(m, s);
  LMGenState st = gen.make_state(1);
  at::Tensor user = at::zeros({1, m->cfg.n_q - m->cfg.dep_q, 1}, at::kLong);
  for (int i = 0; i < 5; ++i) gen.step(st, user);  // warm-up
  for (auto _ : state) {
    auto y = gen.step(st, user);
    if (y) sync(*y);
  }
  double bytes = step_weight_bytes(m);
  state.counters["weight_MB"] = bytes / 1e6;
  if (g_gemv_gbps > 0) state.counters["floor_ms"] = bytes / (g_gemv_gbps * 1e9) * 1e3;
  if (g_read_gbps > 0) state.counters["floor_read_ms"] = bytes / (g_read_gbps * 1e9) * 1e3;
}

// The small model's weights in q8 (quantised from the float32 benchmark model).
LMModel& small_q8_model() {
  static LMModel q8 = [] {
    LMConfig c = LMConfig::small();
    c.quantize = true;
    LMModel m(c);
    std::map<std::string, at::Tensor> t;
    for (auto& [n, v] : quantized_state_dict(*small_model(0))) t[n] = v;
    m->load(t, "small (quantised)");
    for (auto& p : m->parameters()) p.set_requires_grad(false);
    m->eval();
    return m;
  }();
  return q8;
}

// Read bandwidth of a buffer of `bytes` (best of 20 sums after a warm-up): a streaming step reads
// its weights once, from wherever they sit after the previous step (caches included).
double read_gbps(double bytes) {
  at::Tensor buf = at::randn({static_cast<int64_t>(bytes / 4) + 1});
  buf.sum().item<float>();
  double best = 1e9;
  for (int i = 0; i < 20; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    buf.sum().item<float>();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return bytes / best / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// float32 and q8 steps of the small model interleaved (one of each per iteration, so load from other
// processes hits both alike); the iteration time is the q8 step's.
void BM_LMStreamingStepQ8(benchmark::State& state) {
  LMModel &f = small_model(0), &q = small_q8_model();
  state.SetLabel(mt::bench::kernel_path());
  SamplingConfig s;
  s.use_sampling = false;
  LMGen gf(f, s), gq(q, s);
  LMGenState sf = gf.make_state(1), sq = gq.make_state(1);
  at::Tensor user = at::zeros({1, f->cfg.n_q - f->cfg.dep_q, 1}, at::kLong);
  for (int i = 0; i < 5; ++i) {  // warm-up
    gf.step(sf, user);
    gq.step(sq, user);
  }
  if (int rows = mt::bench::profile_rows("LM streaming step, q8"))
    mt::bench::profile_ops(
        "LM streaming step, q8", [&] { gq.step(sq, user); }, rows, 20);
  std::vector<double> tf, tq;
  auto timed = [&](const LMGen& g, LMGenState& st) {
    auto t0 = std::chrono::steady_clock::now();
    g.step(st, user);
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  for (auto _ : state) {
    tf.push_back(timed(gf, sf));
    tq.push_back(timed(gq, sq));
    state.SetIterationTime(tq.back() / 1e3);
  }
  const double bq = step_weight_bytes(q), bf = step_weight_bytes(f);
  const double floor_q = bq / (read_gbps(bq) * 1e9) * 1e3, floor_f = bf / (read_gbps(bf) * 1e9) * 1e3;
  const double mf = median(tf), mq = median(tq);
  state.counters["f32_ms"] = mf;
  state.counters["q8_ms"] = mq;
  state.counters["f32_over_q8"] = mf / mq;
  state.counters["q8_MB"] = bq / 1e6;
  state.counters["int8_floor_ms"] = floor_q;
  state.counters["q8_over_floor"] = mq / floor_q;
  state.counters["f32_floor_ms"] = floor_f;
}

// One batch-1 product, float32 gemv (util/gemv.h) against the int8 one, interleaved: [out, in] from
// the args (the text head 32000 x 512; a depformer FFN 1408 x 256).
void BM_GemvQ8(benchmark::State& state) {
  const int64_t out = state.range(0), in = state.range(1);
  at::Tensor w = at::randn({out, in}), x = at::randn({1, in});
  const mt::util::Q8Weight q = mt::util::quantize_q8(w);
  std::vector<double> tf, tq;
  auto timed = [](auto&& fn) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  };
  for (auto _ : state) {
    tf.push_back(timed([&] { benchmark::DoNotOptimize(mt::util::fast_gemv(x, w)); }));
    tq.push_back(timed([&] { benchmark::DoNotOptimize(mt::util::fast_gemv_q8(x, q.cb, q.scb)); }));
    state.SetIterationTime(tq.back() / 1e6);
  }
  state.counters["f32_us"] = median(tf);
  state.counters["q8_us"] = median(tq);
  state.counters["q8_GB/s"] = static_cast<double>(out * in) / median(tq) / 1e3;
  state.counters["f32_GB/s"] = static_cast<double>(out * in * 4) / median(tf) / 1e3;
}

// The base model's step with the fused one-query attention and one-pass RMSNorm switched off (the
// general tensor path), for the paired comparison.
void BM_LMStreamingStepGeneralPath(benchmark::State& state) {
  {
    mt::util::FusedKernelsOff general;
    BM_LMStreamingStep(state);
  }
  state.SetLabel("base, general");
}

}  // namespace

BENCHMARK(mt::bench::BM_Sgemm2048)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
BENCHMARK(BM_Gemv8192)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
BENCHMARK(BM_LMForward)
    ->ArgsProduct({{256}, {0, 1, 2, 3, 4}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();
BENCHMARK(BM_LMStreamingStep)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_GemvQ8)
    ->Args({32000, 512})
    ->Args({1408, 256})
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(1.0)
    ->UseManualTime();
BENCHMARK(BM_LMStreamingStepQ8)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseManualTime();
BENCHMARK(BM_LMStreamingStepGeneralPath)->Arg(0)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

// --measure-bandwidth: this machine's sequential read rate on a 1 GiB buffer (a sum, best of 5) and the
// bf16 gemv's weight rate on a 1 GiB bf16 matrix, printed as `read_gbps=` / `gemv_bf16_gbps=` lines for
// scripts/bench/moshiko_7b.sh, which divides a 7B step's weight bytes by the read rate for its floor.
int measure_bandwidth() {
  auto best_s = [](const std::function<void()>& fn) {
    fn();
    double best = 1e9;
    for (int i = 0; i < 5; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  const double gib = static_cast<double>(int64_t{1} << 30);
  {
    const at::Tensor big = at::ones({int64_t{1} << 28});  // 1 GiB of float32, touched
    std::printf("read_gbps=%.2f\n", gib / best_s([&] { big.sum().item<float>(); }) / 1e9);
  }
  {
    const at::Tensor w = at::ones({16384, 32768}, at::kBFloat16), x = at::randn({1, 32768});
    std::printf("gemv_bf16_gbps=%.2f\n", gib / best_s([&] { mt::util::linear_nobias(x, w); }) / 1e9);
  }
  std::printf("threads=%d\n", at::get_num_threads());
  return 0;
}

int main(int argc, char** argv) {
  at::set_num_threads(mt::bench::bench_threads());
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--measure-bandwidth") return measure_bandwidth();
  {
    // Measure gemv bandwidth once so the streaming benchmark can report its floor.
    at::Tensor w = at::randn({8192, 8192}), x = at::randn({8192});
    at::mv(w, x);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) at::mv(w, x);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 20;
    g_gemv_gbps = 8192.0 * 8192 * 4 / s / 1e9;
    at::Tensor big = at::randn({64 << 20});
    double best = 1e9;
    for (int i = 0; i < 10; ++i) {
      auto t1 = std::chrono::steady_clock::now();
      big.sum().item<float>();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
    }
    g_read_gbps = 4.0 * (64 << 20) / best / 1e9;
  }
  return mt::bench::run_benchmarks(argc, argv);
}
