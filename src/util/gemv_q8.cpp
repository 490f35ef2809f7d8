#include "util/gemv_q8.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <atomic>

#include "util/error.h"
#include "util/fused.h"
#include "util/simd.h"

// The CUDA kernel of _weight_int8pack_mm is not in every supported libtorch: use it where its dispatch
// header exists, and dequantise-then-matmul elsewhere.
#if __has_include(<ATen/ops/_weight_int8pack_mm_cuda_dispatch.h>)
#define MT_INT8PACK_CUDA 1
#endif

namespace mt::util {

Q8Weight quantize_q8(const at::Tensor& w) {
  MT_CHECK(w.dim() == 2 && at::isFloatingType(w.scalar_type()), "quantize_q8: expected a float matrix [out, in], got ",
           c10::toString(w.scalar_type()), " ", shape_str(w.sizes().vec()));
  at::NoGradGuard ng;
  // The export quantises an fp16 copy; its row maxima are fp16 values, kept as float32.
  const at::Tensor w16 = w.detach().to(at::kHalf).to(at::kFloat);
  at::Tensor scb = w16.abs().amax(1);
  // 127 / SCB, with 0 for an all-zero row (its codes stay 0 instead of 0 · inf = NaN).
  const at::Tensor inv = at::where(scb > 0, 127.0 / scb, at::zeros_like(scb));
  at::Tensor cb = at::round(w16 * inv.unsqueeze(1)).clamp(-127, 127).to(at::kChar);
  return {cb.contiguous(), scb.contiguous()};
}

at::Tensor dequantize_q8(const at::Tensor& cb, const at::Tensor& scb, at::ScalarType dtype) {
  return (cb.to(at::kFloat) * (scb.to(at::kFloat) / 127.0).unsqueeze(1)).to(dtype);
}

void check_q8(const at::Tensor& cb, const at::Tensor& scb, const std::string& what) {
  MT_CHECK(cb.scalar_type() == at::kChar && cb.dim() == 2, what, ": expected int8 codes [out, in], got ",
           c10::toString(cb.scalar_type()), " ", shape_str(cb.sizes().vec()));
  MT_CHECK(scb.scalar_type() == at::kFloat, what, "_scb: expected float32 row scales, got ",
           c10::toString(scb.scalar_type()), " (q8 scales stay float32 whatever the run dtype)");
  MT_CHECK(scb.dim() == 1 && scb.size(0) == cb.size(0), what, "_scb: expected shape [", cb.size(0), "], got ",
           shape_str(scb.sizes().vec()));
}

namespace {

#ifdef MT_SIMD_X86
MT_SIMD_TARGET inline __m256 load8_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// Rows [r0, r1) of Y = X (CB · s)ᵀ, s = SCB / 127, for M = 1..4 input rows: each int8 row is read once
// in one sequential stream, widened to float (int8 -> int32 -> float) and multiply-added into U
// accumulators per input row (enough independent FMAs to outrun memory); the row's scale multiplies
// the finished dot product, not every weight.
template <int M, int U>
MT_SIMD_TARGET void gemm_rows_q8(const int8_t* CB, const float* scb, const float* x, int64_t in, float* y, int64_t out,
                                 int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* w = CB + r * in;
    __m256 a[M][U];
    for (int m = 0; m < M; ++m)
      for (int u = 0; u < U; ++u) a[m][u] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 * U <= in; i += 8 * U) {
      for (int u = 0; u < U; ++u) {
        const __m256 wv = load8_i8(w + i + 8 * u);
        for (int m = 0; m < M; ++m) a[m][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * in + i + 8 * u), a[m][u]);
      }
    }
    for (; i + 8 <= in; i += 8) {
      const __m256 wv = load8_i8(w + i);
      for (int m = 0; m < M; ++m) a[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * in + i), a[m][0]);
    }
    const float s = scb[r] / 127.0f;
    for (int m = 0; m < M; ++m) {
      for (int u = 1; u < U; ++u) a[m][0] = _mm256_add_ps(a[m][0], a[m][u]);
      float d = simd::hsum(a[m][0]);
      for (int64_t j = i; j < in; ++j) d += static_cast<float>(w[j]) * x[m * in + j];
      y[m * out + r] = d * s;
    }
  }
}

// The same with AVX-512 where the CPU has it: widening and converting 16 codes per instruction halves
// the instructions per weight, and this loop is bound by them rather than by memory once the int8
// weights (a quarter of the float32 bytes) stream from L3 or DRAM.
#define MT_Q8_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
template <int M, int U>
MT_Q8_AVX512_TARGET void gemm_rows_q8_512(const int8_t* CB, const float* scb, const float* x, int64_t in, float* y,
                                          int64_t out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* w = CB + r * in;
    __m512 a[M][U];
    for (int m = 0; m < M; ++m)
      for (int u = 0; u < U; ++u) a[m][u] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 * U <= in; i += 16 * U) {
      for (int u = 0; u < U; ++u) {
        const __m512 wv =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i + 16 * u))));
        for (int m = 0; m < M; ++m) a[m][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + m * in + i + 16 * u), a[m][u]);
      }
    }
    for (; i + 16 <= in; i += 16) {
      const __m512 wv =
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))));
      for (int m = 0; m < M; ++m) a[m][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + m * in + i), a[m][0]);
    }
    const float s = scb[r] / 127.0f;
    for (int m = 0; m < M; ++m) {
      for (int u = 1; u < U; ++u) a[m][0] = _mm512_add_ps(a[m][0], a[m][u]);
      float d = _mm512_reduce_add_ps(a[m][0]);
      for (int64_t j = i; j < in; ++j) d += static_cast<float>(w[j]) * x[m * in + j];
      y[m * out + r] = d * s;
    }
  }
}

