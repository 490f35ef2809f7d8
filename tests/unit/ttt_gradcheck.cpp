// Float64 finite differences vs autograd for every parameter and the input. This is where the inner
// scan's custom backward (group recomputation + autograd per thread chunk) is proven.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "test_util.h"
#include "ttt/ttt_layer.h"
#include "unit/ttt_test_util.h"
#include "util/error.h"

using namespace mt::ttt;

namespace {

struct Case {
  std::string type;
  bool gate, share_qk;
  int64_t group_size;
  bool split;  // two chunks, the second starting mid-mini-batch (gradients through the state)
};

class GradCheck : public ::testing::TestWithParam<Case> {};

TEST_P(GradCheck, FiniteDifferencesMatchAutograd) {
  auto c = GetParam();
  // Tiny: C=8, 2 heads of f=4, K=4, L=10 (two full mini-batches and a remainder of 2).
  auto cfg = mt::test::small_config(c.type, 8, 2, 4);
  cfg.use_gate = c.gate;
  cfg.share_qk = c.share_qk;
  cfg.scan_checkpoint_group_size = c.group_size;
  auto layer = mt::test::perturbed_layer(cfg, 31);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(77);
  auto x = at::empty({2, 10, 8}, at::kDouble).normal_(0, 1, gen);
  auto gout = at::empty({2, 10, 8}, at::kDouble).normal_(0, 1, gen);

  auto loss = [&](const at::Tensor& xin) {
    TTTState st(2);
    at::Tensor y;
    if (c.split)
      y = at::cat({layer.forward(xin.narrow(1, 0, 3), st), layer.forward(xin.narrow(1, 3, 7), st)}, 1);
    else
      y = layer.forward(xin, st);
    return (y * gout).sum();
  };

  auto xg = x.clone().requires_grad_(true);
  std::vector<at::Tensor> wrt{xg};
  std::vector<std::string> names{"x"};
  for (auto& [n, p] : layer.named_parameters()) {
    wrt.push_back(p);
    names.push_back(n);
  }
  auto grads = torch::autograd::grad({loss(xg)}, wrt);

  at::NoGradGuard ng;
  const double h = 1e-6;
  for (size_t i = 0; i < wrt.size(); ++i) {
    auto t = i == 0 ? x : wrt[i];
    auto flat = t.view(-1);
    auto g = grads[i].reshape(-1);
    // Check a spread of elements (all of the small tensors, a strided subset of the big ones).
    const int64_t n = flat.numel(), stride = std::max<int64_t>(1, n / 10);
    for (int64_t k = 0; k < n; k += stride) {
      double v = flat[k].item<double>();
      flat[k] = v + h;
      double lp = loss(x).item<double>();
      flat[k] = v - h;
      double lm = loss(x).item<double>();
      flat[k] = v;
      double fd = (lp - lm) / (2 * h);
      double ad = g[k].item<double>();
      EXPECT_NEAR(ad, fd, 1e-6 + 1e-5 * std::abs(fd)) << names[i] << "[" << k << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ttt, GradCheck,
                         ::testing::Values(Case{"linear", false, false, 0, false},
                                           Case{"linear", true, false, 1, false}, Case{"mlp", false, false, 0, false},
                                           Case{"mlp", true, false, 2, false}, Case{"linear", true, true, 1, true},
                                           Case{"mlp", false, true, 0, true}, Case{"mlp", true, false, 1, true},
                                           Case{"mlp3", false, false, 0, false}, Case{"mlp3", true, true, 1, true},
                                           Case{"mlp5", false, false, 2, true}),
                         [](const auto& i) {
                           const auto& p = i.param;
                           return p.type + (p.gate ? "_gate" : "") + (p.share_qk ? "_shareqk" : "") + "_g" +
                                  std::to_string(p.group_size) + (p.split ? "_split" : "");
                         });

}  // namespace
