// Training speed and memory: frames/s of one optimizer step as `train` takes it (forward,
// moshi-finetune's loss, backward, clipping, AdamW) on the models that scripts/reference/compare_train.sh
// also gives moshi-finetune, next to this run's sgemm rate.
//
// BM_TrainStep/<model>/<T>/<B>/<checkpointing>, model:
//   0 small, full fine-tune          1 small, LoRA rank 128 on every linear (moshi-finetune's default)
//   2 tiny, full fine-tune           3 tiny + hybrid TTT-Linear on layer 1 (configs/tiny-hybrid.yaml)
//   4 small + hybrid TTT-MLP on layers 6 and 7, full fine-tune (the cost of TTT at scale)
//   5 moshiko-7b, LoRA rank 128 (random weights; registered only with MOSHI_TTT_BENCH_DEVICE=cuda)
// Counters: frames/s (temporal frames x batch, moshi-finetune's tokens/s), GFLOP/s of useful work
// (below), peak_MB (allocator), and the label says which kernels ran (fused or general).
// MOSHI_TTT_BENCH_THREADS (default 2), MOSHI_TTT_BENCH_DEVICE (cpu | cuda), MOSHI_TTT_PROFILE=N
// (a per-operator profile of one step, N rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <cstdlib>

#include "bench_main.h"
#include "lm/lm_model.h"
#include "lm/model_config.h"
#include "op_profile.h"
#include "train/optim.h"
#include "train/trainer.h"
#include "util/peak_memory.h"

using mt::bench::bench_device;
using mt::bench::sync;

using namespace mt;

namespace {

enum class Model { kSmallFull, kSmallLora, kTinyFull, kTinyHybrid, kSmallHybridMlp, k7bLora };

const char* model_name(Model m) {
  switch (m) {
    case Model::kSmallFull: return "small full";
    case Model::kSmallLora: return "small LoRA r128";
    case Model::kTinyFull: return "tiny full";
    case Model::kTinyHybrid: return "tiny hybrid TTT-Linear";
    case Model::kSmallHybridMlp: return "small hybrid TTT-MLP x2";
    case Model::k7bLora: return "moshiko-7b LoRA r128";
  }
  return "?";
}

lm::LMModel build(Model which) {
  // The tiny hybrid is the repository's own config file; the others are presets.
  if (which == Model::kTinyHybrid)
    return lm::build_model(lm::ModelConfigFile::load(MT_SOURCE_DIR "/configs/tiny-hybrid.yaml"), 0,
                           mt::bench::bench_dtype());
  lm::ModelConfigFile mc;
  mc.lm = which == Model::kTinyFull ? lm::LMConfig::tiny()
          : which == Model::k7bLora ? lm::LMConfig::moshiko_7b()
                                    : lm::LMConfig::small();
  lm::TTTIntegrationConfig& t = mc.ttt;
  if (which == Model::kSmallHybridMlp) {
    t.enable = true;
    t.variant = lm::TTTVariant::kHybrid;
    t.layers = "6,7";
    t.type = lm::TTTInner::kMlp;
    t.base_lr = 0.1;
    t.mini_batch_size = 16;
  } else if (which == Model::kSmallLora || which == Model::k7bLora) {
    mc.lora.enable = true;
    mc.lora.rank = 128;
    mc.lora.scaling = 2.0;
  }
  if (which == Model::k7bLora) {
    // Built in the benchmark's dtype on the device (28 GB in float32 would not fit the host).
    c10::ScalarType was = c10::typeMetaToScalarType(c10::get_default_dtype());
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(mt::bench::bench_dtype()));
    lm::LMModel m(mc.lm, mc.ttt, mc.lora);
    c10::set_default_dtype(c10::scalarTypeToTypeMeta(was));
    m->to(bench_device());
    at::NoGradGuard ng;
    for (auto& p : m->parameters()) p.normal_(0, 0.02);  // random weights: the speed does not depend on them
    m->init_added(0, true, true);
    return m;
  }
  return lm::build_model(mc, 0, mt::bench::bench_dtype());
}

// Multiply-adds a step must do per frame, a lower bound: each matrix (embeddings excluded) once in
// the forward and once for its input's gradient, and trainable matrices once more for their own
// gradient; attention's products and the TTT inner loop are left out.
double useful_flop_per_frame(const lm::LMModelImpl& m) {
  double all = 0, trained = 0;
  for (const auto& kv : m.named_parameters()) {
    const at::Tensor& p = kv.value();
    if (p.dim() < 2 || (kv.key().find("emb") != std::string::npos && kv.key().find("low_rank") == std::string::npos))
      continue;
    all += static_cast<double>(p.numel());
    if (p.requires_grad()) trained += static_cast<double>(p.numel());
  }
  return 2.0 * (2.0 * all + trained);
}

