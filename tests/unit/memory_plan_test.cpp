// Tests of the per-rank memory plan (src/train/memory_plan.{h,cpp}): the plan against the measured peak
// of tensor bytes of a training step of the `small` preset, the ZeRO arithmetic, the moshiko-7B
// inventory planned without materialising it (shared/spec/distributed.md §7's counts), the plan without
// a model against the plan of a built one, and the TTT state sizes against materialised states.
#include "train/memory_plan.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <string>
#include <vector>

#include "lm/model_config.h"
#include "lm/ttt_addons.h"
#include "test_util.h"
#include "train/optim.h"
#include "train/trainer.h"
#include "util/peak_memory.h"

using namespace mt;
using train::MemoryPlan;
using train::Sharding;
using train::TrainConfig;

namespace {

TrainConfig small_config(int64_t batch, int64_t frames, bool ckpt) {
  TrainConfig c;
  c.model.lm = lm::LMConfig::small();
  c.batch_size = batch;
  c.duration_sec = static_cast<double>(frames) / c.frame_rate;
  c.gradient_checkpointing = ckpt;
  c.param_dtype = "float32";  // as the CPU tests train
  return c;
}

lm::TTTIntegrationConfig ttt_section(const std::string& yaml) {
  return lm::TTTIntegrationConfig::from_yaml(YAML::Load("enable: true\n" + yaml));
}

struct Measured {
  int64_t before = 0;  // tensor bytes alive before the step: weights, optimizer state, TTT states
  int64_t step = 0;    // the step's peak above that
  int64_t total() const { return before + step; }
};

// One training step as the trainer takes it (model in float32, AdamW over the trainable tensors,
// persistent TTT states, forward, loss, backward, clipping, AdamW), every tensor byte counted from
// before the model exists.
Measured measure_step(const TrainConfig& cfg) {
  PeakMemory all;
  lm::LMModel m = lm::build_model(cfg.model, 0, at::kFloat);
  m->train();
  m->transformer->gradient_checkpointing = cfg.gradient_checkpointing;
  m->depformer->gradient_checkpointing = cfg.gradient_checkpointing;
  train::ParamGroup g{"all", {}, 1e-4, 0.1};
  std::vector<at::Tensor> trainable;
  for (auto& kv : m->named_parameters()) {
    const bool t = train::trains(cfg, kv.key());
    kv.value().set_requires_grad(t);
    if (!t) continue;
    g.params.emplace_back(kv.key(), kv.value());
    trainable.push_back(kv.value());
  }
  train::AdamW opt({g});
  std::vector<std::vector<nn::LayerState>> states;
  states.push_back(m->transformer->make_layer_states(cfg.batch_size));
  at::Generator gen = at::detail::createCPUGenerator(1);
  const int64_t T = cfg.chunk_frames();
  at::Tensor codes = at::randint(m->cfg.card, {cfg.batch_size, m->cfg.num_codebooks(), T}, gen, at::kLong);
  codes.select(1, 0).random_(0, m->cfg.text_card, gen);
  train::OneCycle oc;
  Measured r;
  r.before = all.current();
  PeakMemory step;
  train::train_step(*m, opt, {oc}, 0, {codes}, m->transformer->has_addons() ? &states : nullptr, {},
                    train::LossConfig{}, 1.0, false);
  r.step = step.peak();
  return r;
}

void expect_within(const MemoryPlan& plan, const Measured& got, double tol, const std::string& what) {
  const double ratio = static_cast<double>(plan.total()) / static_cast<double>(got.total());
  EXPECT_NEAR(ratio, 1.0, tol) << what << ": plan " << plan.total() / 1e6 << " MB, measured " << got.total() / 1e6
                               << " MB (before the step " << got.before / 1e6 << ", step peak " << got.step / 1e6
                               << ")\n"
                               << train::format_plan(plan);
  // Exact items: what existed before the step is weights + optimizer state + TTT states (+ small
  // buffers such as the step's codes).
  EXPECT_NEAR(static_cast<double>(plan.weights + plan.optimizer + plan.ttt_state), static_cast<double>(got.before),
              0.01 * static_cast<double>(got.before))
      << what;
}

}  // namespace

