// Issue 11 options: In-Place ΔW clipping by Frobenius norm, layer presets, and the "no silent
// settings" guards (pitfalls.md rows 9 and 11).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <fstream>

#include "lm/lm_model.h"
#include "lm_test_util.h"
#include "test_util.h"
#include "train/train_config.h"
#include "ttt/inplace.h"
#include "ttt_test_util.h"
#include "util/pitfall_switch.h"

using namespace mt;
using mt::pitfall::Reintroduce;

namespace {

ttt::InPlaceFFN clip_module(double clip, uint64_t seed) {
  ttt::InPlaceConfig c;
  c.dim = 6;
  c.hidden = 10;
  c.chunk_size = 4;
  c.lr = 0.5;
  c.delta_clip_fro_norm = clip;
  ttt::InPlaceFFN m(c);
  m->to(at::kDouble);
  m->load(test::inplace_random_weights(c, seed));
  return m;
}

at::Tensor rnd(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randn(shape, g, at::TensorOptions().dtype(at::kDouble));
}

lm::LMConfig tiny_lm() { return test::tiny_lm(3); }  // TTT on the middle one of 3 layers
using test::random_codes;
using test::ttt_yaml;

// A tiny LM with In-Place TTT whose target conv and projection are random (the official zero init
// would make every update zero).
lm::LMModel inplace_lm(const std::string& extra) {
  lm::LMModel m(tiny_lm(), ttt_yaml("variant: inplace\ninplace_chunk_size: 4\ninplace_lr: 1.0\n" + extra),
                lm::LoRAConfig{});
  m->init_weights(1);
  at::NoGradGuard ng;
  at::Generator g = at::detail::createCPUGenerator(9);
  for (auto& p : m->named_parameters())
    if (p.key().find("ttt_conv") != std::string::npos || p.key().find("ttt_proj") != std::string::npos)
      p.value().copy_(at::randn(p.value().sizes(), g, p.value().options()) * 0.5);
  return m;
}

}  // namespace

TEST(InPlaceClip, EachChunkUpdateIsScaledToTheNormAndStreamingEqualsWhole) {
  const at::Tensor x = rnd({2, 8, 6}, 1), t = rnd({2, 8, 6}, 2);
  at::NoGradGuard ng;
  // One chunk's update without a clip, from the state after exactly one chunk.
  auto off = clip_module(0, 3);
  auto st0 = off->make_state(2);
  off->step(x.narrow(1, 0, 4), t.narrow(1, 0, 4), st0);
  const at::Tensor raw = st0.dw.flatten(1).norm(2, {1});  // [2]
  ASSERT_GT(raw.min().item<double>(), 1e-3);
  EXPECT_EQ(st0.updates, 2);

  const double clip = 0.5 * raw.min().item<double>();
  auto on = clip_module(clip, 3);
  auto st1 = on->make_state(2);
  on->step(x.narrow(1, 0, 4), t.narrow(1, 0, 4), st1);
  const at::Tensor got = st1.dw.flatten(1).norm(2, {1});
  for (int64_t b = 0; b < 2; ++b) EXPECT_NEAR(got[b].item<double>(), clip, 1e-9 * clip) << "slot " << b;
  // The update keeps its direction.
  EXPECT_LT(test::max_abs_diff(st1.dw / got.view({2, 1, 1}), st0.dw / raw.view({2, 1, 1})), 1e-10);

  // A clip above every update's norm changes nothing.
  auto loose = clip_module(10 * raw.max().item<double>(), 3);
  EXPECT_LT(test::max_abs_diff(loose->forward(x, t), off->forward(x, t)), 1e-12);
  // Clipped: streaming in steps of 1, 3 and mixed sizes equals the whole sequence, and differs from
  // the unclipped output.
  const at::Tensor whole = on->forward(x, t);
  EXPECT_GT(test::max_abs_diff(whole, off->forward(x, t)), 1e-6);
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 1}, {3, 3, 2}, {5, 3}, {8}}) {
    auto st = on->make_state(2);
    std::vector<at::Tensor> ys;
    int64_t p = 0;
    for (int64_t s : sizes) {
      ys.push_back(on->step(x.narrow(1, p, s), t.narrow(1, p, s), st));
      p += s;
    }
    EXPECT_LT(test::max_abs_diff(at::cat(ys, 1), whole), 1e-12) << "steps of " << sizes[0];
  }
}

TEST(InPlaceClip, GradientsMatchFiniteDifferences) {
  auto m = clip_module(0.05, 4);
  const at::Tensor x = rnd({1, 8, 6}, 5), t = rnd({1, 8, 6}, 6), gout = rnd({1, 8, 6}, 7);
  auto loss = [&](const at::Tensor& tin) { return (m->forward(x, tin) * gout).sum(); };
  at::Tensor tg = t.clone().requires_grad_(true);
  loss(tg).backward();
  at::NoGradGuard ng;
  const double h = 1e-6;
  at::Tensor flat = t.view(-1);
  for (int64_t k = 0; k < flat.numel(); k += 5) {
    const double v = flat[k].item<double>();
    flat[k] = v + h;
    const double lp = loss(t).item<double>();
    flat[k] = v - h;
    const double lm = loss(t).item<double>();
    flat[k] = v;
    const double fd = (lp - lm) / (2 * h);
    EXPECT_NEAR(tg.grad().view(-1)[k].item<double>(), fd, 1e-6 + 1e-5 * std::abs(fd)) << "t[" << k << "]";
  }
}