void BM_TrainStep(benchmark::State& state) {
  const auto which = static_cast<Model>(state.range(0));
  const int64_t T = state.range(1), B = state.range(2);
  const bool ckpt = state.range(3) != 0;
  lm::LMModel m = build(which);
  m->to(bench_device());
  m->train();
  m->transformer->gradient_checkpointing = ckpt;
  m->depformer->gradient_checkpointing = ckpt;
  train::ParamGroup g{"all", {}, 2e-6, 0.1};
  std::vector<at::Tensor> params;
  for (auto& kv : m->named_parameters()) {
    const bool t = train::trains(!m->lora_cfg.enable, m->lora_cfg, kv.key());
    kv.value().set_requires_grad(t);
    if (!t) continue;
    g.params.emplace_back(kv.key(), kv.value());
    params.push_back(kv.value());
  }
  train::AdamW opt({g}, train::AdamWConfig{0.9, 0.95, 1e-8});
  train::OneCycle oc;
  oc.total_steps = 1000000;
  oc.pct_start = 0.05;
  at::Generator gen = at::detail::createCPUGenerator(1);
  at::Tensor codes = at::randint(m->cfg.card, {B, m->cfg.num_codebooks(), T}, gen, at::kLong);
  codes.select(1, 0).random_(0, m->cfg.text_card, gen);
  codes = codes.to(bench_device());
  std::vector<std::vector<nn::LayerState>> states;
  const bool persistent = m->transformer->has_addons() && which == Model::kTinyHybrid;
  if (persistent) states.push_back(m->transformer->make_layer_states(B));
  train::LossConfig lc;
  lc.first_codebook_weight_multiplier = 100.0;  // moshi-finetune's example/moshi_7B.yaml
  lc.text_padding_weight = 0.5;
  int64_t step = 0;
  auto one = [&]() {
    train::train_step(*m, opt, {oc}, step++, {codes}, persistent ? &states : nullptr, {}, lc, 1.0, false);
  };
  // Two warm-up steps: the first creates the optimizer state, the second grows the heap to its steady
  // size (freed memory is reused from then on, util::keep_freed_memory), so faults/step reads 0.
  one();
  one();
  const std::string title = std::string("train step, ") + model_name(which) + ", T=" + std::to_string(T) +
                            ", B=" + std::to_string(B) + (ckpt ? ", checkpointing" : "");
  if (int rows = mt::bench::profile_rows(title)) mt::bench::profile_ops(title, one, rows);
  int64_t peak = 0;
  rusage ru0{}, ru1{};
  getrusage(RUSAGE_SELF, &ru0);
  for (auto _ : state) {
    PeakMemory mem(bench_device().type());
    one();
    peak = std::max(peak, mem.peak());
  }
  getrusage(RUSAGE_SELF, &ru1);
  // Page faults per step: memory the step had to fault in (0 when freed memory is reused).
  state.counters["faults/step"] = static_cast<double>(ru1.ru_minflt - ru0.ru_minflt) /
                                  static_cast<double>(std::max<int64_t>(1, state.iterations()));
  const double frames = static_cast<double>(B * T);
  state.counters["frames/s"] = benchmark::Counter(frames, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(useful_flop_per_frame(*m) * frames / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;
  state.SetLabel(std::string(model_name(which)) + (ckpt ? ", checkpointing" : "") +
                 (mt::bench::bench_dtype() == at::kBFloat16 ? ", bf16" : "") + ", " + mt::bench::kernel_path());
}

}  // namespace

BENCHMARK(mt::bench::BM_Sgemm2048)->Unit(benchmark::kMillisecond)->MinTime(1.0)->UseRealTime();
// The side-by-side grid (compare_train.sh picks from it with --benchmark_filter).
BENCHMARK(BM_TrainStep)
    ->ArgsProduct({{0, 1, 2, 3}, {256, 1024}, {1, 4}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();
// The cost of TTT and of checkpointing on the small model.
BENCHMARK(BM_TrainStep)
    ->ArgsProduct({{0, 4}, {128}, {2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0)
    ->UseRealTime();

int main(int argc, char** argv) {
  if (bench_device().is_cuda())  // moshi-finetune's setting on one H100 (its README: ~12k tokens/s)
    benchmark::RegisterBenchmark("BM_TrainStep7b", BM_TrainStep)
        ->Args({static_cast<int64_t>(Model::k7bLora), 1024, 4, 1})
        ->Unit(benchmark::kMillisecond)
        ->MinTime(5.0)
        ->UseRealTime();
  return mt::bench::run_benchmarks(argc, argv);
}
