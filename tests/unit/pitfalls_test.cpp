// Guard tests for shared/spec/pitfalls.md, one per row (docs/guards.md is the table). Each checks the
// property and then puts the failure back, through a test-only switch (util/pitfall_switch.h) or a
// broken copy built in the test, and shows that the same check catches it. Rows 10 and 15 are in
// eval_test.cpp.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "lm/lm_model.h"
#include "lm_test_util.h"
#include "reference/check_reference.h"
#include "test_util.h"
#include "train/data.h"
#include "train/loss.h"
#include "train/train_config.h"
#include "train/trainer.h"
#include "ttt/inplace.h"
#include "ttt_test_util.h"
#include "util/pitfall_switch.h"
#include "util/runtime.h"

namespace fs = std::filesystem;
using namespace mt;
using mt::pitfall::Reintroduce;

namespace {

at::Tensor rnd(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randn(shape, g, at::TensorOptions().dtype(at::kDouble));
}

// Largest change of the outputs before t when input token t is perturbed, over every t.
double future_leak(const ttt::TTTLayer& layer, const at::Tensor& x) {
  at::NoGradGuard ng;
  const at::Tensor y = layer.forward(x);
  double worst = 0;
  for (int64_t t = 1; t < x.size(1); ++t) {
    at::Tensor x2 = x.clone();
    x2.select(1, t).add_(1.0);
    const at::Tensor y2 = layer.forward(x2);
    worst = std::max(worst, test::max_abs_diff(y2.narrow(1, 0, t), y.narrow(1, 0, t)));
  }
  return worst;
}

// One-token steps equal the whole-sequence output.
double stream_vs_whole(const ttt::TTTLayer& layer, const at::Tensor& x) {
  at::NoGradGuard ng;
  ttt::TTTState st = layer.init_state(x.size(0));
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < x.size(1); ++t) ys.push_back(layer.step(x.narrow(1, t, 1), st));
  return test::max_abs_diff(at::cat(ys, 1), layer.forward(x));
}

// Largest difference between two states' inner weights and pending sums.
double state_diff(const ttt::TTTState& a, const ttt::TTTState& b) {
  EXPECT_EQ(a.W.size(), b.W.size());
  double d = 0;
  for (size_t l = 0; l < std::min(a.W.size(), b.W.size()); ++l)
    d = std::max({d, test::max_abs_diff(a.W[l], b.W[l]), test::max_abs_diff(a.G[l], b.G[l])});
  return d;
}

using test::random_codes;
using test::tiny_lm;
using test::ttt_yaml;

ttt::InPlaceConfig inplace_cfg(int64_t D, int64_t H, int64_t C) {
  ttt::InPlaceConfig c;
  c.dim = D;
  c.hidden = H;
  c.chunk_size = C;
  c.lr = 0.3;
  c.use_proj = true;
  return c;
}

ttt::InPlaceFFN inplace_module(const ttt::InPlaceConfig& c, uint64_t seed) {
  ttt::InPlaceFFN m(c);
  m->to(at::kDouble);
  m->load(test::inplace_random_weights(c, seed));
  return m;
}

}  // namespace

// Row 1: a dual form without the causal mask inside the mini-batch let each token see the gradients of
// later tokens. Perturbing token t must leave every output before t unchanged, and one-token steps
// must equal the whole sequence.
TEST(Pitfalls, Row01_NoTokenSeesALaterTokenOfItsMiniBatch) {
  for (const char* type : {"linear", "mlp"}) {
    const ttt::TTTLayer layer = test::perturbed_layer(test::small_config(type, 16, 2, 4), 11);
    const at::Tensor x = rnd({1, 10, 16}, 12);
    EXPECT_EQ(future_leak(layer, x), 0.0) << type;
    EXPECT_LT(stream_vs_whole(layer, x), 1e-10) << type;
    Reintroduce broken(1);
    EXPECT_GT(future_leak(layer, x), 1e-6) << type << ": the check must catch a bidirectional mini-batch";
  }
}

