#include "util/gemv.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include "util/fused.h"
#include "util/simd.h"

namespace mt::util {

namespace {

#ifdef MT_SIMD_X86
// Rows [r0, r1) of Y = X W^T for M = 1..4 input rows, W [out, in] row-major: each weight
// row is read once, in one sequential stream per thread (which the hardware prefetcher follows), and
// dotted with every input row (two accumulators per input row: enough to outrun memory).
template <int M>
MT_SIMD_TARGET void gemm_rows(const float* W, const float* x, int64_t in, float* y, int64_t out, int64_t r0,
                              int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* w = W + r * in;
    __m256 a[M][2];
    for (int m = 0; m < M; ++m) a[m][0] = a[m][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= in; i += 16) {
      const __m256 w0 = _mm256_loadu_ps(w + i), w1 = _mm256_loadu_ps(w + i + 8);
      for (int m = 0; m < M; ++m) {
        a[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * in + i), a[m][0]);
        a[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * in + i + 8), a[m][1]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = simd::hsum(_mm256_add_ps(a[m][0], a[m][1]));
      for (int64_t j = i; j < in; ++j) s += w[j] * x[m * in + j];
      y[m * out + r] = s;
    }
  }
}
#endif

}  // namespace

bool fast_gemv_applies(const at::Tensor& x, const at::Tensor& w) {
#ifdef MT_SIMD_X86
  if (!cpu_has_avx2_fma()) return false;
  if (!x.defined() || !w.defined() || x.dim() < 1 || w.dim() != 2) return false;
  if (!x.device().is_cpu() || !w.device().is_cpu()) return false;
  if (x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat) return false;
  if (x.size(-1) != w.size(1) || w.size(1) == 0 || w.size(0) == 0) return false;
  if (x.numel() / w.size(1) < 1 || x.numel() / w.size(1) > kMaxGemvRows) return false;
  if (!w.is_contiguous() || !x.is_contiguous()) return false;
  if (c10::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  return true;
#else
  (void)x;
  (void)w;
  return false;
#endif
}

at::Tensor fast_gemv(const at::Tensor& x, const at::Tensor& w) {
#ifndef MT_SIMD_X86
  return at::linear(x, w);  // fast_gemv_applies is false here; stay correct if called anyway
#else
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  at::Tensor y = at::empty(shape, x.options());
  const int64_t out = w.size(0), in = w.size(1);
  const float* W = w.const_data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // A thread's share should be worth a wake-up: at least ~64 KiB of weights.
  const int64_t grain = std::max<int64_t>(16, (int64_t{16} << 10) / in);
  const int64_t rows = x.numel() / in;
  at::parallel_for(0, out, grain, [&](int64_t r0, int64_t r1) {
    switch (rows) {
      case 1: gemm_rows<1>(W, xp, in, yp, out, r0, r1); break;
      case 2: gemm_rows<2>(W, xp, in, yp, out, r0, r1); break;
      case 3: gemm_rows<3>(W, xp, in, yp, out, r0, r1); break;
      default: gemm_rows<4>(W, xp, in, yp, out, r0, r1); break;
    }
  });
  return y;
#endif
}

at::Tensor linear_nobias(const at::Tensor& x, const at::Tensor& w) {
  return fast_gemv_applies(x, w) ? fast_gemv(x, w) : at::linear(x, w);
}

}  // namespace mt::util
