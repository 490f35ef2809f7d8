// Moshi LM: config validation, streaming == forward, strict loading, LMGen batching and reset.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_gen.h"
#include "lm/lm_model.h"
#include "test_util.h"
#include "train/loss.h"
#include "util/error.h"

using namespace mt;
using namespace mt::lm;

namespace {

LMConfig small_cfg(const std::string& pos = "rope", const std::string& norm = "rms_norm_f32",
                   const std::string& gating = "silu", const std::string& dep_pos = "none") {
  LMConfig c;
  c.dim = 32;
  c.num_heads = 4;
  c.num_layers = 2;
  c.n_q = 4;
  c.dep_q = 2;
  c.card = 24;
  c.text_card = 30;
  c.delays = {0, 0, 2, 0, 1};
  c.context = 5;  // shorter than the test sequences: the ring buffer wraps
  c.positional_embedding = pos;
  c.norm = norm;
  c.gating = gating;
  c.hidden_scale = 4.125;
  c.depformer_dim = 16;
  c.depformer_num_heads = 2;
  c.depformer_num_layers = 2;
  c.depformer_multi_linear = true;
  c.depformer_weights_per_step = true;
  c.depformer_gating = "silu";
  c.depformer_pos_emb = dep_pos;
  return c;
}

at::Tensor random_codes(const LMConfig& c, int64_t B, int64_t T, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor codes = at::randint(c.card, {B, c.num_codebooks(), T}, g, at::kLong);
  codes.select(1, 0).random_(0, c.text_card, g);
  return codes;
}

LMModel make_model(const LMConfig& c, uint64_t seed = 1) {
  LMModel m(c);
  m->init_weights(seed);
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  return m;
}

}  // namespace

TEST(LMConfig, DefaultsFollowTheReference) {
  LMConfig c = LMConfig::from_json(nlohmann::json{{"n_q", 3},
                                                  {"dep_q", 3},
                                                  {"delays", {0, 1, 2, 4}},
                                                  {"num_layers", 2},
                                                  {"depformer_num_heads", 1},
                                                  {"dim", 16},
                                                  {"num_heads", 1}});
  EXPECT_EQ(c.norm, "layer_norm");
  EXPECT_EQ(c.positional_embedding, "sin");
  EXPECT_EQ(c.depformer_pos_emb, "sin");
  EXPECT_EQ(c.gating, "none");
  EXPECT_EQ(c.existing_text_padding_id.value(), 3);
  EXPECT_EQ(c.depformer().num_layers, 2);  // the depformer inherits num_layers
  EXPECT_FALSE(c.depformer().context.has_value());
}

TEST(LMConfig, Moshiko7bPresetShapes) {
  LMConfig c = LMConfig::moshiko_7b();
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(nn::gating_hidden(4096, c.transformer().dim_feedforward[0]), 11264);
  EXPECT_EQ(nn::gating_hidden(1024, c.depformer().dim_feedforward[0]), 2816);
  EXPECT_EQ(c.num_codebooks(), 17);
  EXPECT_EQ(c.max_delay(), 1);
}

TEST(LMConfig, BadValuesNameTheField) {
  auto expect_msg = [](nlohmann::json j, const std::string& needle) {
    nlohmann::json base = {{"n_q", 2},  {"dep_q", 1},     {"delays", {0, 0, 1}},     {"num_layers", 1},
                           {"dim", 16}, {"num_heads", 2}, {"depformer_num_heads", 1}};
    base.update(j);
    try {
      LMConfig::from_json(base, "cfg.json");
      ADD_FAILURE() << "no error for " << j.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
    }
  };
  expect_msg({{"num_heads", 3}}, "num_heads");
  expect_msg({{"delays", {0, 1}}}, "delays");
  expect_msg({{"dep_q", 5}}, "dep_q");
  expect_msg({{"depformer_weights_per_step_schedule", {0, 0, 0}}}, "depformer_weights_per_step_schedule");
  expect_msg({{"norm", "batch_norm"}}, "norm");
  expect_msg({{"positional_embedding", "alibi"}}, "positional embedding");
  expect_msg({{"dimm", 3}}, "unknown LM config field 'dimm'");
  expect_msg({{"dim", "wide"}}, "'dim'");
}

TEST(LMConfig, JsonRoundTrip) {
  LMConfig c = small_cfg();
  LMConfig d = LMConfig::from_json(c.to_json());
  EXPECT_EQ(c.to_json(), d.to_json());
}