// Row 2: the TTT output bypassed post-norm and o_proj. Parity with the ttt-lm-pytorch cases.
TEST(Pitfalls, Row02_OutputGoesThroughPostNormAndOProjAsTheReference) {
  ref::register_builtin_kinds();
  for (const char* c : {"ttt/ttt_linear_small", "ttt/ttt_mlp_small"}) {
    const std::string dir = test::reference_dir() + "/" + c;
    if (!fs::exists(dir)) GTEST_SKIP() << "no reference case " << dir;
    const ref::CaseResult ok = ref::run_case(dir, {});
    ASSERT_FALSE(ok.skipped) << ok.skip_reason;
    EXPECT_TRUE(ok.pass()) << c;
    Reintroduce broken(2);
    // The broken layer's outputs differ from the reference's (and its post-norm and o_proj get no
    // gradient, which the gradient comparison refuses outright).
    bool caught = false;
    try {
      caught = !ref::run_case(dir, {}).pass();
    } catch (const std::exception&) {
      caught = true;
    }
    EXPECT_TRUE(caught) << c << ": the check must catch a bypassed post-norm / o_proj";
  }
}

// Row 3: choosing the TTT-Linear inner model crashed. Every variant x inner model the config accepts
// runs init -> train step (forward, loss, backward) -> streaming score; the e2e tier does the same
// through the CLI with the shipped configs (TrainConfigs.TrainsAndItsCheckpointScores).
TEST(Pitfalls, Row03_EveryConfigVariantInitsTrainsAndScores) {
  const std::vector<std::string> variants = {"variant: hybrid\ntype: linear\nmini_batch_size: 4",
                                             "variant: hybrid\ntype: mlp\nmini_batch_size: 4",
                                             "variant: hybrid\ntype: mlp\nmlp_layers: 3\nmini_batch_size: 4",
                                             "variant: adapter\ntype: linear\nadapter_rank: 4\nmini_batch_size: 4",
                                             "variant: adapter\ntype: mlp\nadapter_rank: 4\nmini_batch_size: 4",
                                             "variant: inplace\ninplace_chunk_size: 4"};
  auto run_all = [&](std::vector<std::string>* failed) {
    for (const auto& v : variants) {
      try {
        lm::LMModel m(tiny_lm(), ttt_yaml(v), lm::LoRAConfig{});
        m->init_weights(1);
        const at::Tensor codes = random_codes(m->cfg, 1, 12, 2);
        const auto out = m->forward(codes);
        train::compute_loss(m->cfg, out, codes, {}).total.backward();
        at::NoGradGuard ng;
        lm::TransformerState st = m->make_state(1, 4);
        const auto s = m->forward_streaming(codes, st);
        const bool finite = s.logits.masked_select(s.mask.unsqueeze(-1)).isfinite().all().item<bool>() &&
                            s.text_logits.masked_select(s.text_mask.unsqueeze(-1)).isfinite().all().item<bool>();
        if (!finite) failed->push_back(v + " (non-finite score)");
      } catch (const std::exception& e) {
        failed->push_back(v + ": " + e.what());
      }
    }
  };
  std::vector<std::string> failed;
  run_all(&failed);
  EXPECT_TRUE(failed.empty()) << failed.front();
  // The parser knows no variant this list lacks.
  EXPECT_THROW(lm::LMModel(tiny_lm(), ttt_yaml("variant: other"), lm::LoRAConfig{}), Error);
  EXPECT_THROW(lm::LMModel(tiny_lm(), ttt_yaml("variant: hybrid\ntype: other"), lm::LoRAConfig{}), Error);
  // The broken variant: the linear inner model's entry point fails.
  {
    Reintroduce broken(3);
    std::vector<std::string> f;
    run_all(&f);
    EXPECT_EQ(f.size(), 2u) << "the check must catch a crashing TTT-Linear";
  }
}

