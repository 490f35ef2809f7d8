// In-Place TTT FFN (src/ttt/inplace.h): the official reference case, unseen cases built here against a
// slow float64 loop with explicit W_i, streaming = whole sequence (any step sizes, per-slot resets),
// finite-difference gradients, strict loading, strategies agreeing, memory.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "reference/check_reference.h"
#include "test_util.h"
#include "ttt/inplace.h"
#include "ttt_test_util.h"
#include "util/error.h"
#include "util/peak_memory.h"

using namespace mt;
using namespace mt::ttt;

namespace {

InPlaceConfig small_cfg(int64_t D, int64_t H, int64_t C, bool proj, int64_t k = 5, int64_t ahead = -1) {
  InPlaceConfig c;
  c.dim = D;
  c.hidden = H;
  c.chunk_size = C;
  c.lr = 0.3;
  c.use_proj = proj;
  c.conv_kernel = k;
  c.conv_lookahead = ahead;
  return c;
}

std::map<std::string, at::Tensor> random_weights(const InPlaceConfig& c, uint64_t seed) {
  return test::inplace_random_weights(c, seed);
}

InPlaceFFN make_module(const InPlaceConfig& c, const std::map<std::string, at::Tensor>& w, at::ScalarType dt) {
  InPlaceFFN m(c);
  m->to(dt);
  m->load(w);
  return m;
}

// The obviously-correct version: per batch row, a loop over chunks holding W_i explicitly; the target
// conv with at::conv1d on each chunk alone (zero padding at its edges). Float64, differentiable.
struct Slow {
  InPlaceConfig c;
  at::Tensor win, wout, conv, proj;

  at::Tensor chunk_targets(const at::Tensor& tc) const {  // [C, D] -> [C, D]
    const int64_t k = c.conv_kernel, a = c.lookahead();
    at::Tensor in = at::constant_pad_nd(tc.t().unsqueeze(0), {k - 1 - a, a});  // [1, D, C + k - 1]
    at::Tensor v = at::conv1d(in, conv, at::Tensor(), at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1}, c.dim)
                       .squeeze(0)
                       .t();
    return c.use_proj ? at::mm(v, proj) : v;
  }
  // y [B, T, D]; *w_final: row 0's W after every complete chunk.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, at::Tensor* w_final = nullptr) const {
    const int64_t B = x.size(0), T = x.size(1), C = c.chunk_size, H = c.hidden;
    std::vector<at::Tensor> rows;
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor W = wout;
      std::vector<at::Tensor> ys;
      for (int64_t s = 0; s < T; s += C) {
        const int64_t len = std::min(C, T - s);
        at::Tensor xc = x[b].narrow(0, s, len), tc = t[b].narrow(0, s, len);
        at::Tensor h = at::silu(at::mm(xc, win.narrow(0, 0, H).t())) * at::mm(xc, win.narrow(0, H, H).t());
        ys.push_back(at::mm(h, W.t()));
        if (len == C) W = W + c.lr * at::mm(chunk_targets(tc).t(), h);
      }
      if (b == 0 && w_final) *w_final = W;
      rows.push_back(at::cat(ys, 0));
    }
    return at::stack(rows, 0);
  }
};

Slow make_slow(const InPlaceConfig& c, std::map<std::string, at::Tensor> w) {
  Slow s{c, w["gating.linear_in.weight"], w["gating.linear_out.weight"], w["ttt_conv.weight"], {}};
  if (c.use_proj) s.proj = w["ttt_proj.weight"];
  return s;
}

at::Tensor rnd(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randn(shape, g, at::TensorOptions().dtype(at::kDouble));
}

