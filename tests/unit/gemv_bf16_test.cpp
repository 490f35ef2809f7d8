// util::fast_gemv with bf16 weights (a 7B streamed in Kyutai's dtype): the weights widened exactly to
// float32, so the product equals at::linear in float32 on the same bf16 weights within float32
// accumulation error (float32 rows), or within that plus one rounding to bf16 (bf16 rows); on every
// tail length, 1 to 4 rows and any thread split; taken only where valid.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "util/gemv.h"

using mt::util::fast_gemv;
using mt::util::fast_gemv_applies;
using mt::util::linear_nobias;

namespace {
bool have_kernel() { return fast_gemv_applies(at::ones({1, 8}), at::ones({4, 8}).to(at::kBFloat16)); }

// |y - W x| against float64 on the same (bf16-valued) weights, relative to the row's sum of |w_i x_i|
// plus `rel` of |W x| itself (the final rounding of bf16 outputs).
double worst_error(const at::Tensor& y, const at::Tensor& w, const at::Tensor& x, double rel) {
  at::Tensor w64 = w.to(at::kDouble), x64 = x.reshape({-1, w.size(1)}).to(at::kDouble);
  at::Tensor exact = at::mm(x64, w64.t());
  at::Tensor scale = at::mm(x64.abs(), w64.abs().t()) * 1e-5 + exact.abs() * rel + 1e-30;
  return ((y.reshape({-1, w.size(0)}).to(at::kDouble) - exact).abs() / scale).max().item<double>();
}
}  // namespace

TEST(GemvBf16, FloatRowsEqualFloat32LinearOnTheSameWeights) {
  if (!have_kernel()) GTEST_SKIP() << "this CPU lacks AVX2/FMA: at::linear is used";
  at::manual_seed(0);
  for (int64_t rows : {1, 2, 3, 4})
    for (int64_t in : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 2113})
      for (int64_t out : {1, 3, 17, 1000}) {
        at::Tensor w = at::randn({out, in}).to(at::kBFloat16), x = at::randn({rows, 1, in});
        ASSERT_TRUE(fast_gemv_applies(x, w));
        at::Tensor y = fast_gemv(x, w);
        ASSERT_EQ(y.scalar_type(), at::kFloat);
        ASSERT_EQ(y.sizes(), (at::IntArrayRef{rows, 1, out}));
        EXPECT_LT(worst_error(y, w, x, 0), 1.0) << rows << " rows, " << out << " x " << in;
        EXPECT_TRUE(at::allclose(y, at::linear(x, w.to(at::kFloat)), 1e-4, 1e-4))
            << rows << " rows, " << out << " x " << in;
      }
}

TEST(GemvBf16, Bf16RowsGiveBf16RoundedOnce) {
  if (!have_kernel()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  at::manual_seed(1);
  for (int64_t rows : {1, 2, 3, 4})
    for (int64_t in : {5, 16, 33, 4096})
      for (int64_t out : {2, 257}) {
        at::Tensor w = at::randn({out, in}).to(at::kBFloat16), x = at::randn({rows, in}).to(at::kBFloat16);
        ASSERT_TRUE(fast_gemv_applies(x, w));
        at::Tensor y = linear_nobias(x, w);  // the path nn::Linear takes
        ASSERT_EQ(y.scalar_type(), at::kBFloat16);
        // bf16 keeps 8 significant bits: rounding to nearest errs by at most half a unit, 2^-8 of the value.
        EXPECT_LT(worst_error(y, w, x, std::ldexp(1.0, -8)), 1.0) << rows << " rows, " << out << " x " << in;
        at::Tensor ref = at::linear(x.to(at::kFloat), w.to(at::kFloat)).to(at::kBFloat16);
        EXPECT_TRUE(at::allclose(y.to(at::kFloat), ref.to(at::kFloat), 1e-2, 1e-3)) << rows << " rows";
      }
}

TEST(GemvBf16, ThreadSplitsAgree) {
  if (!have_kernel()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  for (int64_t rows : {1, 4}) {
    at::Tensor w = at::randn({4099, 72}).to(at::kBFloat16), x = at::randn({rows, 72});
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    at::Tensor one = fast_gemv(x, w);
    at::set_num_threads(std::max(2, threads));
    at::Tensor many = fast_gemv(x, w);
    at::set_num_threads(threads);
    EXPECT_TRUE(at::equal(one, many)) << rows;
  }
}

TEST(GemvBf16, TakenOnlyWhereValid) {
  at::Tensor w = at::randn({6, 8}).to(at::kBFloat16);
  const bool ok = have_kernel();
  EXPECT_EQ(fast_gemv_applies(at::randn({1, 8}), w), ok);
  EXPECT_EQ(fast_gemv_applies(at::randn({4, 8}).to(at::kBFloat16), w), ok);
  EXPECT_FALSE(fast_gemv_applies(at::randn({5, 8}).to(at::kBFloat16), w));                      // five rows: a GEMM
  EXPECT_FALSE(fast_gemv_applies(at::randn({1, 8}).to(at::kDouble), w));                        // double rows
  EXPECT_FALSE(fast_gemv_applies(at::randn({1, 8}).to(at::kHalf), w));                          // fp16 rows
  EXPECT_FALSE(fast_gemv_applies(at::randn({1, 8}).to(at::kBFloat16), w.to(at::kFloat)));       // bf16 rows, f32 W
  EXPECT_FALSE(fast_gemv_applies(at::randn({1, 8}), at::randn({8, 6}).to(at::kBFloat16).t()));  // strided W
  // The fallback is at::linear's (bf16 x bf16 with five rows).
  at::Tensor x5 = at::randn({5, 8}).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(linear_nobias(x5, w), at::linear(x5, w)));
}