// Row 5: "persistent states" that were never written back, or learned from padding. The state after k
// one-token steps equals the state after one pass over the same k tokens (k not a multiple of the
// mini-batch), and steps never see padding (the state depends on the real tokens only).
TEST(Pitfalls, Row05_StateAfterStepsEqualsStateAfterAWholePass) {
  for (const char* type : {"linear", "mlp"}) {
    const ttt::TTTLayer layer = test::perturbed_layer(test::small_config(type, 16, 2, 4), 21);
    const at::Tensor x = rnd({1, 7, 16}, 22), other = rnd({1, 7, 16}, 24), next = rnd({1, 3, 16}, 23);
    at::NoGradGuard ng;
    {
      ttt::TTTState whole = layer.init_state(1), steps = layer.init_state(1);
      layer.forward(x, whole);
      for (int64_t t = 0; t < 7; ++t) layer.step(x.narrow(1, t, 1), steps);
      EXPECT_LT(state_diff(whole, steps), 1e-10) << type;
      EXPECT_EQ(steps.position[0], 7);
    }
    // What follows depends on the history the state carries (two histories of the same length).
    auto history_effect = [&] {
      ttt::TTTState a = layer.init_state(1), b = layer.init_state(1);
      layer.forward(x, a);
      layer.forward(other, b);
      return test::max_abs_diff(layer.forward(next, a), layer.forward(next, b));
    };
    EXPECT_GT(history_effect(), 1e-6) << type;
    Reintroduce broken(5);
    EXPECT_LT(history_effect(), 1e-12) << type << ": the check must catch a state that is never written back";
  }
}

// Row 6: a reset restored the weights captured at construction (or pretrained ones), destroying what
// training learned. After an optimizer-like change of the parameters, a reset slot must start from the
// current values (equal to a fresh stream), and a reset must never write a parameter.
TEST(Pitfalls, Row06_ResetRestoresTheCurrentTrainedParameters) {
  ttt::TTTLayer layer = test::perturbed_layer(test::small_config("linear", 16, 2, 4), 31);
  const at::Tensor a = rnd({1, 6, 16}, 32), b = rnd({1, 5, 16}, 33);
  auto check = [&] {
    at::NoGradGuard ng;
    ttt::TTTState st = layer.init_state(1);
    layer.forward(a, st);
    const_cast<at::Tensor&>(layer.param("W1")).add_(0.05);  // what an optimizer step does, in place
    std::map<std::string, at::Tensor> before;
    for (const auto& [n, t] : layer.named_parameters()) before[n] = t.clone();
    st.reset();
    const at::Tensor y = layer.forward(b, st);
    ttt::TTTState fresh = layer.init_state(1);
    const at::Tensor want = layer.forward(b, fresh);
    bool params_unchanged = true;
    for (const auto& [n, t] : layer.named_parameters()) params_unchanged = params_unchanged && at::equal(t, before[n]);
    const_cast<at::Tensor&>(layer.param("W1")).sub_(0.05);
    return std::make_pair(test::max_abs_diff(y, want), params_unchanged);
  };
  auto [d, unchanged] = check();
  EXPECT_LT(d, 1e-12);
  EXPECT_TRUE(unchanged) << "a reset wrote a parameter";
  Reintroduce broken(6);
  EXPECT_GT(check().first, 1e-6) << "the check must catch a reset to construction-time values";
}

// Row 7: the batch collate kept the first sample's file id, so resets were decided for all slots from
// slot 0. Two files in one batch: each slot resets when its own file starts.
TEST(Pitfalls, Row07_EachSlotResetsWhenItsOwnFileStarts) {
  test::TempDir d;
  at::Generator g = at::detail::createCPUGenerator(5);
  // Slot 0 reads a 12-frame file (3 chunks of 4), slot 1 a 4-frame one, then the next file.
  train::write_token_dataset(d.path.string(), {{"long", at::randint(10, {2, 12}, g, at::kLong)},
                                               {"short", at::randint(10, {2, 4}, g, at::kLong)},
                                               {"next", at::randint(10, {2, 8}, g, at::kLong)}});
  train::LoaderConfig lc;
  lc.batch_size = 2;
  lc.chunk_frames = 4;
  lc.shuffle = false;
  lc.infinite = false;
  auto run = [&] {
    train::TokenLoader loader(train::read_token_index((d.path / "index.jsonl").string()), lc);
    const ttt::TTTLayer layer = test::perturbed_layer(test::small_config("linear", 8, 2, 4), 41);
    std::vector<nn::LayerState> st(1);
    st[0].add("hybrid", std::make_unique<lm::HybridState>(2));
    ttt::TTTState& hs = *lm::hybrid_state(st[0]);
    train::TokenBatch b;
    std::vector<std::vector<int64_t>> positions;  // per batch, per slot: tokens the slot's state has seen
    at::NoGradGuard ng;
    while (loader.next(b)) {
      train::apply_resets(st, b.reset);
      layer.forward(at::randn({2, 4, 8}, at::kDouble), hs);
      positions.push_back(hs.position);
    }
    return positions;
  };
  const auto p = run();
  ASSERT_GE(p.size(), 2u);
  // Batch 1: slot 0 continues its 12-frame file (8 tokens seen), slot 1 started "next" (4 seen).
  EXPECT_EQ(p[1], (std::vector<int64_t>{8, 4}));
  Reintroduce broken(7);
  const auto q = run();
  EXPECT_NE(q[1], p[1]) << "the check must catch resets decided from slot 0";
}