std::atomic<bool> g_allow_avx512{true};

bool cpu_has_avx512() {
  static const bool yes =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return yes && g_allow_avx512.load(std::memory_order_relaxed);
}

// Rows [r0, r1) for `rows` input rows with the widest kernel the CPU has.
void q8_rows(const int8_t* W, const float* s, const float* xp, int64_t in, float* yp, int64_t out, int64_t rows,
             int64_t r0, int64_t r1) {
  if (cpu_has_avx512()) {
    switch (rows) {
      case 1: return gemm_rows_q8_512<1, 4>(W, s, xp, in, yp, out, r0, r1);
      case 2: return gemm_rows_q8_512<2, 4>(W, s, xp, in, yp, out, r0, r1);
      case 3: return gemm_rows_q8_512<3, 2>(W, s, xp, in, yp, out, r0, r1);
      default: return gemm_rows_q8_512<4, 2>(W, s, xp, in, yp, out, r0, r1);
    }
  }
  switch (rows) {
    case 1: return gemm_rows_q8<1, 4>(W, s, xp, in, yp, out, r0, r1);
    case 2: return gemm_rows_q8<2, 4>(W, s, xp, in, yp, out, r0, r1);
    case 3: return gemm_rows_q8<3, 2>(W, s, xp, in, yp, out, r0, r1);
    default: return gemm_rows_q8<4, 2>(W, s, xp, in, yp, out, r0, r1);
  }
}
#endif

}  // namespace

bool fast_gemv_q8_applies(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb) {
#ifdef MT_SIMD_X86
  if (!cpu_has_avx2_fma()) return false;
  if (!x.defined() || !cb.defined() || !scb.defined() || x.dim() < 1 || cb.dim() != 2 || scb.dim() != 1) return false;
  if (!x.device().is_cpu() || !cb.device().is_cpu() || !scb.device().is_cpu()) return false;
  if (x.scalar_type() != at::kFloat || cb.scalar_type() != at::kChar || scb.scalar_type() != at::kFloat) return false;
  if (x.size(-1) != cb.size(1) || cb.size(1) == 0 || cb.size(0) == 0 || scb.size(0) != cb.size(0)) return false;
  if (x.numel() / cb.size(1) < 1 || x.numel() / cb.size(1) > kMaxGemvRows) return false;
  if (!x.is_contiguous() || !cb.is_contiguous() || !scb.is_contiguous()) return false;
  if (c10::GradMode::is_enabled() && x.requires_grad()) return false;
  return true;
#else
  (void)x;
  (void)cb;
  (void)scb;
  return false;
#endif
}

at::Tensor fast_gemv_q8(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb) {
#ifndef MT_SIMD_X86
  return at::linear(x, dequantize_q8(cb, scb, x.scalar_type()));  // not taken: applies is false here
#else
  auto shape = x.sizes().vec();
  shape.back() = cb.size(0);
  at::Tensor y = at::empty(shape, x.options());
  const int64_t out = cb.size(0), in = cb.size(1), rows = x.numel() / in;
  const int8_t* W = cb.const_data_ptr<int8_t>();
  const float* s = scb.const_data_ptr<float>();
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // A thread's share should be worth a wake-up: at least ~64 KiB of weights, as the float kernel.
  const int64_t grain = std::max<int64_t>(16, (int64_t{64} << 10) / in);
  at::parallel_for(0, out, grain, [&](int64_t r0, int64_t r1) { q8_rows(W, s, xp, in, yp, out, rows, r0, r1); });
  return y;
#endif
}

bool allow_avx512_q8(bool on) {
#ifdef MT_SIMD_X86
  return g_allow_avx512.exchange(on);
#else
  (void)on;
  return false;
#endif
}

namespace {
// The op's CPU kernels step over K in blocks without a tail in some builds (bf16 with K = 70 read past
// the end of its rows here and crashed): it is used where K is a multiple of 64, as every Moshi width
// is; other widths take the dequantised matmul.
bool int8pack_applies(const at::Tensor& x) {
  if (x.size(-1) % 64 != 0) return false;
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) return false;
  if (x.device().is_cpu()) return true;
#ifdef MT_INT8PACK_CUDA
  return x.device().is_cuda();
#else
  return false;
#endif
}
}  // namespace

at::Tensor linear_q8(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb) {
  if (fast_gemv_q8_applies(x, cb, scb)) return fast_gemv_q8(x, cb, scb);
  MT_CHECK(x.size(-1) == cb.size(1), "q8 linear: input ", shape_str(x.sizes().vec()), " does not match weight ",
           shape_str(cb.sizes().vec()));
  // The op has no derivative: a pass that needs gradients through x uses the dequantised weight.
  const bool grad = c10::GradMode::is_enabled() && x.requires_grad();
  if (grad || !int8pack_applies(x)) return at::linear(x, dequantize_q8(cb, scb, x.scalar_type()));
  const at::Tensor scales = (scb / 127.0).to(x.scalar_type());
  auto shape = x.sizes().vec();
  shape.back() = cb.size(0);
  const at::Tensor a = x.reshape({-1, x.size(-1)}).contiguous();
  if (x.device().is_cpu()) return at::_weight_int8pack_mm(a, cb, scales).view(shape);
  // The CUDA kernel has had dtype and size limits across versions: where it refuses once, the
  // dequantised matmul serves from then on.
  static std::atomic<bool> cuda_kernel_ok{true};
  if (cuda_kernel_ok.load(std::memory_order_relaxed)) {
    try {
      return at::_weight_int8pack_mm(a, cb, scales).view(shape);
    } catch (const c10::Error&) {
      cuda_kernel_ok = false;
    }
  }
  return at::linear(x, dequantize_q8(cb, scb, x.scalar_type()));
}

}  // namespace mt::util
