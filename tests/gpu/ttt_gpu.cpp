// TTT layers on CUDA vs CPU. Skipped without CUDA.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "test_util.h"
#include "ttt/ttt_layer.h"

using namespace mt::ttt;

namespace {

bool have_cuda() { return at::globalContext().hasCUDA() && at::detail::getCUDAHooks().getNumGPUs() > 0; }

TTTLayer perturbed(const TTTConfig& c, at::Device dev) {
  auto base = TTTLayer::init(c, 5);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  std::map<std::string, at::Tensor> p;
  for (auto& [n, t] : base.named_parameters()) p[n] = (t.detach() + at::empty(t.sizes()).normal_(0, 0.2, gen)).to(dev);
  return TTTLayer(c, p);
}

class TttGpu : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
    // TF32 would change float32 matmuls by ~1e-3; compare true float32.
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

TEST_P(TttGpu, CudaMatchesCpu) {
  TTTConfig c;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.ttt_layer_type = GetParam();
  c.ttt_base_lr = GetParam() == "mlp" ? 0.1 : 1.0;
  c.use_gate = true;
  c.scan_checkpoint_group_size = 2;
  at::Device cuda(at::kCUDA, 0);
  auto lc = perturbed(c, at::kCPU), lg = perturbed(c, cuda);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  auto x = at::empty({2, 40, 64}).normal_(0, 1, gen);
  auto g = at::empty({2, 40, 64}).normal_(0, 1, gen);

  auto run = [&](const TTTLayer& l, const at::Tensor& xin, const at::Tensor& gin) {
    auto xg = xin.clone().requires_grad_(true);
    auto y = l.forward(xg);
    std::vector<at::Tensor> wrt{xg};
    for (auto& [n, p] : l.named_parameters()) wrt.push_back(p);
    auto gr = torch::autograd::grad({(y * gin).sum()}, wrt);
    gr.insert(gr.begin(), y.detach());
    return gr;
  };
  auto rc = run(lc, x, g);
  auto rg = run(lg, x.to(cuda), g.to(cuda));
  for (size_t i = 0; i < rc.size(); ++i) {
    // float32 on both sides with different reduction orders (cuBLAS vs MKL): relative 1e-4 of the
    // tensor's scale, like the reference comparison.
    double scale = 1 + rc[i].abs().max().item<double>();
    EXPECT_LT(mt::test::max_abs_diff(rg[i].cpu(), rc[i]), 1e-4 * scale) << "tensor #" << i;
  }
  // Streaming on the GPU equals the whole-sequence GPU forward.
  at::NoGradGuard ng;
  TTTState st(2);
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < 40; t += 3) ys.push_back(lg.step(x.to(cuda).narrow(1, t, std::min<int64_t>(3, 40 - t)), st));
  EXPECT_LT(mt::test::max_abs_diff(at::cat(ys, 1).cpu(), rg[0].cpu()), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(Ttt, TttGpu, ::testing::Values("linear", "mlp"));

}  // namespace