// Row 8: a gate that never got a gradient, weight decay on α, and a hard clamp that froze α at ±3.
// α's gradient is nonzero beyond the bound, α has no weight decay by default, and every new parameter
// gets a gradient (Integration.EveryNewParameterGetsAGradient lists the ones that do not).
TEST(Pitfalls, Row08_AlphaKeepsItsGradientBeyondTheBoundAndHasNoWeightDecay) {
  EXPECT_EQ(train::TrainConfig{}.alpha_weight_decay, 0.0);
  auto alpha_grad = [&] {
    lm::LMModel m(tiny_lm(), ttt_yaml("variant: hybrid\ntype: linear\nmini_batch_size: 4"), lm::LoRAConfig{});
    m->init_weights(3);
    at::Tensor alpha;
    for (auto& kv : m->named_parameters())
      if (kv.key().find("gating_alpha") != std::string::npos) alpha = kv.value();
    {
      at::NoGradGuard ng;
      alpha.fill_(3.5);
    }
    const at::Tensor codes = random_codes(m->cfg, 1, 8, 4);
    train::compute_loss(m->cfg, m->forward(codes), codes, {}).total.backward();
    return alpha.grad().abs().max().item<double>();
  };
  EXPECT_GT(alpha_grad(), 0.0);
  Reintroduce broken(8);
  EXPECT_EQ(alpha_grad(), 0.0) << "the check must catch a hard clamp";
}

// Row 12: the In-Place target conv saw the next token within chunks in training but was computed one
// token at a time with zero padding in streaming. Streaming equals the whole sequence across chunk edges.
TEST(Pitfalls, Row12_InPlaceStreamingEqualsWholeSequenceAcrossChunkEdges) {
  ttt::InPlaceConfig c = inplace_cfg(6, 10, 4);
  c.conv_kernel = 2;
  c.conv_lookahead = 1;  // the explorations' kernel 2 looking one token ahead
  const ttt::InPlaceFFN m = inplace_module(c, 61);
  const at::Tensor x = rnd({1, 19, 6}, 62), t = rnd({1, 19, 6}, 63);
  auto diff = [&] {
    at::NoGradGuard ng;
    const at::Tensor want = m->forward(x, t);
    ttt::InPlaceState st = m->make_state(1);
    std::vector<at::Tensor> ys;
    for (int64_t i = 0; i < 19; ++i) ys.push_back(m->step(x.narrow(1, i, 1), t.narrow(1, i, 1), st));
    return test::max_abs_diff(at::cat(ys, 1), want);
  };
  EXPECT_LT(diff(), 1e-12);
  Reintroduce broken(12);
  EXPECT_GT(diff(), 1e-6) << "the check must catch per-token targets in streaming";
}

