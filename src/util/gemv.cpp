#include "util/gemv.h"

#include <ATen/Parallel.h>

#include <c10/core/GradMode.h>
#include <cstring>
#include <type_traits>

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

// bf16 holds the upper 16 bits of a float32: zero-extend each to 32 bits and shift left by 16.
MT_SIMD_TARGET inline __m256 widen_bf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float bf16_to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// gemm_rows with bf16 weights: half the bytes streamed per weight, widened in registers, accumulated in
// float32 against float32 input rows.
template <int M>
MT_SIMD_TARGET void gemm_rows_bf16(const uint16_t* W, const float* x, int64_t in, float* y, int64_t out, int64_t r0,
                                   int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* w = W + r * in;
    __m256 a[M][2];
    for (int m = 0; m < M; ++m) a[m][0] = a[m][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= in; i += 16) {
      const __m256 w0 = widen_bf16(w + i), w1 = widen_bf16(w + i + 8);
      for (int m = 0; m < M; ++m) {
        a[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * in + i), a[m][0]);
        a[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * in + i + 8), a[m][1]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = simd::hsum(_mm256_add_ps(a[m][0], a[m][1]));
      for (int64_t j = i; j < in; ++j) s += bf16_to_float(w[j]) * x[m * in + j];
      y[m * out + r] = s;
    }
  }
}

// Rows [r0, r1) of every input row, for weights of type T (float or bf16 bits).
template <typename T>
void gemm_dispatch(const T* W, const float* x, int64_t rows, int64_t in, float* y, int64_t out, int64_t r0,
                   int64_t r1) {
  constexpr bool kBf16 = std::is_same_v<T, uint16_t>;
  auto run = [&](auto m) {
    constexpr int M = decltype(m)::value;
    if constexpr (kBf16)
      gemm_rows_bf16<M>(W, x, in, y, out, r0, r1);
    else
      gemm_rows<M>(W, x, in, y, out, r0, r1);
  };
  switch (rows) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    default: run(std::integral_constant<int, 4>{}); break;
  }
}
#endif

}  // namespace

bool fast_gemv_applies(const at::Tensor& x, const at::Tensor& w) {
#ifdef MT_SIMD_X86
  if (!cpu_has_avx2_fma()) return false;
  if (!x.defined() || !w.defined() || x.dim() < 1 || w.dim() != 2) return false;
  if (!x.device().is_cpu() || !w.device().is_cpu()) return false;
  // float32 weights take float32 rows; bf16 weights take float32 or bf16 rows.
  const bool f32 = x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat;
  const bool bf16 =
      w.scalar_type() == at::kBFloat16 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
  if (!f32 && !bf16) return false;
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
  // bf16 rows are widened once (a few KiB), the product accumulated in float32 and rounded to the
  // input's dtype at the end, as at::linear does in bf16.
  const at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  at::Tensor y = at::empty(shape, x.options().dtype(at::kFloat));
  const int64_t out = w.size(0), in = w.size(1);
  const float* xp = xf.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // A thread's share should be worth a wake-up: at least ~64 KiB of weights.
  const int64_t grain = std::max<int64_t>(16, (int64_t{16} << 10) / in);
  const int64_t rows = x.numel() / in;
  if (w.scalar_type() == at::kBFloat16) {
    const auto* W = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>());
    at::parallel_for(0, out, grain, [&](int64_t r0, int64_t r1) { gemm_dispatch(W, xp, rows, in, yp, out, r0, r1); });
  } else {
    const float* W = w.const_data_ptr<float>();
    at::parallel_for(0, out, grain, [&](int64_t r0, int64_t r1) { gemm_dispatch(W, xp, rows, in, yp, out, r0, r1); });
  }
  if (x.scalar_type() != at::kFloat) return y.to(x.scalar_type());
  return y;
#endif
}

at::Tensor linear_nobias(const at::Tensor& x, const at::Tensor& w) {
  return fast_gemv_applies(x, w) ? fast_gemv(x, w) : at::linear(x, w);
}

}  // namespace mt::util
