// In-Place TTT FFN on CUDA equals the CPU (TF32 off): forward, every gradient, streaming; the
// reference case passes on CUDA. Skips without CUDA.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "reference/check_reference.h"
#include "test_util.h"
#include "ttt/inplace.h"
#include "util/runtime.h"

using namespace mt;
using namespace mt::ttt;

TEST(InPlaceGpu, ReferenceCasePassesOnCuda) {
  REQUIRE_CUDA();
  ref::register_builtin_kinds();
  ref::CaseResult r = ref::run_case(test::reference_dir() + "/inplace/inplace_small", {"cuda", false});
  ASSERT_FALSE(r.skipped);
  for (const auto& c : r.checks) EXPECT_TRUE(c.pass) << c.name << " ratio " << c.worst_ratio << " " << c.note;
}

TEST(InPlaceGpu, ForwardBackwardStreamingMatchCpu) {
  REQUIRE_CUDA();
  for (auto strat : {InPlaceStrategy::kLinearAttention, InPlaceStrategy::kRunning, InPlaceStrategy::kMaterialized}) {
    InPlaceConfig c;
    c.dim = 64;
    c.hidden = 160;
    c.chunk_size = 16;
    c.lr = 0.05;
    c.strategy = strat;
    InPlaceFFN cpu(c), gpu(c);
    cpu->init_weights(3);
    {
      at::NoGradGuard ng;
      cpu->conv_weight.normal_(0, 0.3);
      for (auto& kv : gpu->named_parameters()) kv.value().copy_(cpu->named_parameters()[kv.key()]);
    }
    gpu->to(at::kCUDA);
    at::Tensor x = at::randn({2, 75, 64}), t = at::randn({2, 75, 64}), g = at::randn({2, 75, 64});
    at::Tensor xc = x.clone().requires_grad_(true), tc = t.clone().requires_grad_(true);
    at::Tensor xg = x.cuda().requires_grad_(true), tg = t.cuda().requires_grad_(true);
    at::Tensor yc = cpu->forward(xc, tc), yg = gpu->forward(xg, tg);
    const double scale = yc.abs().max().item<double>();
    EXPECT_LT(test::max_abs_diff(yg.cpu(), yc), 1e-5 * scale) << strategy_name(strat);
    (yc * g).sum().backward();
    (yg * g.cuda()).sum().backward();
    auto close = [&](const at::Tensor& a, const at::Tensor& b, const std::string& what) {
      EXPECT_LT(test::max_abs_diff(a.cpu(), b), 2e-5 * b.abs().max().item<double>())
          << strategy_name(strat) << " " << what;
    };
    close(xg.grad(), xc.grad(), "grad.x");
    close(tg.grad(), tc.grad(), "grad.t");
    for (const auto& kv : cpu->named_parameters())
      close(gpu->named_parameters()[kv.key()].grad(), kv.value().grad(), "grad." + kv.key());
    // Streaming on the GPU, steps of 1, 3, 7, 16 tokens, equals the CPU whole-sequence output.
    at::InferenceMode im;
    InPlaceState st = gpu->make_state(2);
    std::vector<at::Tensor> ys;
    const std::vector<int64_t> sizes = {1, 3, 7, 16};
    for (int64_t off = 0, i = 0; off < 75; ++i) {
      int64_t s = std::min<int64_t>(sizes[i % 4], 75 - off);
      ys.push_back(gpu->step(xg.detach().narrow(1, off, s), tg.detach().narrow(1, off, s), st));
      off += s;
    }
    EXPECT_LT(test::max_abs_diff(at::cat(ys, 1).cpu(), yc.detach()), 1e-5 * scale) << strategy_name(strat);
  }
}