TEST(TttConfig, LayerPresets) {
  auto idx = [](const std::string& layers, int64_t n) {
    lm::TTTIntegrationConfig c;
    c.enable = true;
    c.layers = layers;
    return c.layer_indices(n);
  };
  EXPECT_EQ(idx("all", 4), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(idx("middle", 32), (std::vector<int64_t>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}));
  EXPECT_EQ(idx("last:3", 32), (std::vector<int64_t>{29, 30, 31}));
  EXPECT_EQ(idx("first:2", 32), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(idx("29,30,31", 32), idx("last:3", 32));
  test::expect_error([&] { idx("last:0", 32); }, {"last:0", "[1, 32]"});
  test::expect_error([&] { idx("last:x", 32); }, {"last:x", "layer count"});
  EXPECT_EQ(idx("middle", 1), (std::vector<int64_t>{0}));  // never empty: the centre layer
  EXPECT_EQ(idx("middle", 3), (std::vector<int64_t>{1}));
  // start_layer + layer_frequency, as the In-Place explorations (5, 11, 17, 23, 29).
  lm::TTTIntegrationConfig c;
  c.enable = true;
  c.start_layer = 5;
  c.layer_frequency = 6;
  EXPECT_EQ(c.layer_indices(32), (std::vector<int64_t>{5, 11, 17, 23, 29}));
  c.layers = "all";
  test::expect_error([&] { c.layer_indices(32); }, {"both set"});

  // Every variant takes the presets, and only the temporal transformer gets TTT (none in the depformer).
  for (const char* v : {"variant: hybrid\nmini_batch_size: 4", "variant: adapter\nadapter_rank: 4\nmini_batch_size: 4",
                        "variant: inplace\ninplace_chunk_size: 4"}) {
    auto cfg = lm::TTTIntegrationConfig::from_yaml(YAML::Load(std::string("enable: true\nlayers: last:2\n") + v));
    lm::LMModel m(tiny_lm(), cfg, lm::LoRAConfig{});
    std::vector<int64_t> with;
    for (size_t l = 0; l < m->transformer->layer_ptrs.size(); ++l)
      if (lm::has_ttt(*m->transformer->layer_ptrs[l])) with.push_back(static_cast<int64_t>(l));
    EXPECT_EQ(with, (std::vector<int64_t>{1, 2})) << v;
    if (m->depformer)
      for (const auto& l : m->depformer->layer_ptrs) EXPECT_FALSE(lm::has_ttt(*l)) << v;
  }
}

// Row 9: settings parsed but never forwarded (a ΔW clip that silently did nothing). A field that the
// chosen variant never reads is a startup error naming it, and a changed field changes the run: the
// clip on vs off through the config, which the check shows to catch a clip that is not forwarded.
TEST(Pitfalls, Row09_EverySetFieldIsReadAndAChangedFieldChangesTheRun) {
  const std::vector<std::pair<std::string, std::string>> unread = {
      {"variant: hybrid\ninplace_delta_clip_fro_norm: 1.0", "ttt.inplace_delta_clip_fro_norm"},
      {"variant: inplace\ninitial_gating_alpha: 0.5", "ttt.initial_gating_alpha"},
      {"variant: adapter\nplacement: parallel", "ttt.placement"},
      {"variant: hybrid\nadapter_rank: 4", "ttt.adapter_rank"},
      {"variant: hybrid\ntype: linear\nmlp_layers: 3", "ttt.mlp_layers"},
      {"variant: hybrid\nconv_kernel: 3", "ttt.conv_kernel"},
      {"variant: inplace\nmini_batch_size: 8", "ttt.mini_batch_size"},
      {"variant: hybrid\nlayer_frequency: 2", "ttt.layer_frequency"}};
  for (const auto& [y, key] : unread)
    test::expect_error([&] { lm::LMModel m(tiny_lm(), ttt_yaml(y), lm::LoRAConfig{}); }, {key});
  // ...while the same fields are accepted where they are read.
  EXPECT_NO_THROW(
      lm::LMModel(tiny_lm(), ttt_yaml("variant: inplace\ninplace_delta_clip_fro_norm: 1.0"), lm::LoRAConfig{}));
  EXPECT_NO_THROW(
      lm::LMModel(tiny_lm(), ttt_yaml("variant: hybrid\nshare_qk: true\nconv_kernel: 3"), lm::LoRAConfig{}));

  const at::Tensor codes = random_codes(tiny_lm(), 1, 12, 3);
  auto clip_changes_logits = [&] {
    at::NoGradGuard ng;
    auto valid = [](const lm::LMOutput& o) { return o.logits.masked_select(o.mask.unsqueeze(-1)); };
    const at::Tensor off = valid(inplace_lm("")->forward(codes));
    const at::Tensor on = valid(inplace_lm("inplace_delta_clip_fro_norm: 1e-4\n")->forward(codes));
    return test::max_abs_diff(on, off);
  };
  EXPECT_GT(clip_changes_logits(), 1e-5);
  Reintroduce broken(9);
  EXPECT_LT(clip_changes_logits(), 1e-12) << "the check must catch a clip that is parsed and never forwarded";
}

// Row 11: training sequences shorter than one In-Place chunk, so no update ever happened. The states
// count the TTT updates made per layer (what the run summary reports); the short-sequence setup of
// the exploration is flagged by the same count being zero.
TEST(Pitfalls, Row11_TttUpdatesAreCountedPerLayerAndShortSequencesShowNone) {
  auto count = [&](const std::string& v, int64_t T) {
    lm::LMModel m(tiny_lm(), ttt_yaml(v), lm::LoRAConfig{});
    m->init_weights(1);
    auto st = m->transformer->make_layer_states(2);
    at::NoGradGuard ng;
    m->forward(random_codes(m->cfg, 2, T, 4), nullptr, &st);
    std::vector<int64_t> per;
    for (const auto& s : st) per.push_back(s.updates());
    return per;
  };
  // 2 slots x 12 frames in mini-batches of 4: 6 hybrid updates on layer 1, none elsewhere.
  EXPECT_EQ(count("variant: hybrid\nmini_batch_size: 4", 12), (std::vector<int64_t>{0, 6, 0}));
  EXPECT_EQ(count("variant: hybrid\nmini_batch_size: 4", 11), (std::vector<int64_t>{0, 4, 0}));
  // Adapters: one TTT state per adapted linear (2 by default), each 2 x 3 updates.
  EXPECT_EQ(count("variant: adapter\nadapter_rank: 4\nmini_batch_size: 4", 12), (std::vector<int64_t>{0, 12, 0}));
  // In-Place, chunks of 4: 2 slots x 2 completed chunks of 10 frames.
  EXPECT_EQ(count("variant: inplace\ninplace_chunk_size: 4", 10), (std::vector<int64_t>{0, 4, 0}));
  // The exploration's setup: sequences shorter than one chunk. No update at all, and the check sees it.
  EXPECT_EQ(count("variant: inplace\ninplace_chunk_size: 16", 10), (std::vector<int64_t>{0, 0, 0}));
}

// Row 9 for the training fields: a setting of a disabled feature is never silent. Ours are refused by
// name; moshi-finetune's own keys (its example YAML sets eval_freq with do_eval false) are accepted with
// a note naming them, which the run prints.
TEST(Pitfalls, Row09_TrainFieldsOfADisabledFeatureAreErrorsOrNotes) {
  test::TempDir d;
  auto load = [&](const std::string& extra) {
    std::ofstream(d.file("t.yaml")) << "preset: tiny\nfull_finetuning: true\nrun_dir: r\ndata:\n  train_data: x.jsonl\n"
                                    << extra;
    return train::TrainConfig::load(d.file("t.yaml"));
  };
  std::ofstream(d.file("ok.yaml")) << "preset: tiny\nfull_finetuning: true\nrun_dir: r\ndata:\n  train_data: x.jsonl\n"
                                      "  eval_data: y.jsonl\ndo_eval: true\neval_freq: 5\n";
  EXPECT_TRUE(train::TrainConfig::load(d.file("ok.yaml")).notes.empty());
  test::expect_error([&] { load("eval_batches: 5\n"); }, {"eval_batches", "do_eval is false"});
  auto has_note = [](const train::TrainConfig& c, const std::string& what) {
    for (const auto& n : c.notes)
      if (n.find(what) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(has_note(load("eval_freq: 5\n"), "eval_freq is set, but do_eval is false"));
  EXPECT_TRUE(has_note(load("do_ckpt: false\nckpt_freq: 5\n"), "ckpt_freq is set, but do_ckpt is false"));
  std::ofstream(d.file("e.yaml")) << "preset: tiny\nfull_finetuning: true\nrun_dir: r\ndata:\n  train_data: x.jsonl\n"
                                     "  eval_data: ''\n";
  EXPECT_TRUE(train::TrainConfig::load(d.file("e.yaml")).notes.empty());  // '' is moshi-finetune's "unset"
  std::ofstream(d.file("t.yaml"))
      << "preset: tiny\nfull_finetuning: true\nrun_dir: r\ndata:\n  train_data: x.jsonl\n  eval_data: y.jsonl\n";
  EXPECT_TRUE(has_note(train::TrainConfig::load(d.file("t.yaml")), "eval_data is set, but do_eval is false"));
  // wandb: moshi-finetune's four keys, a note when a project is set; others are unknown fields.
  EXPECT_TRUE(has_note(load("wandb:\n  project: p\n  run_name: n\n  key: k\n  offline: true\n"), "wandb: not used"));
  EXPECT_TRUE(load("wandb:\n  project: ''\n").notes.empty());
  test::expect_error([&] { load("wandb:\n  entity: e\n"); }, {"wandb.entity", "unknown field"});
}
