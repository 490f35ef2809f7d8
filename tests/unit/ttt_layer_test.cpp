// TTT layer: streaming == whole sequence, checkpoint groups, strict loading, per-slot reset, detach,
// inner-loss probes.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "test_util.h"
#include "ttt/ttt_layer.h"
#include "unit/ttt_test_util.h"
#include "util/error.h"

using mt::test::max_abs_diff;
using mt::test::perturbed_layer;
using mt::test::small_config;
using namespace mt::ttt;

namespace {

at::Tensor randn(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dt = at::kDouble) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::empty(shape, at::kDouble).normal_(0, 1, gen).to(dt);
}

at::Tensor run_chunks(const TTTLayer& layer, const at::Tensor& x, int64_t chunk, TTTState& st,
                      TTTProbes* pr = nullptr) {
  std::vector<at::Tensor> ys, l0, lp, la;
  for (int64_t t = 0; t < x.size(1); t += chunk) {
    TTTProbes p;
    ys.push_back(layer.step(x.narrow(1, t, std::min(chunk, x.size(1) - t)), st, pr ? &p : nullptr));
    if (pr) {
      l0.push_back(p.l0);
      lp.push_back(p.lprev);
      la.push_back(p.lafter);
      pr->w_delta_norm = p.w_delta_norm;
    }
  }
  if (pr) {
    pr->l0 = at::cat(l0, 2);
    pr->lprev = at::cat(lp, 2);
    pr->lafter = at::cat(la, 2);
  }
  return at::cat(ys, 1);
}

struct Variant {
  std::string type;
  bool gate, share_qk;
};

class StreamMatrix : public ::testing::TestWithParam<Variant> {};