// Writes a case folder in the reference layout with outputs from the slow float64 loop.
void write_case(const std::string& dir, const InPlaceConfig& c, int64_t B, int64_t T, uint64_t seed) {
  auto w = random_weights(c, seed);
  at::Tensor x = rnd({B, T, c.dim}, seed + 1), t = rnd({B, T, c.dim}, seed + 2), g = rnd({B, T, c.dim}, seed + 3);
  std::map<std::string, at::Tensor> leaves = w;
  for (auto& [n, v] : leaves) v = v.clone().requires_grad_(true);
  at::Tensor xl = x.clone().requires_grad_(true), tl = t.clone().requires_grad_(true);
  Slow s = make_slow(c, leaves);
  at::Tensor wf;
  at::Tensor y = s.forward(xl, tl, &wf);
  (y * g).sum().backward();
  std::map<std::string, at::Tensor> out;
  out["y"] = y.detach();
  auto grad_or_zero = [](const at::Tensor& v) { return v.grad().defined() ? v.grad() : at::zeros_like(v); };
  out["grad.x"] = grad_or_zero(xl);
  out["grad.t"] = grad_or_zero(tl);  // a sequence of one chunk never reads its targets
  for (auto& [n, v] : leaves) out["grad." + n] = grad_or_zero(v);
  out["y_stream"] = y.detach().narrow(0, 0, 1);  // the layout's promise: row 0 decoded equals y[0]
  out["w_final"] = wf.detach();
  auto f32 = [](std::map<std::string, at::Tensor> m) {
    for (auto& [n, v] : m) v = v.to(at::kFloat).contiguous();
    return m;
  };
  std::filesystem::create_directories(dir);
  io::save(dir + "/weights.safetensors", f32(w));
  io::save(dir + "/inputs.safetensors", f32({{"x", x}, {"t", t}, {"grad_out", g}}));
  io::save(dir + "/outputs.safetensors", f32(out));
  nlohmann::json j = {{"dim", c.dim},
                      {"hidden", c.hidden},
                      {"chunk", c.chunk_size},
                      {"lr", c.lr},
                      {"use_proj", c.use_proj},
                      {"activation", "silu"},
                      {"conv_kernel", c.conv_kernel},
                      {"conv_lookahead", c.conv_lookahead}};
  std::ofstream(dir + "/config.json") << j.dump(1);
}

}  // namespace