// Streaming (teacher forced, one step or a chunk at a time) gives the whole-sequence outputs, for
// every positional embedding and norm, with the KV ring buffer wrapping (context 5 < T).
class StreamingEqualsForward
    : public ::testing::TestWithParam<std::tuple<std::string, std::string, std::string, int64_t>> {};

TEST_P(StreamingEqualsForward, TemporalAndDepformer) {
  auto [pos, norm, gating, chunk] = GetParam();
  LMConfig c = small_cfg(pos, norm, gating, pos == "rope" ? "none" : "sin");
  if (pos == "sin") c.layer_scale = 0.3;                              // LayerScale on both residual branches
  if (pos == "none") c.depformer_weights_per_step_schedule = {0, 0};  // weight sharing across steps
  LMModel m = make_model(c);
  if (c.layer_scale) {
    at::NoGradGuard ng;
    for (auto& kv : m->named_parameters())
      if (kv.key().find("layer_scale") != std::string::npos) kv.value().uniform_(0.1, 1.0);
  }
  at::InferenceMode im;
  const int64_t B = 2, T = 13;
  at::Tensor seq = random_codes(c, B, T, 7);
  auto [tout, text_logits] = m->forward_text(seq);
  TransformerState st = m->make_state(B, chunk);
  std::vector<at::Tensor> outs, tls;
  for (int64_t t = 0; t < T; t += chunk) {
    int64_t n = std::min(chunk, T - t);
    auto [o, tl] = m->forward_text(seq.narrow(2, t, n), &st);
    outs.push_back(o);
    tls.push_back(tl);
  }
  EXPECT_LT(test::max_abs_diff(at::cat(outs, 1), tout), 2e-5);
  EXPECT_LT(test::max_abs_diff(at::cat(tls, 2), text_logits), 2e-5);

  // Depformer: step codebook by codebook with the teacher tokens.
  at::Tensor logits = m->forward_depformer_training(seq, tout);  // [B, dep_q, T, card]
  TransformerState ds = m->make_depformer_state(B);
  for (int64_t t = 0; t < T; ++t) {
    ds.reset();
    for (int64_t cb = 0; cb < c.dep_q; ++cb) {
      at::Tensor prev = cb == 0 ? seq.select(1, 0).select(1, t) : seq.select(1, cb).select(1, t);
      at::Tensor l = m->depformer_step(cb, prev, tout.narrow(1, t, 1), ds);
      EXPECT_LT(test::max_abs_diff(l, logits.select(1, cb).select(1, t)), 2e-5) << "t=" << t << " cb=" << cb;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, StreamingEqualsForward,
                         ::testing::Values(std::make_tuple("rope", "rms_norm_f32", "silu", int64_t{1}),
                                           std::make_tuple("rope", "rms_norm_f32", "silu", int64_t{3}),
                                           std::make_tuple("sin", "layer_norm", "none", int64_t{1}),
                                           std::make_tuple("sin_rope", "rms_norm", "gelu", int64_t{2}),
                                           std::make_tuple("none", "layer_norm_f32", "silu", int64_t{5})));

TEST(LMModel, ForwardMasksFollowDelaysAndZeroTokens) {
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  at::InferenceMode im;
  at::Tensor codes = random_codes(c, 1, 9, 3);
  codes[0][1][4] = -1;  // a zero token: no loss there
  LMOutput o = m->forward(codes);
  EXPECT_EQ(o.logits.sizes(), (at::IntArrayRef{1, 2, 9, c.card}));
  EXPECT_FALSE(o.mask[0][0][4].item<bool>());
  // Codebook 1 (stream 2) has delay 2: its last two steps are invalid.
  EXPECT_FALSE(o.mask[0][1][7].item<bool>());
  EXPECT_FALSE(o.mask[0][1][8].item<bool>());
  EXPECT_TRUE(o.mask[0][1][6].item<bool>());
  EXPECT_TRUE(at::isfinite(o.logits.masked_select(o.mask.unsqueeze(-1))).all().item<bool>());
}

TEST(LMModel, ZeroTokenEmbedsToExactZero) {
  ScaledEmbedding e(10, 4);
  e->weight.data().normal_();
  at::Tensor y = e->forward(at::tensor({-1, 2}, at::kLong));
  EXPECT_EQ(y[0].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(y[1].abs().sum().item<float>(), 0.0f);
}

// ------------------------------------------------------------------------------------------------
// Strict loading.

namespace {
std::string save_model(const LMModel& m, const test::TempDir& d, const std::string& name,
                       const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit = {}) {
  auto sd = m->state_dict();
  if (edit) edit(sd);
  std::string path = d.file(name);
  io::save(path, sd);
  return path;
}
std::string load_error(const LMConfig& c, const std::string& path) {
  try {
    load_lm(c, path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(LMLoad, RoundTripIsExact) {
  test::TempDir d;
  LMConfig c = small_cfg();
  LMModel m = make_model(c, 5);
  LMModel n = load_lm(c, save_model(m, d, "m.safetensors"));
  auto a = m->state_dict(), b = n->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
}

TEST(LMLoad, FusedAttentionNamesSplitPerStep) {
  test::TempDir d;
  LMConfig c = small_cfg();
  LMModel m = make_model(c, 5);
  // Kyutai's released files store the per-step depformer projections fused along dim 0.
  std::string path = save_model(m, d, "fused.safetensors", [](auto& sd) {
    std::map<std::string, std::vector<at::Tensor>> fused;
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (auto& [n, t] : sd) {
      auto p = n.find("self_attn.in_projs.");
      auto q = n.find("self_attn.out_projs.");
      if (p != std::string::npos)
        fused[n.substr(0, p) + "self_attn.in_proj_weight"].push_back(t);
      else if (q != std::string::npos)
        fused[n.substr(0, q) + "self_attn.out_proj.weight"].push_back(t);
      else
        out.emplace_back(n, t);
    }
    for (auto& [n, ts] : fused) out.emplace_back(n, at::cat(ts, 0));
    sd = out;
  });
  LMModel n = load_lm(c, path);
  auto a = m->state_dict(), b = n->state_dict();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
}

TEST(LMLoad, MissingExtraAndMisShapedTensorsAreNamed) {
  test::TempDir d;
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  std::string missing = save_model(m, d, "missing.safetensors", [](auto& sd) {
    sd.erase(std::remove_if(sd.begin(), sd.end(), [](auto& kv) { return kv.first == "out_norm.alpha"; }), sd.end());
  });
  std::string e = load_error(c, missing);
  EXPECT_NE(e.find("missing tensor 'out_norm.alpha'"), std::string::npos) << e;
  EXPECT_NE(e.find("missing.safetensors"), std::string::npos) << e;

  std::string extra =
      save_model(m, d, "extra.safetensors", [](auto& sd) { sd.emplace_back("lora.A", at::zeros({2})); });
  e = load_error(c, extra);
  EXPECT_NE(e.find("unexpected tensor 'lora.A'"), std::string::npos) << e;

  std::string shape = save_model(m, d, "shape.safetensors", [](auto& sd) {
    for (auto& kv : sd)
      if (kv.first == "text_linear.weight") kv.second = at::zeros({7, 32});
  });
  e = load_error(c, shape);
  EXPECT_NE(e.find("'text_linear.weight'"), std::string::npos) << e;
  EXPECT_NE(e.find("expected shape [30, 32], got [7, 32]"), std::string::npos) << e;
}

TEST(LMLoad, TruncatedFileIsReportedNotCrashed) {
  test::TempDir d;
  LMConfig c = small_cfg();
  std::string path = save_model(make_model(c), d, "t.safetensors");
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  std::string e = load_error(c, path);
  EXPECT_NE(e.find("t.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST(LMLoad, Bf16WeightsLoadAndRun) {
  test::TempDir d;
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  std::string path = d.file("bf16.safetensors");
  auto sd = m->state_dict();
  for (auto& kv : sd) kv.second = kv.second.to(at::kBFloat16);
  io::save(path, sd);
  LMModel n = load_lm(c, path, std::nullopt);  // dtype from the file
  EXPECT_EQ(n->text_linear->weight.scalar_type(), at::kBFloat16);
  at::InferenceMode im;
  LMOutput a = m->forward(random_codes(c, 1, 6, 2));
  LMOutput b = n->forward(random_codes(c, 1, 6, 2));
  at::Tensor mask = a.mask.unsqueeze(-1);
  EXPECT_LT((a.logits - b.logits.to(at::kFloat)).abs().masked_select(mask).max().item<float>(), 0.25f);
}

// ------------------------------------------------------------------------------------------------
// LMGen.

namespace {
at::Tensor run_gen(const LMGen& gen, const at::Tensor& user, int64_t steps) {
  LMGenState st = gen.make_state(user.size(0));
  return generate(gen, st, steps, user).tokens;
}
}  // namespace

TEST(LMGen, BatchEqualsSingleStreams) {
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  SamplingConfig s;
  s.use_sampling = false;
  LMGen gen(m, s);
  at::Tensor user = random_codes(c, 3, 12, 11).narrow(1, 1 + c.dep_q, c.n_q - c.dep_q).contiguous();
  at::Tensor both = run_gen(gen, user, 12);
  EXPECT_EQ(both.sizes(), (at::IntArrayRef{3, 1 + c.dep_q, 12 - c.max_delay()}));
  for (int64_t b = 0; b < 3; ++b) EXPECT_TRUE(at::equal(both[b], run_gen(gen, user.narrow(0, b, 1), 12)[0])) << b;
}

TEST(LMGen, GreedyTokensMatchTeacherForcedArgmax) {
  // The text token of step t is the argmax of forward()'s text logits on the generated sequence.
  LMConfig c = small_cfg();
  c.delays = {0, 0, 0, 0, 0};
  LMModel m = make_model(c);
  SamplingConfig s;
  s.use_sampling = false;
  LMGen gen(m, s);
  at::Tensor user = random_codes(c, 1, 8, 4).narrow(1, 1 + c.dep_q, c.n_q - c.dep_q).contiguous();
  at::Tensor toks = run_gen(gen, user, 8);  // no delays: every step returns its frame
  ASSERT_EQ(toks.size(2), 8);
  // The user frame given at step t + 1 is training frame t (the first user frame is never read).
  at::Tensor codes = at::cat({toks.narrow(2, 0, 7), user.narrow(2, 1, 7)}, 1);
  at::InferenceMode im;
  LMOutput o = m->forward(codes);
  EXPECT_TRUE(at::equal(o.text_logits.argmax(-1).select(1, 0), toks.select(1, 0).narrow(1, 0, 7)));
  EXPECT_TRUE(at::equal(o.logits.argmax(-1), toks.narrow(1, 1, c.dep_q).narrow(2, 0, 7)));
}

TEST(LMGen, PerSlotResetRestartsOnlyThatSlot) {
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  SamplingConfig s;
  s.use_sampling = false;
  LMGen gen(m, s);
  at::Tensor user = random_codes(c, 2, 20, 9).narrow(1, 1 + c.dep_q, c.n_q - c.dep_q).contiguous();
  LMGenState st = gen.make_state(2);
  for (int64_t t = 0; t < 7; ++t) gen.step(st, user.narrow(2, t, 1));
  gen.reset(st, at::tensor({1, 0}).to(at::kBool));
  // Slot 0 restarts from scratch on steps 7.., slot 1 continues.
  std::vector<at::Tensor> outs;
  for (int64_t t = 7; t < 20; ++t) {
    auto y = gen.step(st, user.narrow(2, t, 1));
    if (y) outs.push_back(*y);
  }
  at::Tensor got = at::cat(outs, 2);
  at::Tensor fresh0 = run_gen(gen, user.narrow(0, 0, 1).narrow(2, 7, 13), 13)[0];
  at::Tensor slot0 = got[0].narrow(1, got.size(2) - fresh0.size(1), fresh0.size(1));
  EXPECT_TRUE(at::equal(slot0, fresh0));
  at::Tensor full1 = run_gen(gen, user.narrow(0, 1, 1), 20)[0];
  EXPECT_TRUE(at::equal(got[1], full1.narrow(1, full1.size(1) - got.size(2), got.size(2))));
}

TEST(LMGen, SamplingIsSeededAndTopK1IsGreedy) {
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  at::Tensor user = random_codes(c, 1, 10, 1).narrow(1, 1 + c.dep_q, c.n_q - c.dep_q).contiguous();
  SamplingConfig s;
  s.seed = 3;
  s.temp = s.temp_text = 5.0;  // hot: draws differ from argmax
  at::Tensor a = run_gen(LMGen(m, s), user, 10), b = run_gen(LMGen(m, s), user, 10);
  EXPECT_TRUE(at::equal(a, b));
  s.seed = 4;
  EXPECT_FALSE(at::equal(a, run_gen(LMGen(m, s), user, 10)));
  s.top_k = s.top_k_text = 1;
  SamplingConfig g;
  g.use_sampling = false;
  EXPECT_TRUE(at::equal(run_gen(LMGen(m, s), user, 10), run_gen(LMGen(m, g), user, 10)));
}

TEST(LMGen, SampleTokenFollowsTheDistribution) {
  at::Generator g = at::detail::createCPUGenerator(0);
  at::Tensor logits = at::log(at::tensor({0.1f, 0.2f, 0.7f})).expand({20000, 3}).contiguous();
  at::Tensor t = sample_token(logits, true, 1.0, 0, g);
  at::Tensor freq = at::bincount(t, {}, 3).to(at::kDouble) / 20000.0;
  EXPECT_NEAR(freq[0].item<double>(), 0.1, 0.01);
  EXPECT_NEAR(freq[2].item<double>(), 0.7, 0.015);
}

TEST(LMGen, WrongUserCodesShapeIsAnError) {
  LMConfig c = small_cfg();
  LMGen gen(make_model(c), SamplingConfig{});
  LMGenState st = gen.make_state(1);
  EXPECT_THROW(gen.step(st, at::zeros({1, 1, 1}, at::kLong)), Error);
}

// ---- training-speed paths (issue 26) ------------------------------------------------------------

// Causal attention over up to 16 positions uses explicit products instead of SDPA. Causality makes the
// first 8 outputs of a 20-step sequence (SDPA) the outputs of its first 8 steps alone (explicit
// path): values and input gradients must agree.
TEST(Attention, ShortCausalPathEqualsSdpa) {
  nn::TransformerConfig cfg;
  cfg.d_model = 32;
  cfg.num_heads = 4;
  cfg.positional_embedding = "rope";
  nn::Attention attn(cfg);
  at::manual_seed(5);
  for (auto& p : attn->parameters()) p.detach().normal_(0, 0.3);
  at::Tensor x = at::randn({3, 20, 32}, at::kDouble).to(at::kFloat);
  nn::StepContext c;
  at::Tensor xl = x.clone().requires_grad_(true), xs = x.narrow(1, 0, 8).clone().requires_grad_(true);
  at::Tensor yl = attn->forward(xl, c).narrow(1, 0, 8), ys = attn->forward(xs, c);
  EXPECT_LE(test::max_abs_diff(yl, ys), 2e-6);
  at::Tensor g = at::randn(ys.sizes());
  (yl * g).sum().backward();
  (ys * g).sum().backward();
  // float32, other summation orders than the flash kernel's backward: relative 1e-5 of the largest.
  EXPECT_LE(test::max_abs_diff(xl.grad().narrow(1, 0, 8), xs.grad()), 1e-5 * xs.grad().abs().max().item<double>());
  EXPECT_EQ(xl.grad().narrow(1, 8, 12).abs().max().item<float>(), 0.f) << "outputs 0..7 must not see steps 8..";
  // The explicit path is causal: a later step does not reach an earlier output.
  at::Tensor x2 = xs.detach().clone();
  x2.select(1, 7).add_(1.0);
  EXPECT_LE(test::max_abs_diff(attn->forward(x2, c).narrow(1, 0, 7), ys.detach().narrow(1, 0, 7)), 1e-6);
}

// With a delayed text stream the last text logits are NaN (undelayed tail); the loss must mask them
// out (value and gradients finite). Without a text delay the loss skips that pass over the logits and
// must equal the masked computation.
TEST(LMModel, LossIsFiniteWithDelayedTextAndEqualWithout) {
  for (int64_t text_delay : {0, 1}) {
    LMConfig c = small_cfg();
    c.delays[0] = text_delay;
    LMModel m(c);
    m->init_weights(3);
    at::Tensor codes = at::randint(c.card, {2, c.num_codebooks(), 12}, at::kLong);
    codes.select(1, 0).random_(0, c.text_card);
    LMOutput out = m->forward(codes);
    EXPECT_EQ(out.text_logits.isnan().any().item<bool>(), text_delay > 0);
    train::LossParts lp = train::compute_loss(c, out, codes, train::LossConfig{});
    lp.total.backward();
    EXPECT_TRUE(std::isfinite(lp.text.item<double>())) << "text delay " << text_delay;
    for (const auto& p : m->parameters())
      if (p.grad().defined()) EXPECT_TRUE(p.grad().isfinite().all().item<bool>()) << "text delay " << text_delay;
    // The same text loss computed by hand over the valid positions.
    at::Tensor lg = out.text_logits.detach().select(1, 0), tg = codes.select(1, 0), mk = out.text_mask.select(1, 0);
    at::Tensor ce = -at::log_softmax(at::where(mk.unsqueeze(-1), lg, at::zeros({}, lg.options())), -1)
                         .gather(-1, tg.clamp_min(0).unsqueeze(-1))
                         .squeeze(-1);
    at::Tensor w = mk.to(at::kFloat);
    w = at::where(tg.eq(c.existing_text_end_padding_id) | tg.eq(*c.existing_text_padding_id), w * 0.5, w);
    EXPECT_NEAR(lp.text.item<double>(), ((ce * w).sum() / w.sum()).item<double>(), 1e-5);
  }
}

// Per-conversation sampling (a server's query string): each slot draws with its own seeds and
// knobs; a slot's draws do not depend on the other slots'; a slot sampled alone in batch 1 with the
// same config gives the same tokens.
TEST(LMGen, PerSlotSamplingIsIndependentOfTheOtherSlots) {
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  at::Tensor user = random_codes(c, 1, 12, 2).narrow(1, 1 + c.dep_q, c.n_q - c.dep_q).contiguous();
  SamplingConfig hot;
  hot.temp = hot.temp_text = 3.0;
  hot.seed = 11;
  hot.audio_seed = 12;
  LMGen gen(m, hot);
  auto run = [&](int64_t batch, const std::vector<SamplingConfig>& cfgs) {
    LMGenState st = gen.make_state(batch);
    for (int64_t b = 0; b < batch; ++b) gen.set_sampling(st, b, cfgs[b]);
    std::vector<at::Tensor> outs;
    for (int64_t t = 0; t < 12; ++t)
      if (auto y = gen.step(st, user.narrow(2, t, 1).expand({batch, -1, 1}))) outs.push_back(*y);
    return at::cat(outs, 2);
  };
  SamplingConfig other = hot;
  other.seed = 99;
  other.audio_seed.reset();
  other.top_k = 5;
  at::Tensor pair = run(2, {hot, other});
  at::Tensor alone = run(1, {hot});
  EXPECT_TRUE(at::equal(pair[0], alone[0]));
  EXPECT_FALSE(at::equal(pair[0], pair[1]));  // same input, other seeds: other draws
  SamplingConfig third = other;
  third.seed = 7;
  EXPECT_TRUE(at::equal(run(2, {hot, third})[0], alone[0]));
}

TEST(LMGen, PadMultAndRepetitionPenaltyShapeTheTextDraw) {
  LMConfig c = small_cfg();
  LMModel m = make_model(c);
  const int64_t pad = *c.existing_text_padding_id;
  at::Tensor user = random_codes(c, 1, 30, 3).narrow(1, 1 + c.dep_q, c.n_q - c.dep_q).contiguous();
  auto text_of_run = [&](const SamplingConfig& s) {
    LMGen gen(m, s);
    LMGenState st = gen.make_state(1);
    std::vector<at::Tensor> outs;
    for (int64_t t = 0; t < 30; ++t)
      if (auto y = gen.step(st, user.narrow(2, t, 1))) outs.push_back(*y);
    return at::cat(outs, 2)[0][0];
  };
  SamplingConfig s;
  s.temp_text = 1.0;
  s.top_k_text = 0;
  s.pad_mult = 50;  // PAD all but certain
  EXPECT_TRUE((text_of_run(s) == pad).all().item<bool>());
  s.pad_mult = -50;  // PAD all but impossible
  EXPECT_FALSE((text_of_run(s) == pad).any().item<bool>());
  // Greedy with a strong penalty over a long context: no non-padding token repeats.
  SamplingConfig g;
  g.use_sampling = false;
  g.pad_mult = -50;
  at::Tensor plain = text_of_run(g);
  EXPECT_LT(std::get<0>(at::_unique(plain)).numel(), plain.numel()) << "greedy text repeats without a penalty";
  g.repetition_penalty = 1e6;
  g.repetition_context = 64;
  // A seen token's logit divided by 1e6 (or multiplied) loses to the unseen ones of its sign: greedy
  // text then moves on to new tokens.
  at::Tensor pen = text_of_run(g);
  EXPECT_GT(std::get<0>(at::_unique(pen)).numel(), std::get<0>(at::_unique(plain)).numel() + 3);
  EXPECT_THROW(LMGen(m,
                     [] {
                       SamplingConfig bad;
                       bad.repetition_penalty = 0;
                       return bad;
                     }()),
               Error);
}
