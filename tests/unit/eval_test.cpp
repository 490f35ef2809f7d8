// Evaluation plumbing on a tiny hybrid-TTT LM: chunked streaming cross-entropy equals the whole-sequence
// one, clip scoring does not depend on batching, the reductions agree with each other, controls behave
// as defined, the slope fit is exact on a known line, and the no-ttt control leaves the model unchanged.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>

#include "eval/long_context.h"
#include "eval/paired.h"
#include "eval/position_loss.h"
#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "test_util.h"
#include "util/pitfall_switch.h"

using namespace mt;
using namespace mt::lm;

namespace {

LMModel ttt_model(uint64_t seed = 3) {
  LMConfig c = LMConfig::tiny();
  c.dim = 32;
  c.num_heads = 2;
  c.num_layers = 2;
  c.context = 8;
  auto ttt = TTTIntegrationConfig::from_yaml(
      YAML::Load("enable: true\nvariant: hybrid\nlayers: \"1\"\ntype: linear\nmini_batch_size: 4\nbase_lr: 0.5"));
  LMModel m(c, ttt);
  m->init_weights(seed);
  at::NoGradGuard ng;
  for (auto& kv : m->named_parameters()) {
    kv.value().set_requires_grad(false);
    if (kv.key().find("gating_alpha") != std::string::npos) kv.value().fill_(0.8);  // TTT matters
  }
  m->eval();
  return m;
}

at::Tensor random_codes(const LMConfig& c, int64_t B, int64_t T, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor codes = at::randint(c.card, {B, c.num_codebooks(), T}, g, at::kLong);
  codes.select(1, 0).random_(0, c.text_card, g);
  return codes;
}

// NaN-aware max |a - b|; also fails when the NaN patterns differ.
double nan_max_diff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_TRUE(at::equal(a.isnan(), b.isnan()));
  const at::Tensor d = (a - b).abs();
  return at::where(d.isnan(), at::zeros({}, d.options()), d).max().item<double>();
}

}  // namespace

TEST(EvalStreamingCE, ChunkedEqualsWholeSequenceWithAbsentTokens) {
  LMModel m = ttt_model();
  at::Tensor codes = random_codes(m->cfg, 2, 23, 7);
  codes.select(1, 0).narrow(1, 5, 3).fill_(-1);   // absent text
  codes.select(1, 2).narrow(1, 10, 2).fill_(-1);  // an absent delayed audio codebook
  at::InferenceMode im;
  const at::Tensor whole = eval::stream_cross_entropy(m->cfg, m->forward(codes), codes);
  for (int64_t chunk : {1, 4, 5}) {
    TransformerState st = m->make_state(2, chunk);
    int64_t calls = 0, last_end = 0;
    const at::Tensor ce =
        eval::streaming_cross_entropy(*m, codes, st, false, [&](int64_t end, const std::vector<LayerProbes>&) {
          ++calls;
          EXPECT_GT(end, last_end);
          last_end = end;
        });
    EXPECT_EQ(calls, (23 + chunk - 1) / chunk);
    EXPECT_EQ(last_end, 23);
    // float32 logits through different kernels (one call vs chunks): rounding only.
    EXPECT_LT(nan_max_diff(ce, whole.cpu()), 2e-4) << "chunk " << chunk;
  }
}

TEST(EvalPaired, PlacementPutsTheClipInMoshisStreamAndPadsText) {
  LMModel m = ttt_model();
  const auto& c = m->cfg;  // tiny: n_q 4, dep_q 2
  ASSERT_EQ(eval::clip_codebooks(c, "moshi"), 2);
  at::Tensor clip = at::arange(10, at::kLong).view({2, 5});
  eval::ScoringOptions o;
  at::Tensor x = eval::place_clip(c, clip, o);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{5, 5}));
  EXPECT_TRUE(at::equal(x.narrow(0, 1, 2), clip));
  EXPECT_TRUE((x[0] == c.existing_text_padding_id.value()).all().item<bool>());
  EXPECT_TRUE((x.narrow(0, 3, 2) == -1).all().item<bool>());
  o.text = "none";
  EXPECT_TRUE((eval::place_clip(c, clip, o)[0] == -1).all().item<bool>());
  o.placement = "user";
  mt::test::expect_error([&] { eval::clip_codebooks(c, "user"); }, std::vector<std::string>{"cannot be scored"});
  o.placement = "sideways";
  mt::test::expect_error([&] { eval::clip_codebooks(c, "sideways"); },
                         std::vector<std::string>{"--placement must be moshi or user"});
}

