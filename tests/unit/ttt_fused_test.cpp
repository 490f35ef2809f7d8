// The hand-fused TTT scan (src/ttt/ttt_scan_kernel.*) against the tensor-op scan
// on the same float32 inputs, for TTT-Linear and TTT-MLP of 2 and 3 inner layers: whole sequences with remainders,
// streamed chunks that start inside a mini-batch (live gradient sums), head widths that exercise every vector block and
// tail, checkpoint groups under autograd (the fused forward fills the saved states the backward starts from), and the
// cases that must keep the tensor path.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <cstdio>
#include <tuple>

#include "test_util.h"
#include "ttt/ttt_layer.h"
#include "ttt/ttt_scan.h"
#include "unit/ttt_test_util.h"
#include "util/error.h"
#include "util/fused.h"
#include "util/simd.h"

using mt::test::max_abs_diff;
using namespace mt::ttt;

namespace {

using TensorPath = mt::util::FusedKernelsOff;  // runs a scope on the tensor-op scan

// Relative difference: float32 arithmetic in another order, scaled by the larger magnitude.
double rel(const at::Tensor& a, const at::Tensor& b) {
  return max_abs_diff(a, b) / std::max(1.0, b.abs().max().item<double>());
}

at::Tensor stream(const TTTLayer& layer, const at::Tensor& x, int64_t chunk, TTTState& st) {
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < x.size(1); t += chunk)
    ys.push_back(layer.step(x.narrow(1, t, std::min(chunk, x.size(1) - t)), st));
  return at::cat(ys, 1);
}

}  // namespace

class TttFusedTypes : public ::testing::TestWithParam<std::string> {};

TEST_P(TttFusedTypes, ScanEqualsTheTensorPath) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  // Head widths 4 (scalar tails only), 40 (a 32-block and an 8-block), 64 (two 32-blocks, as 768 / 12);
  // TTT-MLP's hidden widths are 4x those.
  for (int64_t f : {4, 40, 64}) {
    for (bool gate : {false, true}) {
      auto cfg = mt::test::small_config(GetParam(), 2 * f, 2, 16);
      cfg.use_gate = gate;
      cfg.share_qk = gate;
      const auto layer = mt::test::perturbed_layer(cfg, 11 + f, at::kFloat);
      at::NoGradGuard ng;
      for (int64_t L : {1, 15, 16, 17, 40}) {
        const at::Tensor x = at::randn({2, L, cfg.hidden_size}, at::detail::createCPUGenerator(L + f));
        SCOPED_TRACE(mt::str("f=", f, " gate=", gate, " L=", L));
        TTTState wf(2), wg(2);
        const at::Tensor yf = layer.forward(x, wf);
        at::Tensor yg;
        {
          TensorPath tp;
          yg = layer.forward(x, wg);
        }
        EXPECT_TRUE(yf.isfinite().all().item<bool>());
        EXPECT_LT(rel(yf, yg), 2e-5);
        EXPECT_LT(rel(wf.W[0], wg.W[0]), 2e-5);
        EXPECT_LT(rel(wf.G[0], wg.G[0]), 2e-5);
        for (int64_t chunk : {1, 3, 16}) {  // chunks that start inside a mini-batch carry a live sum
          TTTState sf(2), sg(2);
          const at::Tensor zf = stream(layer, x, chunk, sf);
          at::Tensor zg;
          {
            TensorPath tp;
            zg = stream(layer, x, chunk, sg);
          }
          EXPECT_LT(rel(zf, zg), 2e-5) << "chunk " << chunk;
          EXPECT_LT(rel(sf.G[0], sg.G[0]), 2e-5) << "chunk " << chunk;
          EXPECT_LT(rel(zf, yf), 2e-5) << "fused streaming vs fused whole, chunk " << chunk;
        }
      }
    }
  }
}

TEST_P(TttFusedTypes, CheckpointedGradientsEqualTheTensorPath) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  auto cfg = mt::test::small_config(GetParam(), 80, 2, 8);
  cfg.scan_checkpoint_group_size = 3;  // 7 mini-batches of 8 in 50 tokens: groups of 3, 3 and 1
  const auto layer = mt::test::perturbed_layer(cfg, 5, at::kFloat);
  const at::Tensor x = at::randn({2, 50, 80}, at::detail::createCPUGenerator(9));
  const at::Tensor gout = at::randn({2, 50, 80}, at::detail::createCPUGenerator(10));
  auto grads = [&]() {
    at::Tensor xg = x.clone().requires_grad_(true);
    TTTState st(2);
    // Chunks of 5 then 45: the second starts inside a mini-batch (a live gradient sum in the state).
    auto y = at::cat({layer.forward(xg.narrow(1, 0, 5), st), layer.forward(xg.narrow(1, 5, 45), st)}, 1);
    std::vector<at::Tensor> wrt{xg};
    for (auto& [n, p] : layer.named_parameters()) wrt.push_back(p);
    auto g = torch::autograd::grad({(y * gout).sum()}, wrt);
    g.push_back(y.detach());
    return g;
  };
  const auto gf = grads();
  std::vector<at::Tensor> gg;
  {
    TensorPath tp;
    gg = grads();
  }
  ASSERT_EQ(gf.size(), gg.size());
  for (size_t i = 0; i < gf.size(); ++i) EXPECT_LT(rel(gf[i], gg[i]), 1e-4) << "gradient " << i;
}

