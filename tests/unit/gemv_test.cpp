// util::fast_gemv, the matrix-vector product of streaming steps (1 to 4 input rows): equal to a
// float64 product within float32 accumulation error on every tail length, row count and thread split,
// and taken only where it is valid (<= 4 rows, float32, contiguous, no autograd), falling back to
// at::linear elsewhere.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include "util/gemv.h"

using mt::util::fast_gemv;
using mt::util::fast_gemv_applies;
using mt::util::linear_nobias;

namespace {
// |y - W x| per row against float64, relative to the row's sum of |w_i x_i|: float32 accumulation of
// `in` products in a different order than the BLAS errs by at most ~in * 2^-24 of that sum; 1e-5
// allows in up to ~160 terms per accumulator lane, far more than the kernel's 8-wide lanes sum.
double worst_relative_error(const at::Tensor& y, const at::Tensor& w, const at::Tensor& x) {
  at::Tensor w64 = w.to(at::kDouble), x64 = x.reshape({-1, w.size(1)}).to(at::kDouble);
  at::Tensor exact = at::mm(x64, w64.t()), scale = at::mm(x64.abs(), w64.abs().t()).clamp_min(1e-30);
  return ((y.reshape({-1, w.size(0)}).to(at::kDouble) - exact).abs() / scale).max().item<double>();
}
}  // namespace

TEST(Gemv, EqualsFloat64ProductOnEveryTailAndSplit) {
  if (!fast_gemv_applies(at::ones({1, 8}), at::ones({4, 8})))
    GTEST_SKIP() << "this CPU lacks AVX2/FMA: at::linear is used";
  at::manual_seed(0);
  for (int64_t rows : {1, 2, 3, 4})
    for (int64_t in : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 512, 2113})
      for (int64_t out : {1, 3, 17, 1000, 5000}) {
        at::Tensor w = at::randn({out, in}), x = at::randn({rows, 1, in});
        at::Tensor y = fast_gemv(x, w);
        ASSERT_EQ(y.sizes(), (at::IntArrayRef{rows, 1, out}));
        EXPECT_LT(worst_relative_error(y, w, x), 1e-5) << rows << " rows, " << out << " x " << in;
        EXPECT_TRUE(at::allclose(y, at::linear(x, w), 1e-4, 1e-4)) << rows << " rows, " << out << " x " << in;
      }
}

TEST(Gemv, ThreadSplitsAgree) {
  if (!fast_gemv_applies(at::ones({1, 8}), at::ones({4, 8}))) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  for (int64_t rows : {1, 3}) {
    at::Tensor w = at::randn({4099, 64}), x = at::randn({rows, 64});
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    at::Tensor one = fast_gemv(x, w);
    at::set_num_threads(std::max(2, threads));
    at::Tensor many = fast_gemv(x, w);
    at::set_num_threads(threads);
    EXPECT_TRUE(at::equal(one, many)) << rows;  // each output is summed by one thread in a fixed order
  }
}

TEST(Gemv, TakenOnlyWhereValid) {
  at::Tensor w = at::randn({6, 8}), x = at::randn({1, 8});
  const bool cpu_ok = fast_gemv_applies(at::ones({1, 8}), at::ones({4, 8}));
  EXPECT_EQ(fast_gemv_applies(at::randn({2, 2, 8}), w), cpu_ok);          // four rows: still streamed once
  EXPECT_FALSE(fast_gemv_applies(at::randn({5, 8}), w));                  // five rows: a GEMM
  EXPECT_FALSE(fast_gemv_applies(at::randn({8, 2}).t(), w));              // non-contiguous input rows
  EXPECT_FALSE(fast_gemv_applies(x, at::randn({8, 6}).t()));              // non-contiguous weight
  EXPECT_FALSE(fast_gemv_applies(x.to(at::kDouble), w.to(at::kDouble)));  // not float32
  EXPECT_FALSE(fast_gemv_applies(at::randn({1, 7}), w));                  // wrong width
  at::Tensor wg = w.clone().requires_grad_(true);
  EXPECT_FALSE(fast_gemv_applies(x, wg));  // autograd needs at::linear's graph
  {
    at::NoGradGuard ng;
    EXPECT_EQ(fast_gemv_applies(x, wg), cpu_ok);
  }
  // The fallback and the gradient path are at::linear's.
  at::Tensor x5 = at::randn({5, 8});
  EXPECT_TRUE(at::equal(linear_nobias(x5, w), at::linear(x5, w)));
  at::Tensor y = linear_nobias(x, wg);
  y.sum().backward();
  ASSERT_TRUE(wg.grad().defined());
  EXPECT_TRUE(at::allclose(wg.grad(), x.expand({6, 8})));
}