TEST(EvalPaired, BatchingChangesNoScoreAndReductionsAgree) {
  LMModel m = ttt_model();
  std::vector<at::Tensor> clips;
  at::Generator g = at::detail::createCPUGenerator(11);
  for (int64_t len : {7, 3, 12, 9, 12, 1, 5}) clips.push_back(at::randint(m->cfg.card, {2, len}, g, at::kLong));
  eval::ScoringOptions one, many;
  one.batch = 1;
  many.batch = 4;
  one.quiet = many.quiet = true;
  const auto a = eval::score_clips(*m, clips, one);
  const auto b = eval::score_clips(*m, clips, many);
  ASSERT_EQ(a.size(), clips.size());
  for (size_t i = 0; i < clips.size(); ++i) {
    EXPECT_EQ(a[i].frames, clips[i].size(1));
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    // Tiny delays {0, 0, 1, 0, 1}: codebook 0 scores every frame, codebook 1 all but the last.
    EXPECT_EQ(a[i].tokens, 2 * clips[i].size(1) - 1);
    for (size_t r = 0; r < 4; ++r) {
      if (std::isnan(a[i].score[r])) {
        EXPECT_TRUE(std::isnan(b[i].score[r]));
        continue;
      }
      EXPECT_NEAR(a[i].score[r], b[i].score[r], 1e-4 * std::max(1.0, std::abs(a[i].score[r])))
          << "clip " << i << " r " << r;
    }
    // sum = mean x tokens; all scores are log-probabilities (<= 0).
    EXPECT_NEAR(a[i].score[1], a[i].score[0] * static_cast<double>(a[i].tokens), 1e-6 * std::abs(a[i].score[1]) + 1e-9);
    EXPECT_LT(a[i].score[0], 0);
  }
  // A one-frame clip scores only its semantic token: mean = semantic = weighted.
  EXPECT_EQ(a[5].tokens, 1);
  EXPECT_NEAR(a[5].score[0], a[5].score[2], 1e-9);
  EXPECT_NEAR(a[5].score[0], a[5].score[3], 1e-9);
  // Reordering the input reorders the output.
  std::vector<at::Tensor> rev(clips.rbegin(), clips.rend());
  const auto c = eval::score_clips(*m, rev, many);
  EXPECT_NEAR(c.front().score[0], a.back().score[0], 1e-5);
}

TEST(EvalLongContext, SlopeOfAnExactLineAndNonFinitePointsSkipped) {
  std::vector<double> x{1, 2, 4, 8, 16}, y;
  for (double v : x) y.push_back(3.0 - 0.25 * std::log2(v));
  EXPECT_NEAR(eval::log2_slope(x, y), -0.25, 1e-12);
  y[2] = NAN;
  EXPECT_NEAR(eval::log2_slope(x, y), -0.25, 1e-12);
  EXPECT_TRUE(std::isnan(eval::log2_slope({4}, {1.0})));
}