TEST_P(TttFusedTypes, ProbesEqualTheTensorPathAndChangeNoOutputBit) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  const auto layer = mt::test::perturbed_layer(mt::test::small_config(GetParam(), 80, 2, 8), 4, at::kFloat);
  const at::Tensor x = at::randn({2, 37, 80}, at::detail::createCPUGenerator(6));
  at::NoGradGuard ng;
  for (int64_t chunk : {37, 5, 1}) {
    SCOPED_TRACE(mt::str("chunk ", chunk));
    TTTState a(2), b(2), c(2);
    std::vector<at::Tensor> yp, yn, yg, l0, lp, la, g0, gp, ga;
    for (int64_t t = 0; t < 37; t += chunk) {
      const at::Tensor xc = x.narrow(1, t, std::min(chunk, 37 - t));
      TTTProbes pf, pg;
      yp.push_back(layer.forward(xc, a, &pf));
      yn.push_back(layer.forward(xc, b));
      {
        TensorPath tp;
        yg.push_back(layer.forward(xc, c, &pg));
      }
      l0.push_back(pf.l0), lp.push_back(pf.lprev), la.push_back(pf.lafter);
      g0.push_back(pg.l0), gp.push_back(pg.lprev), ga.push_back(pg.lafter);
    }
    EXPECT_TRUE(at::equal(at::cat(yp, 1), at::cat(yn, 1))) << "probes must not change the outputs";
    EXPECT_LT(rel(at::cat(yp, 1), at::cat(yg, 1)), 2e-5);
    for (auto [f, g, name] :
         {std::tuple{&l0, &g0, "l0"}, std::tuple{&lp, &gp, "lprev"}, std::tuple{&la, &ga, "lafter"}}) {
      const at::Tensor pf = at::cat(*f, 2), pg = at::cat(*g, 2);
      EXPECT_TRUE(pf.isfinite().all().item<bool>()) << name;
      EXPECT_LT(rel(pf, pg), 2e-5) << name;
    }
  }
}