TEST_P(StreamMatrix, ChunkedEqualsWhole) {
  auto v = GetParam();
  auto cfg = small_config(v.type);
  cfg.use_gate = v.gate;
  cfg.share_qk = v.share_qk;
  auto layer = perturbed_layer(cfg, 7);
  at::NoGradGuard ng;
  for (int64_t L : {1, 15, 16, 17, 31, 40}) {
    auto x = randn({2, L, cfg.hidden_size}, 100 + L);
    TTTState whole(2);
    auto y = layer.forward(x, whole);
    for (int64_t chunk : {1, 3, 16}) {
      TTTState st(2);
      auto ys = run_chunks(layer, x, chunk, st);
      SCOPED_TRACE(mt::str("L=", L, " chunk=", chunk));
      EXPECT_LT(max_abs_diff(ys, y), 1e-11);  // float64: same function, different op grouping
      EXPECT_LT(max_abs_diff(st.W[0], whole.W[0]), 1e-11);
      EXPECT_LT(max_abs_diff(st.G[0], whole.G[0]), 1e-11);
      ASSERT_EQ(st.W.size(), static_cast<size_t>(cfg.inner_layers()));
      for (size_t l = 1; l < st.W.size(); ++l)
        EXPECT_LT(max_abs_diff(st.W[l], whole.W[l]), 1e-11) << "inner layer " << l;
      EXPECT_EQ(st.position[0], L);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ttt, StreamMatrix,
                         ::testing::Values(Variant{"linear", false, false}, Variant{"mlp", false, false},
                                           Variant{"linear", true, true}, Variant{"mlp", true, true},
                                           Variant{"mlp3", false, false}, Variant{"mlp5", true, true}),
                         [](const auto& i) {
                           return i.param.type + (i.param.gate ? "_gate" : "") + (i.param.share_qk ? "_shareqk" : "");
                         });

TEST(TttLayer, Float32StreamingMatchesWhole) {
  auto layer = perturbed_layer(small_config("mlp"), 3, at::kFloat);
  at::NoGradGuard ng;
  auto x = randn({2, 40, 16}, 5, at::kFloat);
  TTTState st(2);
  EXPECT_LT(max_abs_diff(run_chunks(layer, x, 1, st), layer.forward(x)), 2e-5);
  EXPECT_EQ(st.W[0].scalar_type(), at::kFloat);
}

TEST(TttLayer, Bf16ParamsKeepFloat32State) {
  auto layer = perturbed_layer(small_config("linear"), 3, at::kBFloat16);
  at::NoGradGuard ng;
  auto x = randn({1, 20, 16}, 5, at::kBFloat16);
  TTTState st(1);
  auto y = layer.forward(x, st);
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  EXPECT_EQ(st.W[0].scalar_type(), at::kFloat);
  EXPECT_EQ(st.G[0].scalar_type(), at::kFloat);
  auto ref = perturbed_layer(small_config("linear"), 3, at::kFloat);
  ref.load([&] {
    std::map<std::string, at::Tensor> m;
    for (auto& [n, p] : layer.named_parameters()) m[n] = p.detach().to(at::kFloat);
    return m;
  }());
  EXPECT_LT(max_abs_diff(y, ref.forward(x.to(at::kFloat))), 0.1);  // bf16 projections
}

// Gradients through a state carried across chunks, for every checkpoint group size, equal.
TEST(TttLayer, CheckpointGroupsGiveIdenticalOutputsAndGradients) {
  for (std::string type : {"linear", "mlp"}) {
    auto x = randn({2, 45, 16}, 11);
    auto g = randn({2, 45, 16}, 12);
    std::vector<at::Tensor> ref;
    for (int64_t gs : {0, 1, 2, 3, 100}) {
      auto cfg = small_config(type);
      cfg.scan_checkpoint_group_size = gs;
      auto layer = perturbed_layer(cfg, 21);
      auto xg = x.clone().requires_grad_(true);
      TTTState st(2);
      // Chunks of 5 then 40: the second starts mid-mini-batch (live gradient sums, in-state grads).
      auto y = at::cat({layer.forward(xg.narrow(1, 0, 5), st), layer.forward(xg.narrow(1, 5, 40), st)}, 1);
      std::vector<at::Tensor> wrt{xg};
      for (auto& [n, p] : layer.named_parameters()) wrt.push_back(p);
      auto gr = torch::autograd::grad({(y * g).sum()}, wrt);
      gr.insert(gr.begin(), y.detach());
      if (ref.empty()) {
        ref = gr;
        continue;
      }
      for (size_t i = 0; i < gr.size(); ++i) {
        SCOPED_TRACE(mt::str(type, " group_size=", gs, " tensor #", i));
        EXPECT_LT(max_abs_diff(gr[i], ref[i]), 1e-12 * (1 + ref[i].abs().max().item<double>()));
      }
    }
  }
}

TEST(TttLayer, StrictLoading) {
  auto cfg = small_config("mlp");
  auto layer = TTTLayer::init(cfg, 1);
  std::map<std::string, at::Tensor> m;
  for (auto& [n, p] : layer.named_parameters()) m[n] = p.detach().clone();
  EXPECT_NO_THROW(layer.load(m));
  auto expect_error = [&](std::map<std::string, at::Tensor> bad, std::vector<std::string> parts) {
    try {
      layer.load(bad);
      ADD_FAILURE() << "no error";
    } catch (const mt::Error& e) {
      for (auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
    EXPECT_THROW(TTTLayer(cfg, bad), mt::Error);
  };
  auto missing = m;
  missing.erase("W2");
  expect_error(missing, {"missing", "'W2'", "[2, 32, 8]"});
  auto extra = m;
  extra["k_proj.bias"] = at::zeros({16});
  expect_error(extra, {"unexpected", "'k_proj.bias'"});
  auto shaped = m;
  shaped["ttt_norm_weight"] = at::zeros({2, 9});
  expect_error(shaped, {"'ttt_norm_weight'", "[2, 9]", "expected [2, 8]"});
  // Names follow the reference state_dict.
  std::vector<std::string> names;
  for (auto& [n, p] : layer.named_parameters()) {
    names.push_back(n);
    EXPECT_TRUE(p.requires_grad()) << n;
    EXPECT_TRUE(p.is_leaf()) << n;
  }
  EXPECT_EQ(names.front(), "learnable_token_idx");
  EXPECT_NE(std::find(names.begin(), names.end(), "q_proj.weight"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "g_proj.weight"), names.end());
}

TEST(TttLayer, InitMatchesReferenceInitialValues) {
  auto cfg = small_config("mlp", 64, 4);
  cfg.use_gate = cfg.share_qk = true;
  auto l = TTTLayer::init(cfg, 3);
  EXPECT_TRUE(l.param("learnable_token_idx").eq(0).all().item<bool>());
  EXPECT_TRUE(l.param("ttt_norm_weight").eq(1).all().item<bool>());
  EXPECT_TRUE(l.param("b1").eq(0).all().item<bool>());
  EXPECT_TRUE(l.param("post_norm.bias").eq(0).all().item<bool>());
  EXPECT_NEAR(l.param("W2").std().item<double>(), 0.02, 0.002);
  EXPECT_NEAR(l.param("q_proj.weight").std().item<double>(), 0.02, 0.002);
  EXPECT_LE(l.param("conv_q.weight").abs().max().item<double>(), 0.5);  // U(+-1/sqrt(4))
}

TEST(TttLayer, PerSlotResetEqualsFreshStream) {
  for (std::string type : {"linear", "mlp"}) {
    auto cfg = small_config(type);
    cfg.share_qk = true;
    auto layer = perturbed_layer(cfg, 5);
    at::NoGradGuard ng;
    auto x = randn({2, 30, 16}, 9);
    TTTState st(2);
    auto y_a = layer.forward(x.narrow(1, 0, 7), st);
    st.reset_slot(1);
    auto y_b = layer.forward(x.narrow(1, 7, 23), st);  // slot 0 at offset 7, slot 1 at 0
    // Slot 0 as if never interrupted.
    auto y0 = layer.forward(x.narrow(0, 0, 1));
    EXPECT_LT(max_abs_diff(at::cat({y_a, y_b}, 1).narrow(0, 0, 1), y0), 1e-11);
    // Slot 1 as a fresh stream over its new inputs.
    auto y1 = layer.forward(x.narrow(0, 1, 1).narrow(1, 7, 23));
    EXPECT_LT(max_abs_diff(y_b.narrow(0, 1, 1), y1), 1e-11);
    EXPECT_EQ(st.position[0], 30);
    EXPECT_EQ(st.position[1], 23);
    // Full reset.
    st.reset();
    EXPECT_LT(max_abs_diff(layer.forward(x, st), layer.forward(x)), 1e-11);
  }
}

TEST(TttLayer, DetachCutsHistoryKeepsValues) {
  auto layer = perturbed_layer(small_config("mlp"), 5);
  auto x = randn({1, 20, 16}, 9).requires_grad_(true);
  TTTState st(1);
  auto y1 = layer.forward(x.narrow(1, 0, 10), st);
  auto w = st.W[0].detach().clone();
  EXPECT_TRUE(st.W[0].requires_grad());
  st.detach();
  EXPECT_FALSE(st.W[0].requires_grad());
  EXPECT_TRUE(st.W[0].equal(w));
  auto y2 = layer.forward(x.narrow(1, 10, 10), st);
  auto g = torch::autograd::grad({y2.sum()}, {x})[0];
  EXPECT_EQ(g.narrow(1, 0, 10).abs().max().item<double>(), 0.0);  // no path into the first chunk
  EXPECT_GT(g.narrow(1, 10, 10).abs().max().item<double>(), 0.0);
  (void)y1;
}

TEST(TttLayer, ProbesSameForWholeAndStreamingAndDoNotChangeOutputs) {
  for (std::string type : {"linear", "mlp"}) {
    auto layer = perturbed_layer(small_config(type), 8);
    at::NoGradGuard ng;
    auto x = randn({2, 37, 16}, 4);
    TTTState s1(2), s2(2);
    TTTProbes pw, ps;
    auto y = layer.forward(x, s1, &pw);
    EXPECT_LT(max_abs_diff(y, layer.forward(x)), 1e-13);
    auto ys = run_chunks(layer, x, 3, s2, &ps);
    EXPECT_LT(max_abs_diff(ys, y), 1e-11);
    EXPECT_EQ(pw.l0.sizes().vec(), (std::vector<int64_t>{2, 2, 37}));
    EXPECT_LT(max_abs_diff(pw.l0, ps.l0), 1e-9);
    EXPECT_LT(max_abs_diff(pw.lprev, ps.lprev), 1e-9);
    EXPECT_LT(max_abs_diff(pw.lafter, ps.lafter), 1e-9);
    EXPECT_LT(max_abs_diff(pw.w_delta_norm, ps.w_delta_norm), 1e-9);
    // Before any update the state is W0: lprev == l0 at the first token.
    EXPECT_LT(max_abs_diff(pw.lprev.select(2, 0), pw.l0.select(2, 0)), 1e-6);
    EXPECT_GT(pw.w_delta_norm.min().item<double>(), 0.0);
    // The inner step reduces the loss of the token it learned from, on average.
    EXPECT_LT(pw.lafter.mean().item<double>(), pw.lprev.mean().item<double>());
  }
  // With the inner lr gated to ~0 nothing is learned: all three losses agree.
  auto cfg = small_config("linear");
  auto layer = perturbed_layer(cfg, 8);
  {
    at::NoGradGuard ng;
    const_cast<at::Tensor&>(layer.param("learnable_ttt_lr_bias")).fill_(-60.0);
  }
  at::NoGradGuard ng;
  TTTProbes p;
  TTTState st(1);
  layer.forward(randn({1, 20, 16}, 4), st, &p);
  EXPECT_LT(max_abs_diff(p.lafter, p.l0), 1e-6);
  EXPECT_LT(max_abs_diff(p.lprev, p.l0), 1e-6);
}

TEST(TttLayer, InputErrorsThrow) {
  auto layer = TTTLayer::init(small_config("linear"), 1);
  TTTState st(2);
  EXPECT_THROW(layer.forward(at::zeros({2, 4, 15}), st), mt::Error);
  EXPECT_THROW(layer.forward(at::zeros({3, 4, 16}), st), mt::Error);
  EXPECT_THROW(layer.forward(at::zeros({2, 4, 16}, at::kDouble), st), mt::Error);
  EXPECT_THROW(st.reset_slot(2), mt::Error);
  auto bad = small_config("conv");
  EXPECT_THROW(TTTLayer::init(bad, 1), mt::Error);
  EXPECT_THROW(parse_config_json("{\"hidden_size\": 10, \"num_attention_heads\": 3}"), mt::Error);
  auto c = parse_config_json(R"({"hidden_size": 64, "num_attention_heads": 4, "ttt_layer_type": "mlp", "B": 2})");
  EXPECT_EQ(c.head_dim(), 16);
  EXPECT_TRUE(c.is_mlp());
}

}  // namespace