// Row 13: streaming updates never ran. After N streaming steps the fast weight has moved (> 0) and by
// exactly what one whole-sequence pass moves it.
TEST(Pitfalls, Row13_InPlaceStreamingUpdatesRunAndMatchTheWholePass) {
  const ttt::InPlaceConfig c = inplace_cfg(6, 10, 4);
  const ttt::InPlaceFFN m = inplace_module(c, 71);
  const at::Tensor x = rnd({1, 13, 6}, 72), t = rnd({1, 13, 6}, 73);
  auto norms = [&] {
    at::NoGradGuard ng;
    ttt::InPlaceState whole = m->make_state(1), steps = m->make_state(1);
    m->step(x, t, whole);  // one call over the whole sequence
    for (int64_t i = 0; i < 13; ++i) m->step(x.narrow(1, i, 1), t.narrow(1, i, 1), steps);
    return std::make_pair(whole.dw.norm().item<double>(), steps.dw.norm().item<double>());
  };
  auto [w, s] = norms();
  EXPECT_GT(s, 0.0);
  EXPECT_NEAR(s, w, 1e-12 * std::max(1.0, w));
  Reintroduce broken(13);
  EXPECT_EQ(norms().second, 0.0) << "the check must catch streaming steps that never update";
}

// Row 14: fixes went into a copy of the code that never ran, and a machine path chose the copy. One
// file per name under src/, no machine paths in sources, scripts or configs, and --version's build
// line names the commit the binary was built from.
TEST(Pitfalls, Row14_OneImplementationPerConceptNoMachinePathsVersionNamesTheBuild) {
  const std::regex machine_path(R"((^|[^A-Za-z0-9_.])(/home/|/Users/|/root/|/work/|[A-Z]:\\\\)[A-Za-z0-9_.-]+)");
  auto scan = [&](const std::string& text) { return std::regex_search(text, machine_path); };
  EXPECT_TRUE(scan("sys.path.insert(0, \"/home/alice/moshi_ttt/moshi\")")) << "the scan must catch a machine path";
  EXPECT_FALSE(scan("see ../shared/spec/pitfalls.md and /tmp/x"));
  const fs::path root = MT_SOURCE_DIR;
  std::map<std::string, std::string> names;
  std::vector<std::string> found;
  for (const char* top : {"src", "tools", "scripts", "configs", "bench"}) {
    for (const auto& e : fs::recursive_directory_iterator(root / top)) {
      if (!e.is_regular_file()) continue;
      const std::string rel = fs::relative(e.path(), root).string();
      if (scan(test::slurp(e.path().string()))) found.push_back(rel);
      if (std::string(top) == "src") {
        const std::string stem = e.path().filename().string();
        EXPECT_TRUE(names.emplace(stem, rel).second)
            << "two files named " << stem << ": " << names[stem] << ", " << rel;
      }
    }
  }
  EXPECT_TRUE(found.empty()) << "machine path in " << found.front();
  const std::string info = build_info();
  EXPECT_NE(info.find("git "), std::string::npos) << info;
  EXPECT_NE(info.find("libtorch"), std::string::npos) << info;
}

// Row 16: the weight-change check compared sums of checksums. The reported change equals
// ||W_t - W_0|| computed from the state itself.
TEST(Pitfalls, Row16_StateChangeIsTheNormOfWMinusW0FromTheState) {
  for (const char* type : {"linear", "mlp"}) {
    const ttt::TTTLayer layer = test::perturbed_layer(test::small_config(type, 16, 2, 4), 81);
    const at::Tensor x = rnd({1, 8, 16}, 82);  // two whole mini-batches: the state holds W_t itself
    auto check = [&] {
      at::NoGradGuard ng;
      ttt::TTTState st = layer.init_state(1);
      ttt::TTTProbes pr;
      layer.forward(x, st, &pr);
      const at::Tensor W0 = at::cat({layer.param("W1"), layer.param("b1")}, 1).unsqueeze(0);
      double sq = (st.W[0] - W0).square().sum().item<double>();
      if (layer.config().is_mlp()) {
        const at::Tensor W20 = at::cat({layer.param("W2"), layer.param("b2")}, 1).unsqueeze(0);
        sq += (st.W[1] - W20).square().sum().item<double>();
      }
      return std::abs(pr.w_delta_norm[0].item<double>() - std::sqrt(sq)) / std::sqrt(sq);
    };
    EXPECT_LT(check(), 1e-5) << type;
    Reintroduce broken(16);
    EXPECT_GT(check(), 1e-3) << type << ": the check must catch a checksum difference";
  }
}