// The hand-written backward of the scan (scan_segment_backward) against autograd through the tensor
// path, at the scan's own interface: random inputs in float32, random gradients on the outputs and on
// the state the call leaves, calls that start inside a mini-batch with live sums, checkpoint groups of
// 1, 2 and all, remainders, head widths with vector tails.
TEST_P(TttFusedTypes, HandWrittenBackwardEqualsAutogradThroughTheTensorPath) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  const std::string type = GetParam();
  const int64_t layers = type == "linear" ? 1 : (type == "mlp" ? 2 : 3);
  using mt::ttt::detail::ScanInputs;
  using mt::ttt::detail::ScanSpec;
  double worst = 0;
  for (int64_t f : {4, 40, 64}) {
    for (auto [L, K, s0] :
         {std::tuple<int64_t, int64_t, int64_t>{1, 8, 0}, {5, 8, 3}, {16, 16, 0}, {21, 8, 0}, {40, 16, 5}, {3, 8, 2}}) {
      for (int64_t group : {0, 1, 2}) {
        SCOPED_TRACE(mt::str("f=", f, " L=", L, " K=", K, " s0=", s0, " group=", group));
        at::Generator g = at::detail::createCPUGenerator(f * 1000 + L * 10 + group + 7);  // the gradients' draws
        const int64_t N = 3;
        const ScanInputs in =
            mt::test::random_scan_inputs(N, L, f, layers, K, f * 1000 + L * 10 + group, s0, at::kFloat);
        ScanSpec sp;
        sp.layers = layers;
        sp.K = K;
        sp.s0 = s0;
        sp.group_size = group;
        std::vector<at::Tensor> gys{at::randn({N, L, f}, g)};
        for (int64_t l = 0; l < layers; ++l) {
          gys.push_back(at::randn(in.W[l].sizes(), g));
          gys.push_back(at::randn(in.W[l].sizes(), g));
        }
        auto grads = [&]() {
          ScanInputs v = in;
          std::vector<at::Tensor> wrt{v.XQa, v.XKa, v.XV, v.lr, v.tok, v.lnw, v.lnb};
          for (int64_t l = 0; l < layers; ++l) wrt.insert(wrt.end(), {v.W[l], v.G[l]});
          for (auto& t : wrt) t = t.clone().requires_grad_(true);
          v.XQa = wrt[0], v.XKa = wrt[1], v.XV = wrt[2], v.lr = wrt[3], v.tok = wrt[4], v.lnw = wrt[5], v.lnb = wrt[6];
          for (int64_t l = 0; l < layers; ++l) v.W[l] = wrt[7 + 2 * l], v.G[l] = wrt[8 + 2 * l];
          auto o = mt::ttt::detail::scan(sp, v);
          std::vector<at::Tensor> ys{o.out};
          for (int64_t l = 0; l < layers; ++l) ys.insert(ys.end(), {o.W[l], o.G[l]});
          return torch::autograd::grad(ys, wrt, gys, false, false, true);
        };
        const auto gf = grads();
        std::vector<at::Tensor> gt;
        {
          TensorPath tp;
          gt = grads();
        }
        const char* names[] = {"XQa", "XKa", "XV", "lr", "tok", "lnw", "lnb"};
        for (size_t i = 0; i < gf.size(); ++i) {
          const std::string name = i < 7 ? names[i] : mt::str(i % 2 ? "W" : "G", (i - 7) / 2);
          if (!gt[i].defined()) {  // unused by autograd: the fused gradient must be zero
            ASSERT_TRUE(!gf[i].defined() || gf[i].abs().max().item<double>() == 0) << name;
            continue;
          }
          ASSERT_TRUE(gf[i].defined()) << name;
          ASSERT_TRUE(gf[i].isfinite().all().item<bool>()) << name;
          const double r = rel(gf[i], gt[i]);
          worst = std::max(worst, r);
          EXPECT_LT(r, 2e-4) << name;
        }
      }
    }
  }
  std::printf("worst relative gradient difference, %s: %.2e\n", type.c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(TttFused, TttFusedTypes, ::testing::Values("linear", "mlp", "mlp3"),
                         [](const auto& i) { return i.param; });

TEST(TttFused, Float64KeepsTheTensorPath) {
  // The kernels serve float32; in float64 the switch must change nothing, in float32 it must change the
  // summation order (so the tests above compare two different computations).
  auto same = [](const TTTLayer& layer, const at::Tensor& x) {
    at::NoGradGuard ng;
    TTTState a(1), b(1);
    const at::Tensor ya = layer.forward(x, a);
    TensorPath tp;
    return at::equal(ya, layer.forward(x, b));
  };
  const at::Tensor x32 = at::randn({1, 20, 16}, at::detail::createCPUGenerator(3));
  for (const char* type : {"linear", "mlp"}) {
    EXPECT_TRUE(same(mt::test::perturbed_layer(mt::test::small_config(type), 1, at::kDouble), x32.to(at::kDouble)))
        << type;
    if (mt::util::cpu_has_avx2_fma())
      EXPECT_FALSE(same(mt::test::perturbed_layer(mt::test::small_config(type), 1, at::kFloat), x32)) << type;
  }
}

TEST(TttFused, GeluAndItsDerivativeMatchATenEverywhere) {
  // The kernels' vector tanh (a polynomial exp): against at::gelu(tanh) and the reference's derivative
  // formula in float64, over the range where both saturate, with NaN and infinities passing through.
  at::Tensor x = at::cat({at::linspace(-30, 30, 20001), at::tensor({0.f, -0.f, 1e-7f, -1e-7f, 1e-30f})});
  const int64_t n = x.numel();
  at::Tensor a = at::empty_like(x), da = at::empty_like(x);
  mt::util::simd::gelu_row(x.const_data_ptr<float>(), n, a.mutable_data_ptr<float>(), da.mutable_data_ptr<float>());
  const at::Tensor xd = x.to(at::kDouble);
  const at::Tensor t = at::tanh(xd * (xd.square() * 0.044715 + 1.0) * 0.79788456);
  const at::Tensor dref = xd * 0.5 * (1.0 - t.square()) * (xd.square() * 0.1070322243 + 0.79788456) + (t + 1.0) * 0.5;
  EXPECT_LT(max_abs_diff(a.to(at::kDouble), at::gelu(xd, "tanh")), 3e-6);  // 30 x float32 eps at |x| = 30
  EXPECT_LT((a.to(at::kDouble) - at::gelu(xd, "tanh")).abs().div(xd.abs().clamp_min(1)).max().item<double>(), 2e-7);
  // The derivative in float32: x (1 - t^2) (0.107 x^2 + 0.8) rounds at ~1e-6 near |x| = 4 on any float32 path.
  EXPECT_LT(max_abs_diff(da.to(at::kDouble), dref), 3e-6);
  at::Tensor odd = at::tensor({NAN, INFINITY, -INFINITY, 1.f, 2.f, 3.f, 4.f, 5.f});
  at::Tensor oa = at::empty_like(odd), od = at::empty_like(odd);
  mt::util::simd::gelu_row(odd.const_data_ptr<float>(), 8, oa.mutable_data_ptr<float>(), od.mutable_data_ptr<float>());
  const at::Tensor ref = at::gelu(odd, "tanh");  // NaN, inf, NaN (-inf * 0), as ATen has them
  EXPECT_TRUE(std::isnan(oa[0].item<float>()));
  EXPECT_EQ(oa[1].item<float>(), INFINITY);
  EXPECT_EQ(std::isnan(oa[2].item<float>()), std::isnan(ref[2].item<float>()));
  EXPECT_LT(max_abs_diff(oa.narrow(0, 3, 5), ref.narrow(0, 3, 5)), 1e-6);
}