TEST(EvalLongContext, ControlsBehaveAsDefinedAndNoTTTRestoresTheModel) {
  mt::test::TempDir d;
  LMModel m = ttt_model();
  // Two token shards [1 + n_q, T] of different lengths.
  std::vector<std::string> files;
  for (int i = 0; i < 2; ++i) {
    const std::string f = d.file("f" + std::to_string(i) + ".safetensors");
    io::save(
        f, std::vector<std::pair<std::string, at::Tensor>>{{"codes", random_codes(m->cfg, 1, 40 + 8 * i, 20 + i)[0]}});
    files.push_back(f);
  }
  const at::Tensor alpha_before = hybrid_of(*m->transformer->layer_ptrs[1])->gating_alpha.clone();
  eval::LongContextOptions o;
  o.variants = {"persist", "ttt-reset:64", "ttt-reset:8", "reset:8", "no-ttt"};
  o.chunk = 4;
  o.window = 8;
  o.probes = true;
  o.bootstrap = 50;
  o.quiet = true;
  o.out_dir = d.file("run");
  const nlohmann::json s = eval::run_long_context(*m, files, nullptr, o);
  EXPECT_TRUE(at::equal(alpha_before, hybrid_of(*m->transformer->layer_ptrs[1])->gating_alpha));
  auto mean_of = [&](const std::string& name) {
    for (const auto& v : s["variants"])
      if (v["name"] == name) return v["mean_loss"].get<double>();
    ADD_FAILURE() << "no variant " << name;
    return std::nan("");
  };
  // A TTT reset period longer than the files changes nothing.
  EXPECT_NEAR(mean_of("persist"), mean_of("ttt-reset:64"), 1e-9);
  // Resets every 8 frames, and switching TTT off, do change the losses.
  EXPECT_GT(std::abs(mean_of("persist") - mean_of("ttt-reset:8")), 1e-6);
  EXPECT_GT(std::abs(mean_of("persist") - mean_of("reset:8")), 1e-6);
  EXPECT_GT(std::abs(mean_of("persist") - mean_of("no-ttt")), 1e-6);
  // The persist run equals the whole-sequence forward: the mean over (file, position) of the mean over
  // the position's scored audio codebooks.
  double sum = 0, n = 0;
  for (const auto& f : files) {
    at::Tensor codes = io::load_all(f).at("codes").unsqueeze(0);
    at::InferenceMode im;
    at::Tensor ce = eval::stream_cross_entropy(m->cfg, m->forward(codes), codes).narrow(1, 1, 2)[0].to(at::kDouble);
    for (int64_t t = 0; t < ce.size(1); ++t) {
      at::Tensor col = ce.select(1, t);
      col = col.masked_select(col.isfinite());
      if (col.numel() == 0) continue;
      sum += col.mean().item<double>();
      n += 1;
    }
  }
  EXPECT_NEAR(mean_of("persist"), sum / n, 1e-4);
  // Probes: one hybrid unit, the state moved, and the files were written.
  ASSERT_TRUE(s.contains("probes"));
  ASSERT_EQ(s["probes"]["units"].size(), 1u);
  EXPECT_GT(s["probes"]["units"][0]["state_change_end"].get<double>(), 0);
  for (const char* f : {"curve.csv", "summary.json", "probes.csv", "loss_by_position.png"})
    EXPECT_TRUE(std::filesystem::exists(d.file(std::string("run/eval/long_context/") + f))) << f;
  // Bad controls are named.
  o.variants = {"ttt-reset:6"};
  mt::test::expect_error([&] { eval::run_long_context(*m, files, nullptr, o); },
                         std::vector<std::string>{"multiple of --chunk"});
  o.variants = {"sometimes"};
  mt::test::expect_error([&] { eval::run_long_context(*m, files, nullptr, o); },
                         std::vector<std::string>{"unknown control"});
}