// (a) The plan's total against a measured step on the `small` preset: full fine-tuning with the
// trainer's default checkpointing (the peak is at AdamW's step), and LoRA + hybrid TTT without
// checkpointing, where activations are most of the peak.
TEST(MemoryPlan, MatchesMeasuredPeakOfATrainingStepOnTheSmallPreset) {
  TrainConfig full = small_config(2, 128, true);
  full.full_finetuning = true;
  const MemoryPlan pf = train::plan_memory(full, 1);
  expect_within(pf, measure_step(full), 0.10, "full fine-tuning");

  TrainConfig lora = small_config(2, 128, false);
  lora.model.lora.enable = true;
  lora.model.lora.rank = 16;
  lora.model.ttt = ttt_section("layers: \"6,7\"\ntype: linear\nmini_batch_size: 16\nbase_lr: 0.1");
  const MemoryPlan pl = train::plan_memory(lora, 1);
  EXPECT_GT(pl.activations, pl.total() * 2 / 5) << "activations should dominate this case";
  expect_within(pl, measure_step(lora), 0.10, "LoRA + hybrid TTT, no checkpointing");
}

// (b) ZeRO: AdamW's moments and masters split over the ranks (to the buckets' padding); gradients in
// float32 buckets on top of the parameters' own; ZeRO-2's parameter gradients released.
TEST(MemoryPlan, ShardingDividesOptimizerStateOverTheRanks) {
  TrainConfig c = small_config(1, 16, true);
  c.full_finetuning = true;
  c.param_dtype = "bfloat16";
  const MemoryPlan one = train::plan_memory(c, 1);
  EXPECT_EQ(one.trainable, one.parameters);
  EXPECT_EQ(one.weights, 2 * one.parameters);
  EXPECT_EQ(one.gradients, 2 * one.trainable);
  EXPECT_EQ(one.optimizer, 12 * one.trainable);  // exp_avg, exp_avg_sq, float32 master
  EXPECT_EQ(one.grad_buckets, 0);
  c.sharding = Sharding::kOptimizer;
  EXPECT_EQ(train::plan_memory(c, 1).sharding, Sharding::kNone) << "one process shards nothing";

  const int64_t world = 4;
  c.sharding = Sharding::kNone;
  const MemoryPlan ddp = train::plan_memory(c, world);
  EXPECT_EQ(ddp.optimizer, one.optimizer);
  EXPECT_GE(ddp.grad_buckets, 4 * one.trainable);
  EXPECT_LT(ddp.grad_buckets, 4 * one.trainable + 4 * world * 1000);  // padding: < world elements per bucket
  EXPECT_EQ(ddp.gradients, 2 * one.trainable + ddp.grad_buckets);

  c.sharding = Sharding::kOptimizer;
  const MemoryPlan z1 = train::plan_memory(c, world);
  EXPECT_NEAR(static_cast<double>(z1.optimizer), static_cast<double>(one.optimizer) / world, 12.0 * 1000);
  EXPECT_EQ(z1.gradients, ddp.gradients);

  c.sharding = Sharding::kGradients;
  const MemoryPlan z2 = train::plan_memory(c, world);
  EXPECT_EQ(z2.optimizer, z1.optimizer);
  // ZeRO-2: the float32 shards, plus at most GradBuckets::kInFlight full buckets at once (here a few
  // embeddings larger than bucket_cap_mb make buckets of their own, so the saving is modest; see the 7B
  // test for a model of many buckets).
  EXPECT_GE(static_cast<double>(z2.grad_buckets), 4.0 * one.trainable / world);
  EXPECT_LT(z2.grad_buckets, ddp.grad_buckets) << "ZeRO-2 keeps no full float32 copy of the gradients";
  EXPECT_LT(z2.gradients - z2.grad_buckets, ddp.gradients - ddp.grad_buckets) << "parameter gradients released";
  c.num_microbatches = 2;  // earlier micro-batches accumulate into the parameters' gradients
  EXPECT_EQ(train::plan_memory(c, world).gradients - z2.grad_buckets, 2 * one.trainable);

  // float32: no master unsharded; the shards AdamW steps are float32 masters of their own.
  c.param_dtype = "float32";
  c.num_microbatches = 1;
  c.sharding = Sharding::kNone;
  EXPECT_EQ(train::plan_memory(c, 1).optimizer, 8 * one.trainable);
  c.sharding = Sharding::kOptimizer;
  EXPECT_NEAR(static_cast<double>(train::plan_memory(c, world).optimizer), 12.0 * one.trainable / world, 12.0 * 1000);
}

