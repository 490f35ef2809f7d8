// Deep TTT-MLP (issue 11, part 1): an inner MLP of n >= 2 layers. The scan's dual form is checked
// against a token-by-token primal form written here independently: per token, the inner loss is
// differentiated by autograd at the mini-batch start weights of every layer (no closed-form
// gradients), the running sum of lr-weighted gradients gives that token's weights, and the output
// uses them. Pitfalls.md row 4 (the update applied twice) is shown to be caught.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <vector>

#include "test_util.h"
#include "ttt/ttt_layer.h"
#include "ttt/ttt_scan.h"
#include "unit/ttt_test_util.h"
#include "util/pitfall_switch.h"

using namespace mt;
using mt::ttt::detail::ScanInputs;
using mt::ttt::detail::ScanOutputs;
using mt::ttt::detail::ScanSpec;

namespace {

constexpr double kEps = 1e-6;
// Tolerance of dual vs primal in float64: the closed-form GELU derivative uses the reference's
// rounded constant 0.79788456 for sqrt(2/pi) (8e-10 relative), while the primal form differentiates
// at::gelu exactly; across a few layers and LayerNorms that is ~1e-10 on outputs of size ~1.
constexpr double kTol = 1e-9;

// Random scan inputs in float64 for N streams of L tokens, head width f, inner widths f->4f->..->f.

at::Tensor inner_model(const at::Tensor& xa, const std::vector<at::Tensor>& W) {
  at::Tensor z;
  for (size_t l = 0; l < W.size(); ++l) {
    auto inp = l == 0 ? xa : at::cat({at::gelu(z, "tanh"), at::ones({z.size(0), 1}, z.options())}, -1);
    z = at::mm(inp, W[l]);
  }
  return z;
}

struct Primal {
  at::Tensor out;                 // [N, L, f]
  std::vector<at::Tensor> W_end;  // per layer [N, ...]: the weights the last token used
};

// Token-by-token primal form, starting at in-mini-batch offset s0 with pending sums in.G.
Primal primal(const ScanInputs& in, int64_t K, int64_t s0) {
  const int64_t N = in.XV.size(0), L = in.XV.size(1), f = in.XV.size(2);
  const size_t nl = in.W.size();
  Primal p;
  p.out = at::zeros_like(in.XV);
  p.W_end.resize(nl);
  for (int64_t s = 0; s < N; ++s) {
    std::vector<at::Tensor> W0(nl), acc(nl), Wt(nl);
    for (size_t l = 0; l < nl; ++l) {
      W0[l] = in.W[l][s].clone();
      acc[l] = in.G[l][s].clone();
    }
    auto lnw = in.lnw[s][0], lnb = in.lnb[s][0];
    for (int64_t t = 0; t < L; ++t) {
      const int64_t i = (s0 + t) % K;
      if (i == 0 && t > 0)
        for (size_t l = 0; l < nl; ++l) acc[l].zero_();
      auto xk = in.XKa[s][t].unsqueeze(0);
      auto target = in.XV[s][t].unsqueeze(0) - xk.narrow(1, 0, f);
      std::vector<at::Tensor> leaves;
      for (size_t l = 0; l < nl; ++l) leaves.push_back(W0[l].detach().requires_grad_(true));
      at::Tensor loss;
      {
        at::AutoGradMode on(true);
        auto z = inner_model(xk, leaves);
        loss = (at::layer_norm(z, {f}, lnw, lnb, kEps) - target).square().sum() * 0.5;
      }
      auto grads = torch::autograd::grad({loss}, leaves);
      const double lr = in.lr[s][t].item<double>(), tk = in.tok[t].item<double>();
      for (size_t l = 0; l < nl; ++l) {
        acc[l] = acc[l] + lr * grads[l];
        Wt[l] = W0[l] - tk * acc[l];
      }
      auto zq = inner_model(in.XQa[s][t].unsqueeze(0), Wt);
      p.out[s][t].copy_(in.XQa[s][t].narrow(0, 0, f) + at::layer_norm(zq, {f}, lnw, lnb, kEps).squeeze(0));
      if (i == K - 1) W0 = Wt;  // the mini-batch's last token's weights start the next one
    }
    for (size_t l = 0; l < nl; ++l) {
      if (!p.W_end[l].defined()) p.W_end[l] = at::zeros_like(in.W[l]);
      p.W_end[l][s].copy_(Wt[l]);
    }
  }
  return p;
}

// Largest difference of the scan against the primal form: outputs and the last token's weights.
double dual_vs_primal(const ScanInputs& in, int64_t K, int64_t s0) {
  ScanSpec sp;
  sp.layers = static_cast<int64_t>(in.W.size());
  sp.K = K;
  sp.s0 = s0;
  at::NoGradGuard ng;
  ScanOutputs o = ttt::detail::scan(sp, in);
  Primal p = primal(in, K, s0);
  double d = test::max_abs_diff(o.out, p.out);
  const int64_t L = in.XV.size(1);
  auto tl = in.tok[L - 1];
  for (size_t l = 0; l < in.W.size(); ++l) d = std::max(d, test::max_abs_diff(o.W[l] - tl * o.G[l], p.W_end[l]));
  return d;
}

class DeepMlp : public ::testing::TestWithParam<int64_t> {};

TEST_P(DeepMlp, DualFormEqualsTokenByTokenPrimalForm) {
  const int64_t layers = GetParam(), K = 4;
  // 10 tokens: two full mini-batches and a remainder; a call starting mid-mini-batch with live sums.
  auto in = test::random_scan_inputs(3, 10, 4, layers, K, 500 + layers);
  EXPECT_LT(dual_vs_primal(in, K, 0), kTol);

  // Second call: tokens 0..2 first, then the rest from offset 3 with the pending sums.
  ScanSpec sp;
  sp.layers = layers;
  sp.K = K;
  at::NoGradGuard ng;
  auto first3 = [](const at::Tensor& t) { return t.narrow(t.dim() == 1 ? 0 : 1, 0, 3).contiguous(); };
  auto head = ttt::detail::scan(
      sp, {first3(in.XQa), first3(in.XKa), first3(in.XV), first3(in.lr), first3(in.tok), in.lnw, in.lnb, in.W, in.G});
  ScanInputs tail{in.XQa.narrow(1, 3, 7).contiguous(),
                  in.XKa.narrow(1, 3, 7).contiguous(),
                  in.XV.narrow(1, 3, 7).contiguous(),
                  in.lr.narrow(1, 3, 7).contiguous(),
                  in.tok.narrow(0, 3, 7).contiguous(),
                  in.lnw,
                  in.lnb,
                  head.W,
                  head.G};
  auto p_all = primal(in, K, 0);
  sp.s0 = 3;
  auto o_tail = ttt::detail::scan(sp, tail);
  EXPECT_LT(test::max_abs_diff(at::cat({head.out, o_tail.out}, 1), p_all.out), kTol);
}

INSTANTIATE_TEST_SUITE_P(Ttt, DeepMlp, ::testing::Values(2, 3, 5, 10),
                         [](const auto& i) { return "layers" + std::to_string(i.param); });

TEST(DeepMlp, ParametersAndStateHaveOneEntryPerInnerLayer) {
  auto cfg = test::small_config("mlp3", 16, 2, 4);
  std::vector<std::string> inner;
  for (const auto& [n, shape] : ttt::TTTLayer::expected_parameters(cfg))
    if (n.size() == 2 && (n[0] == 'W' || n[0] == 'b')) inner.push_back(n + mt::shape_str(shape));
  const std::vector<std::string> want{"W1[2, 8, 32]", "b1[2, 1, 32]", "W2[2, 32, 32]",
                                      "b2[2, 1, 32]", "W3[2, 32, 8]", "b3[2, 1, 8]"};
  EXPECT_EQ(inner, want);

  auto layer = test::perturbed_layer(cfg, 3);
  ttt::TTTState st(1);
  ttt::TTTProbes pr;
  at::NoGradGuard ng;
  layer.forward(at::randn({1, 6, 16}, at::kDouble), st, &pr);
  ASSERT_EQ(st.W.size(), 3u);
  EXPECT_EQ(pr.w_delta_norm_per_layer.sizes().vec(), (std::vector<int64_t>{1, 3}));
  // The per-layer changes make up the total, and every layer of the inner model moved.
  EXPECT_NEAR(pr.w_delta_norm_per_layer.square().sum().item<double>(), pr.w_delta_norm.square().sum().item<double>(),
              1e-6 * pr.w_delta_norm.square().sum().item<double>());
  for (int64_t l = 0; l < 3; ++l) EXPECT_GT(pr.w_delta_norm_per_layer[0][l].item<double>(), 0.0) << "inner layer " << l;

  // A 2-layer checkpoint does not load into a 3-layer config: the missing tensor is named.
  auto two = test::perturbed_layer(test::small_config("mlp", 16, 2, 4), 3);
  std::map<std::string, at::Tensor> m;
  for (const auto& [n, t] : two.named_parameters()) m[n] = t.detach();
  test::expect_error([&] { layer.load(m); }, {"'W2' has shape"});

  auto bad = cfg;
  bad.ttt_mlp_layers = 1;
  test::expect_error([&] { bad.validate(); }, {"ttt_mlp_layers must be in [2, 64]"});
}

}  // namespace

// Row 4: the multi-layer TTT-MLP computed its output with already-updated weights and subtracted the
// update again. The dual form equals the token-by-token primal form for 2, 3 and 5 inner layers;
// with the update applied twice in the layers after the first, the same comparison fails.
TEST(Pitfalls, Row04_DeepMlpAppliesEachUpdateOnceDualEqualsPrimal) {
  for (int64_t layers : {2, 3, 5}) {
    auto in = test::random_scan_inputs(2, 9, 4, layers, 4, 700 + layers);
    EXPECT_LT(dual_vs_primal(in, 4, 0), kTol) << layers << " layers";
    pitfall::Reintroduce broken(4);
    EXPECT_GT(dual_vs_primal(in, 4, 0), 1e-3) << layers << " layers: the check must catch a twice-applied update";
  }
}