// pitfalls.md row 10: loss-by-position evaluation compared with targets two frames ahead, ignored the
// codebook delays and filled absent streams with token 0. Ours must equal `score`'s whole-sequence CE
// position by position, take the delays from the model, and put "not scored" exactly where a stream is
// absent. The broken variant (targets two frames ahead) is run through the same check and must fail it.
TEST(Pitfalls, Row10_LossByPositionEqualsScoreWithTheModelsDelays) {
  LMModel m = ttt_model();
  at::Tensor codes = random_codes(m->cfg, 1, 30, 9);
  codes.select(1, 0).narrow(1, 11, 3).fill_(-1);  // known answer: text not scored at 11, 12, 13
  at::InferenceMode im;
  const at::Tensor ref = eval::stream_cross_entropy(m->cfg, m->forward(codes), codes);  // what `score` writes
  TransformerState st = m->make_state(1, 7);
  const at::Tensor ce = eval::streaming_cross_entropy(*m, codes, st);
  auto matches = [&](const at::Tensor& a) { return at::equal(a.isnan(), ref.isnan()) && nan_max_diff(a, ref) < 2e-4; };
  EXPECT_TRUE(matches(ce));
  for (int64_t t = 0; t < 30; ++t) EXPECT_EQ(std::isnan(ce[0][0][t].item<float>()), t >= 11 && t <= 13) << t;
  // Delays from the model (tiny: {0, 0, 1, 0, 1}): the delayed audio codebook's last position is not scored.
  EXPECT_TRUE(std::isnan(ce[0][2][29].item<float>()));
  EXPECT_FALSE(std::isnan(ce[0][1][29].item<float>()));
  // The broken variant: targets taken two frames ahead.
  at::Tensor ahead = codes.roll(-2, 2);
  const at::Tensor broken =
      eval::masked_cross_entropy(m->forward(codes).logits, ahead.narrow(1, 1, 2), m->forward(codes).mask);
  at::Tensor broken_all = ref.clone();
  broken_all.narrow(1, 1, 2).copy_(broken);
  EXPECT_FALSE(matches(broken_all)) << "the check must catch targets two frames ahead";
}

// pitfalls.md row 15: Figure-5 probes existed in one code path only and counted positions in mini-batches.
// The probes of the streaming evaluation path (per chunk, concatenated) must equal the whole-sequence
// pass's, one value per token.
TEST(Pitfalls, Row15_ProbesAgreeBetweenWholeAndStreamingPathsOnePerToken) {
  LMModel m = ttt_model();
  const int64_t T = 21;
  at::Tensor codes = random_codes(m->cfg, 1, T, 13);
  at::InferenceMode im;
  // "" when the probes of both paths agree, one value per token; else what is wrong.
  auto problem = [&]() -> std::string {
    std::vector<LayerProbes> whole;
    m->forward(codes, &whole);
    if (!whole.at(1).hybrid.l0.defined()) return "no probes from the whole-sequence path";
    if (whole[1].hybrid.l0.size(-1) != T) return "not one probe per token";
    TransformerState st = m->make_state(1, 5);
    std::vector<at::Tensor> l0, lprev, lafter;
    at::Tensor last_norm;
    eval::streaming_cross_entropy(*m, codes, st, true, [&](int64_t, const std::vector<LayerProbes>& p) {
      l0.push_back(p.at(1).hybrid.l0);
      lprev.push_back(p.at(1).hybrid.lprev);
      lafter.push_back(p.at(1).hybrid.lafter);
      last_norm = p.at(1).hybrid.w_delta_norm;
    });
    if (l0.empty() || !l0[0].defined()) return "no probes from the streaming path";
    auto same = [](const at::Tensor& a, const at::Tensor& b) {
      return a.sizes() == b.sizes() && at::allclose(a, b, 1e-4, 1e-5);
    };
    if (!same(at::cat(l0, -1), whole[1].hybrid.l0) || !same(at::cat(lprev, -1), whole[1].hybrid.lprev) ||
        !same(at::cat(lafter, -1), whole[1].hybrid.lafter))
      return "streaming and whole-sequence probes differ";
    if (!at::allclose(last_norm, whole[1].hybrid.w_delta_norm, 1e-4, 1e-6)) return "state change differs";
    if (!(last_norm.item<float>() > 0)) return "no state change";
    return "";
  };
  EXPECT_EQ(problem(), "");
  pitfall::Reintroduce broken(15);
  EXPECT_NE(problem(), "") << "the check must catch probes counted per mini-batch";
}
