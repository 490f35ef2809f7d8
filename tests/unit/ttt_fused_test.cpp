// The hand-fused TTT-Linear scan (src/ttt/ttt_linear_kernel.*) against the tensor-op scan on the same
// float32 inputs: whole sequences with remainders, streamed chunks that start inside a mini-batch (live
// gradient sums), head widths that exercise every vector block and tail, checkpoint groups under
// autograd (the fused forward fills the saved states the backward starts from), and the cases that
// must keep the tensor path.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <tuple>

#include "test_util.h"
#include "ttt/ttt_layer.h"
#include "unit/ttt_test_util.h"
#include "util/error.h"
#include "util/fused.h"

using mt::test::max_abs_diff;
using namespace mt::ttt;

namespace {

struct TensorPath {  // runs a scope on the tensor-op scan
  TensorPath() { mt::util::set_fused_kernels_enabled(false); }
  ~TensorPath() { mt::util::set_fused_kernels_enabled(true); }
};

// Relative difference: float32 arithmetic in another order, scaled by the larger magnitude.
double rel(const at::Tensor& a, const at::Tensor& b) {
  return max_abs_diff(a, b) / std::max(1.0, b.abs().max().item<double>());
}

at::Tensor stream(const TTTLayer& layer, const at::Tensor& x, int64_t chunk, TTTState& st) {
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < x.size(1); t += chunk) ys.push_back(layer.step(x.narrow(1, t, std::min(chunk, x.size(1) - t)), st));
  return at::cat(ys, 1);
}

}  // namespace

TEST(TttFused, LinearScanEqualsTheTensorPath) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  // Head widths 4 (scalar tail only), 40 (a 32-block and an 8-block), 64 (two 32-blocks, as 768 / 12).
  for (int64_t f : {4, 40, 64}) {
    for (bool gate : {false, true}) {
      auto cfg = mt::test::small_config("linear", 2 * f, 2, 16);
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

TEST(TttFused, CheckpointedGradientsEqualTheTensorPath) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  auto cfg = mt::test::small_config("linear", 80, 2, 8);
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

TEST(TttFused, ProbesEqualTheTensorPathAndChangeNoOutputBit) {
  if (!mt::util::cpu_has_avx2_fma()) GTEST_SKIP() << "the fused kernel needs AVX2 + FMA";
  const auto layer = mt::test::perturbed_layer(mt::test::small_config("linear", 80, 2, 8), 4, at::kFloat);
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
    for (auto [f, g, name] : {std::tuple{&l0, &g0, "l0"}, std::tuple{&lp, &gp, "lprev"}, std::tuple{&la, &ga, "lafter"}}) {
      const at::Tensor pf = at::cat(*f, 2), pg = at::cat(*g, 2);
      EXPECT_TRUE(pf.isfinite().all().item<bool>()) << name;
      EXPECT_LT(rel(pf, pg), 2e-5) << name;
    }
  }
}

TEST(TttFused, Float64AndMlpKeepTheTensorPath) {
  // The kernel serves float32 TTT-Linear only; elsewhere the switch must change nothing.
  auto same = [](const TTTLayer& layer, const at::Tensor& x) {
    at::NoGradGuard ng;
    TTTState a(1), b(1);
    const at::Tensor ya = layer.forward(x, a);
    TensorPath tp;
    return at::equal(ya, layer.forward(x, b));
  };
  const at::Tensor x32 = at::randn({1, 20, 16}, at::detail::createCPUGenerator(3));
  EXPECT_TRUE(same(mt::test::perturbed_layer(mt::test::small_config("linear"), 1, at::kDouble), x32.to(at::kDouble)));
  EXPECT_TRUE(same(mt::test::perturbed_layer(mt::test::small_config("mlp"), 1, at::kFloat), x32));
  if (mt::util::cpu_has_avx2_fma())
    EXPECT_FALSE(same(mt::test::perturbed_layer(mt::test::small_config("linear"), 1, at::kFloat), x32))
        << "float32 TTT-Linear should take the fused kernel (a different summation order)";
}
