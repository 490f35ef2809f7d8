// Training speed and memory of the `small` LM (dim 512, 8 layers; float32): tokens/s of one optimizer
// step (forward, moshi-finetune loss, backward, clipping, AdamW) at batch 2 x 128 frames, full
// fine-tuning, without and with hybrid TTT-MLP layers on layers 6 and 7, without and with gradient
// checkpointing; peak memory from the allocator's reports (CPU). MOSHI_TTT_BENCH_THREADS (default 2),
// MOSHI_TTT_BENCH_DEVICE (cpu | cuda).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cstdlib>

#include "bench_main.h"
#include "lm/lm_model.h"
#include "train/optim.h"
#include "train/trainer.h"
#include "util/peak_memory.h"

using mt::bench::bench_device;
using mt::bench::sync;

using namespace mt;

namespace {

void BM_TrainStep(benchmark::State& state) {
  const bool ttt = state.range(0) != 0, ckpt = state.range(1) != 0;
  const int64_t B = 2, T = 128;
  lm::TTTIntegrationConfig t;
  if (ttt) {
    t.enable = true;
    t.variant = lm::TTTVariant::kHybrid;
    t.layers = "6,7";
    t.type = lm::TTTInner::kMlp;
    t.base_lr = 0.1;
    t.mini_batch_size = 16;
  }
  lm::LMModel m(lm::LMConfig::small(), t);
  m->init_weights(0);
  m->to(bench_device());
  m->train();
  m->transformer->gradient_checkpointing = ckpt;
  m->depformer->gradient_checkpointing = ckpt;
  train::ParamGroup g{"all", {}, 1e-4, 0.1};
  std::vector<at::Tensor> params;
  for (auto& kv : m->named_parameters()) {
    kv.value().set_requires_grad(true);
    g.params.emplace_back(kv.key(), kv.value());
    params.push_back(kv.value());
  }
  train::AdamW opt({g});
  train::OneCycle oc;
  oc.total_steps = 1000000;
  at::Generator gen = at::detail::createCPUGenerator(1);
  at::Tensor codes = at::randint(2048, {B, m->cfg.num_codebooks(), T}, gen, at::kLong);
  codes.select(1, 0).random_(0, 32000, gen);
  codes = codes.to(bench_device());
  std::vector<std::vector<nn::LayerState>> states;
  states.push_back(m->transformer->make_layer_states(B));
  int64_t step = 0;
  auto one = [&]() {
    train::train_step(*m, opt, {oc}, step++, {codes}, ttt ? &states : nullptr, {}, train::LossConfig{}, 1.0, params,
                      false);
  };
  one();  // warm-up (allocations, optimizer state)
  int64_t peak = 0;
  for (auto _ : state) {
    PeakMemory mem(bench_device().type());
    one();
    peak = std::max(peak, mem.peak());
  }
  state.counters["frames/s"] =
      benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_MB"] = static_cast<double>(peak) / 1e6;
  state.SetLabel(std::string(ttt ? "hybrid TTT-MLP x2" : "no TTT") + (ckpt ? ", checkpointing" : ""));
}

}  // namespace

BENCHMARK(BM_TrainStep)->ArgsProduct({{0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->MinTime(5.0)->UseRealTime();

int main(int argc, char** argv) { return mt::bench::run_benchmarks(argc, argv); }