TEST(InPlace, OfficialReferenceCasePasses) {
  ref::register_builtin_kinds();
  const std::string dir = test::reference_dir() + "/inplace/inplace_small";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no reference case at " << dir;
  ASSERT_EQ(ref::detect_kind(dir), "inplace");
  ref::CaseResult r = ref::run_case(dir, {});
  ASSERT_FALSE(r.skipped);
  std::vector<std::string> names;
  for (const auto& c : r.checks) {
    EXPECT_TRUE(c.pass) << c.name << ": max err " << c.max_abs_err << " ratio " << c.worst_ratio << " " << c.note;
    names.push_back(c.name);
  }
  for (const char* n : {"y", "grad.x", "grad.t", "grad.gating.linear_in.weight", "grad.gating.linear_out.weight",
                        "grad.ttt_conv.weight", "grad.ttt_proj.weight", "y_stream", "w_final"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n << " not compared";
}

// Unseen cases of the same layout (other chunk sizes, T not a multiple of the chunk, no projection,
// batch > 1, another conv kernel/look-ahead): made by the slow loop, run through check-reference.
TEST(InPlace, UnseenCasesPassCheckReference) {
  ref::register_builtin_kinds();
  test::TempDir tmp;
  struct Case {
    const char* name;
    InPlaceConfig c;
    int64_t B, T;
  };
  const std::vector<Case> cases = {
      {"c3_t10_proj_b2", small_cfg(6, 10, 3, true), 2, 10},
      {"c5_t5_noproj_b1", small_cfg(5, 7, 5, false), 1, 5},  // one chunk: W0 only
      {"c2_t9_proj_b3_k3", small_cfg(4, 9, 2, true, 3, 1), 3, 9},
      {"c4_t16_noproj_b2", small_cfg(8, 12, 4, false), 2, 16},  // T a multiple of the chunk
      {"c6_t23_proj_b2_causal", small_cfg(5, 8, 6, true, 4, 0), 2, 23},
      {"c1_t5_proj_b2", small_cfg(3, 4, 1, true), 2, 5},  // chunk of one token
  };
  uint64_t seed = 100;
  for (const auto& k : cases) {
    const std::string dir = tmp.file(k.name);
    write_case(dir, k.c, k.B, k.T, seed += 10);
    ASSERT_EQ(ref::detect_kind(dir), "inplace");
    ref::CaseResult r = ref::run_case(dir, {});
    for (const auto& c : r.checks)
      EXPECT_TRUE(c.pass) << k.name << " " << c.name << ": max err " << c.max_abs_err << " ratio " << c.worst_ratio
                          << " " << c.note;
    EXPECT_GE(r.checks.size(), 8u) << k.name;
  }
}

// The module in float64 equals the slow loop to rounding, for every strategy, output and gradient.
TEST(InPlace, Float64MatchesSlowLoopEveryStrategy) {
  for (auto strat : {InPlaceStrategy::kLinearAttention, InPlaceStrategy::kRunning, InPlaceStrategy::kMaterialized}) {
    for (bool proj : {true, false}) {
      InPlaceConfig c = small_cfg(6, 11, 4, proj);
      c.strategy = strat;
      auto w = random_weights(c, 7);
      InPlaceFFN m = make_module(c, w, at::kDouble);
      at::Tensor x = rnd({3, 18, 6}, 8).requires_grad_(true), t = rnd({3, 18, 6}, 9).requires_grad_(true);
      at::Tensor x2 = x.detach().clone().requires_grad_(true), t2 = t.detach().clone().requires_grad_(true);
      at::Tensor g = rnd({3, 18, 6}, 10);
      std::map<std::string, at::Tensor> leaves = w;
      for (auto& [n, v] : leaves) v = v.clone().requires_grad_(true);
      at::Tensor ys = make_slow(c, leaves).forward(x2, t2);
      at::Tensor y = m->forward(x, t);
      EXPECT_LT(test::max_abs_diff(y, ys), 1e-12) << strategy_name(strat);
      (y * g).sum().backward();
      (ys * g).sum().backward();
      EXPECT_LT(test::max_abs_diff(x.grad(), x2.grad()), 1e-12) << strategy_name(strat);
      EXPECT_LT(test::max_abs_diff(t.grad(), t2.grad()), 1e-12) << strategy_name(strat);
      for (const auto& kv : m->named_parameters())
        EXPECT_LT(test::max_abs_diff(kv.value().grad(), leaves[kv.key()].grad()), 1e-12)
            << strategy_name(strat) << " " << kv.key();
    }
  }
}

// Finite differences in float64 for x, t and every weight (central differences, eps 1e-6).
TEST(InPlace, GradientsMatchFiniteDifferences) {
  InPlaceConfig c = small_cfg(3, 4, 2, true);
  InPlaceFFN m = make_module(c, random_weights(c, 21), at::kDouble);
  at::Tensor x = rnd({2, 5, 3}, 22).requires_grad_(true), t = rnd({2, 5, 3}, 23).requires_grad_(true);
  at::Tensor g = rnd({2, 5, 3}, 24);
  (m->forward(x, t) * g).sum().backward();
  std::vector<std::pair<std::string, at::Tensor>> leaves = {{"x", x}, {"t", t}};
  for (const auto& kv : m->named_parameters()) leaves.emplace_back(kv.key(), kv.value());
  const double eps = 1e-6;
  for (auto& [name, leaf] : leaves) {
    ASSERT_TRUE(leaf.grad().defined()) << name;
    at::Tensor flat = leaf.detach().view({-1}), grad = leaf.grad().reshape({-1});
    double worst = 0;
    for (int64_t i = 0; i < flat.numel(); ++i) {
      at::NoGradGuard ng;
      const double orig = flat[i].item<double>();
      flat[i] = orig + eps;
      const double lp = (m->forward(x, t) * g).sum().item<double>();
      flat[i] = orig - eps;
      const double lm = (m->forward(x, t) * g).sum().item<double>();
      flat[i] = orig;
      const double fd = (lp - lm) / (2 * eps), an = grad[i].item<double>();
      worst = std::max(worst, std::abs(fd - an) / (1 + std::abs(an)));
    }
    EXPECT_LT(worst, 1e-7) << name;
  }
}

// Concatenated steps of any sizes equal the whole-sequence forward, and the state's weight equals the
// slow loop's W after the complete chunks.
TEST(InPlace, StreamingAnyStepSizesEqualsForward) {
  for (bool proj : {true, false}) {
    InPlaceConfig c = small_cfg(6, 10, 4, proj);
    auto w = random_weights(c, 31);
    InPlaceFFN m = make_module(c, w, at::kDouble);
    const int64_t B = 2, T = 45;
    at::Tensor x = rnd({B, T, 6}, 32), t = rnd({B, T, 6}, 33);
    at::Tensor want = m->forward(x, t);
    at::Tensor wf;
    make_slow(c, w).forward(x, t, &wf);
    for (std::vector<int64_t> sizes :
         std::vector<std::vector<int64_t>>{{1}, {3}, {7}, {16}, {1, 3, 7, 16}, {5, 2, 9}}) {
      at::NoGradGuard ng;
      InPlaceState st = m->make_state(B);
      std::vector<at::Tensor> ys;
      for (int64_t off = 0, i = 0; off < T; ++i) {
        int64_t s = std::min(sizes[i % sizes.size()], T - off);
        ys.push_back(m->step(x.narrow(1, off, s), t.narrow(1, off, s), st));
        off += s;
      }
      EXPECT_LT(test::max_abs_diff(at::cat(ys, 1), want), 1e-12) << "sizes[0]=" << sizes[0] << " proj=" << proj;
      EXPECT_LT(test::max_abs_diff(st.w_final(0), wf), 1e-12);
      EXPECT_EQ(st.pos[0], T % c.chunk_size);
      EXPECT_EQ(st.tokens, T);
    }
  }
}

// Same in float32 under InferenceMode (the decoding path writes the state in place there).
TEST(InPlace, StreamingFloat32InferenceMode) {
  InPlaceConfig c = small_cfg(8, 12, 5, true);
  InPlaceFFN m = make_module(c, random_weights(c, 41), at::kFloat);
  at::Tensor x = rnd({2, 33, 8}, 42).to(at::kFloat), t = rnd({2, 33, 8}, 43).to(at::kFloat);
  at::Tensor want = m->forward(x, t).detach();
  at::InferenceMode im;
  InPlaceState st = m->make_state(2);
  std::vector<at::Tensor> ys;
  for (int64_t i = 0; i < 33; ++i) ys.push_back(m->step(x.narrow(1, i, 1), t.narrow(1, i, 1), st));
  EXPECT_LT(test::max_abs_diff(at::cat(ys, 1), want), 1e-5);
  EXPECT_EQ(st.dw.scalar_type(), at::kFloat);
}

// A per-slot reset starts that slot's chunking afresh; the other slot goes on. Steps of mixed sizes
// then cross the two slots' different chunk boundaries.
TEST(InPlace, PerSlotResetStartsThatSlotAfresh) {
  InPlaceConfig c = small_cfg(5, 9, 4, true);
  InPlaceFFN m = make_module(c, random_weights(c, 51), at::kDouble);
  const int64_t T = 40, r = 13;
  at::Tensor x = rnd({2, T, 5}, 52), t = rnd({2, T, 5}, 53);
  for (bool grad : {false, true}) {
    at::AutoGradMode gm(grad);
    InPlaceState st = m->make_state(2);
    std::vector<at::Tensor> ys;
    int64_t off = 0;
    const std::vector<int64_t> sizes = {2, 5, 3, 1, 7, 6, 9};
    for (int64_t i = 0; off < T; ++i) {
      int64_t s = std::min(sizes[i % sizes.size()], T - off);
      if (off < r && off + s > r) s = r - off;  // stop exactly at the reset point
      if (off == r) st.reset(at::tensor({0, 1}).to(at::kBool));
      ys.push_back(m->step(x.narrow(1, off, s), t.narrow(1, off, s), st));
      off += s;
    }
    at::Tensor y = at::cat(ys, 1);
    at::NoGradGuard ng;
    EXPECT_LT(test::max_abs_diff(y[0], m->forward(x.narrow(0, 0, 1), t.narrow(0, 0, 1))[0]), 1e-12) << grad;
    at::Tensor y1a = m->forward(x.narrow(0, 1, 1).narrow(1, 0, r), t.narrow(0, 1, 1).narrow(1, 0, r))[0];
    at::Tensor y1b = m->forward(x.narrow(0, 1, 1).narrow(1, r, T - r), t.narrow(0, 1, 1).narrow(1, r, T - r))[0];
    EXPECT_LT(test::max_abs_diff(y[1], at::cat({y1a, y1b}, 0)), 1e-12) << grad;
    EXPECT_EQ(st.pos[0], T % 4);
    EXPECT_EQ(st.pos[1], (T - r) % 4);
  }
}

// Training through step() (grad mode, out-of-place state updates) with detach between segments gives
// the gradients of the whole-sequence forward for the last segment's loss w.r.t. that segment's inputs,
// and the full gradient when nothing is detached.
TEST(InPlace, StepIsDifferentiableLikeForward) {
  InPlaceConfig c = small_cfg(5, 8, 4, true);
  InPlaceFFN m = make_module(c, random_weights(c, 61), at::kDouble);
  at::Tensor x = rnd({2, 22, 5}, 62).requires_grad_(true), t = rnd({2, 22, 5}, 63).requires_grad_(true);
  at::Tensor g = rnd({2, 22, 5}, 64);
  (m->forward(x, t) * g).sum().backward();
  at::Tensor gx = x.grad().clone(), gt = t.grad().clone();
  std::map<std::string, at::Tensor> gw;
  for (const auto& kv : m->named_parameters()) gw[kv.key()] = kv.value().grad().clone();
  x.mutable_grad().reset();
  t.mutable_grad().reset();
  m->zero_grad();
  InPlaceState st = m->make_state(2);
  std::vector<at::Tensor> ys;
  int64_t off = 0;
  for (int64_t s : {3, 6, 1, 9, 3}) {
    ys.push_back(m->step(x.narrow(1, off, s), t.narrow(1, off, s), st));
    off += s;
  }
  (at::cat(ys, 1) * g).sum().backward();
  EXPECT_LT(test::max_abs_diff(x.grad(), gx), 1e-12);
  EXPECT_LT(test::max_abs_diff(t.grad(), gt), 1e-12);
  for (const auto& kv : m->named_parameters())
    EXPECT_LT(test::max_abs_diff(kv.value().grad(), gw[kv.key()]), 1e-12) << kv.key();
  st.detach();
  EXPECT_FALSE(st.dw.requires_grad());
}

// bf16 parameters: the fast-weight sum still runs in float32 and the output stays close to float32.
TEST(InPlace, LowPrecisionParamsAccumulateInFloat32) {
  InPlaceConfig c = small_cfg(16, 24, 4, true);
  auto w = random_weights(c, 71);
  InPlaceFFN m32 = make_module(c, w, at::kFloat), m16 = make_module(c, w, at::kBFloat16);
  EXPECT_EQ(m16->acc_dtype(), at::kFloat);
  at::Tensor x = rnd({1, 20, 16}, 72), t = rnd({1, 20, 16}, 73);
  at::NoGradGuard ng;
  at::Tensor y32 = m32->forward(x.to(at::kFloat), t.to(at::kFloat));
  at::Tensor y16 = m16->forward(x.to(at::kBFloat16), t.to(at::kBFloat16));
  EXPECT_EQ(y16.scalar_type(), at::kBFloat16);
  EXPECT_LT(test::max_abs_diff(y16, y32), 0.05 * y32.abs().max().item<double>());
  InPlaceState s16 = m16->make_state(1), s32 = m32->make_state(1);
  EXPECT_EQ(s16.dw.scalar_type(), at::kFloat);
  m16->step(x.to(at::kBFloat16), t.to(at::kBFloat16), s16);
  m32->step(x.to(at::kFloat), t.to(at::kFloat), s32);
  EXPECT_LT(test::max_abs_diff(s16.dw, s32.dw), 0.05 * s32.dw.abs().max().item<double>());
}

TEST(InPlace, StrictLoadNamesTheTensor) {
  InPlaceConfig c = small_cfg(4, 6, 2, true);
  auto w = random_weights(c, 81);
  InPlaceFFN m(c);
  auto expect_error = [&](std::map<std::string, at::Tensor> ws, std::vector<std::string> parts) {
    try {
      m->load(ws);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  auto missing = w;
  missing.erase("ttt_proj.weight");
  expect_error(missing, {"missing", "ttt_proj.weight", "[4, 4]"});
  auto extra = w;
  extra["ttt_bias"] = at::zeros({4});
  expect_error(extra, {"unexpected", "ttt_bias", "[4]"});
  auto bad = w;
  bad["ttt_conv.weight"] = at::zeros({4, 1, 3});
  expect_error(bad, {"ttt_conv.weight", "expected shape [4, 1, 5]", "got [4, 1, 3]"});
  InPlaceFFN noproj(small_cfg(4, 6, 2, false));
  try {
    noproj->load(w);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ttt_proj.weight"), std::string::npos);
  }
  m->load(w);
  EXPECT_EQ(m->names().size(), 4u);
}

TEST(InPlace, ConfigAndInputErrors) {
  InPlaceConfig c = small_cfg(4, 6, 0, true);
  EXPECT_THROW(InPlaceFFN{c}, Error);
  c = small_cfg(4, 6, 2, true, 5, 7);
  EXPECT_THROW(InPlaceFFN{c}, Error);
  c = small_cfg(4, 6, 2, true);
  c.activation = "nope";
  EXPECT_THROW(InPlaceFFN{c}, Error);
  InPlaceFFN m(small_cfg(4, 6, 2, true));
  EXPECT_THROW(m->forward(at::zeros({1, 3, 5}), at::zeros({1, 3, 5})), Error);
  EXPECT_THROW(m->forward(at::zeros({1, 3, 4}), at::zeros({1, 2, 4})), Error);
  InPlaceState st = m->make_state(2);
  EXPECT_THROW(m->step(at::zeros({1, 1, 4}), at::zeros({1, 1, 4}), st), Error);
  EXPECT_THROW(st.reset(at::ones({1}, at::kBool)), Error);
  EXPECT_THROW(parse_strategy("fast"), Error);
}

// Reference init: zero conv, diagonal projection; the output equals the plain FFN at init.
TEST(InPlace, ReferenceInitIsThePlainFFN) {
  InPlaceFFN m(small_cfg(6, 10, 3, true));
  m->init_weights(5);
  EXPECT_EQ(m->conv_weight.abs().max().item<double>(), 0.0);
  at::Tensor off = m->proj_weight - at::diag(m->proj_weight.diagonal());
  EXPECT_EQ(off.abs().max().item<double>(), 0.0);
  EXPECT_GT(m->proj_weight.diagonal().abs().max().item<double>(), 0.0);
  at::NoGradGuard ng;
  at::Tensor x = at::randn({1, 10, 6}), t = at::randn({1, 10, 6});
  EXPECT_LT(test::max_abs_diff(m->forward(x, t), at::linear(m->hidden_act(x), m->gating->linear_out->weight)), 1e-7);
}

// The default strategy holds far less than the official form's per-chunk D×H updates.
TEST(InPlace, LinearAttentionHoldsLessMemoryThanMaterialized) {
  auto peak = [](InPlaceStrategy s) {
    InPlaceConfig c = small_cfg(64, 192, 16, true);
    c.strategy = s;
    InPlaceFFN m(c);
    at::Tensor x = at::randn({1, 256, 64}, at::requires_grad()), t = at::randn({1, 256, 64}, at::requires_grad());
    PeakMemory pm;
    (m->forward(x, t) * 1.0).sum().backward();
    return pm.peak();
  };
  const int64_t la = peak(InPlaceStrategy::kLinearAttention), mat = peak(InPlaceStrategy::kMaterialized);
  EXPECT_GT(la, 0);
  // 15 chunk updates of 64x192 floats = 737 kB per copy; the scores are 256²/2 floats = 131 kB.
  EXPECT_LT(la * 2, mat) << "linear attention " << la << " B, materialized " << mat << " B";
}