// (c) moshiko-7B planned without materialising it: shared/spec/distributed.md §7's parameter counts,
// and its arithmetic for full fine-tuning over 8 ranks, in well under a second.
TEST(MemoryPlan, Moshiko7BWithoutMaterialisingMatchesTheSpecCounts) {
  TrainConfig c;
  c.model.lm = lm::LMConfig::moshiko_7b();
  c.full_finetuning = true;
  c.batch_size = 16;
  c.duration_sec = 100;
  const auto t0 = std::chrono::steady_clock::now();
  const MemoryPlan full = train::plan_memory(c, 8);
  EXPECT_EQ(full.parameters, 7687729152);
  EXPECT_EQ(full.trainable, 7687729152);
  EXPECT_NEAR(full.weights / 1e9, 15.4, 0.05);    // bf16
  EXPECT_NEAR(full.optimizer / 1e9, 92.3, 0.05);  // 12 B per parameter, unsharded
  c.sharding = Sharding::kOptimizer;
  const MemoryPlan z1 = train::plan_memory(c, 8);
  EXPECT_NEAR(z1.optimizer / 1e9, 11.5, 0.05);  // 12Ψ / 8
  // ZeRO-2: float32 gradient shards (4Ψ / 8 = 3.8 GB) and a few buckets in flight, where ZeRO-1 holds
  // the bf16 gradients and a float32 bucket copy of them all (2Ψ + 4Ψ = 46 GB).
  c.sharding = Sharding::kGradients;
  const MemoryPlan z2 = train::plan_memory(c, 8);
  EXPECT_NEAR(z1.gradients / 1e9, 46.1, 0.1);
  EXPECT_LT(z2.gradients / 1e9, 6.0);
  EXPECT_GT(z2.gradients / 1e9, 3.8);

  c.full_finetuning = false;
  c.sharding = Sharding::kNone;
  c.model.lora.enable = true;
  c.model.lora.rank = 128;
  c.model.ttt = ttt_section("variant: hybrid\nlayers: all\ntype: mlp");  // the costliest TTT to build, for the timing
  const MemoryPlan big = train::plan_memory(c, 1);
  EXPECT_GT(big.ttt_state, 0);
  c.model.ttt = {};
  const MemoryPlan lora = train::plan_memory(c, 1);
  EXPECT_EQ(lora.parameters, 7687729152 + 387874816);
  EXPECT_EQ(lora.trainable, 387874816);
  EXPECT_NEAR((lora.weights + lora.gradients + lora.optimizer) / 1e9, 21.6, 0.6);  // bf16 base + LoRA states
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 20.0);
}

// (d) The plan from the config alone equals the plan of the built model, for every TTT variant, LoRA,
// and the trainable set they imply.
TEST(MemoryPlan, PlanWithoutModelEqualsPlanOfTheBuiltModel) {
  std::vector<TrainConfig> cases;
  TrainConfig s = small_config(2, 32, true);
  s.model.lora.enable = true;
  s.model.lora.ft_embed = true;
  s.model.ttt = ttt_section("layers: \"6,7\"\ntype: mlp");
  cases.push_back(s);
  for (const char* t : {"variant: hybrid\nlayers: \"1\"\nshare_qk: true", "variant: adapter\nlayers: all",
                        "variant: inplace\nlayers: \"1\"\ninplace_chunk_size: 8"}) {
    TrainConfig c = small_config(3, 24, false);
    c.model.lm = lm::LMConfig::tiny();
    c.model.ttt = ttt_section(t);
    c.num_microbatches = 2;
    cases.push_back(c);
  }
  for (const TrainConfig& c : cases) {
    lm::LMModel m = lm::build_model(c.model, 0, at::kFloat);
    const MemoryPlan built = train::plan_memory(*m, c, 2), dry = train::plan_memory(c, 2);
    EXPECT_EQ(dry.parameters, m->num_parameters());
    EXPECT_EQ(dry.parameters, built.parameters);
    EXPECT_EQ(dry.trainable, built.trainable);
    EXPECT_EQ(dry.weights, built.weights);
    EXPECT_EQ(dry.gradients, built.gradients);
    EXPECT_EQ(dry.grad_buckets, built.grad_buckets);
    EXPECT_EQ(dry.optimizer, built.optimizer);
    EXPECT_EQ(dry.ttt_state, built.ttt_state);
    EXPECT_EQ(dry.microbatch_activations, built.microbatch_activations);
    EXPECT_EQ(dry.total(), built.total());
  }
  // Building nothing left the CPU factories on meta tensors.
  EXPECT_TRUE(at::ones({2}).device().is_cpu());
  EXPECT_EQ(at::ones({2}).sum().item<float>(), 2.0f);
}

// The TTT state sizes against the states a forward materialises (hybrid and adapter states are built
// lazily), for every kind of state.
TEST(MemoryPlan, TTTStateBytesMatchMaterialisedStates) {
  for (const char* t : {"variant: hybrid\nlayers: \"1\"\ntype: linear", "variant: hybrid\nlayers: all\ntype: mlp",
                        "variant: hybrid\nlayers: \"1\"\nshare_qk: true", "variant: adapter\nlayers: all",
                        "variant: inplace\nlayers: \"1\"\ninplace_chunk_size: 8"}) {
    lm::LMModel m(lm::LMConfig::tiny(), ttt_section(t));
    m->init_weights(0);
    const int64_t B = 3;
    auto states = m->transformer->make_layer_states(B);
    at::Generator gen = at::detail::createCPUGenerator(2);
    at::NoGradGuard ng;
    m->forward(at::randint(m->cfg.card, {B, m->cfg.num_codebooks(), 20}, gen, at::kLong), nullptr, &states);
    int64_t bytes = 0;
    for (const auto& ls : states) {
      for (size_t i = 0; i < ls.size(); ++i) {
        const int64_t k = static_cast<int64_t>(i);
        const ttt::TTTState* s = nullptr;
        if (auto* h = ls.as<lm::HybridState>(k)) s = &h->s;
        if (auto* a = ls.as<lm::AdapterState>(k)) s = &a->s;
        if (s) {
          for (const auto* v : {&s->W, &s->G})
            for (const auto& w : *v) bytes += static_cast<int64_t>(w.nbytes());
          if (s->conv_tail.defined()) bytes += static_cast<int64_t>(s->conv_tail.nbytes());
        }
        if (auto* ip = ls.as<lm::InPlaceStreamState>(k))
          bytes += static_cast<int64_t>(ip->s.dw.nbytes() + ip->s.h_buf.nbytes() + ip->s.t_buf.nbytes());
      }
    }
    EXPECT_GT(bytes, 0) << t;
    EXPECT_EQ(train::ttt_state_bytes_per_stream(*m, "float32") * B, bytes) << t;
  }
}

TEST(MemoryPlan, FormatsATableAndRefusesBadInputs) {
  TrainConfig c = small_config(2, 16, true);
  c.model.ttt = ttt_section("layers: \"6\"");
  const std::string s = train::format_plan(train::plan_memory(c, 1));
  for (const char* w : {"1 rank", "sharding none", "param_dtype float32", "weights", "gradients", "optimizer state",
                        "TTT state", "2 streams", "activations (estimate)", "total (expected peak)", "GiB"})
    EXPECT_NE(s.find(w), std::string::npos) << "'" << w << "' not in:\n" << s;
  c.param_dtype = "float16";
  test::expect_error([&] { train::plan_memory(c, 1); }, {"param_dtype", "float16"});
  c.param_dtype = "float32";
  test::expect_error([&] { train::plan_memory(c, 0); }, {"world size", "0"});
}
