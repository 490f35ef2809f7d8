#pragma once
// Vector helpers of the hand-fused CPU kernels (the gemv, the one-query attention step, the TTT scan):
// dot products, sums and axpy, small register-blocked matrix products and transposes, LayerNorm of one
// row, the tanh-approximate GELU with its derivatives. AVX2 + FMA on x86, where callers first check
// util::cpu_has_avx2_fma(); plain loops elsewhere.
#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MT_SIMD_X86 1
#define MT_SIMD_TARGET __attribute__((target("avx2,fma")))
#else
#define MT_SIMD_TARGET
#endif

namespace mt::util::simd {

#ifdef MT_SIMD_X86
MT_SIMD_TARGET inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MT_SIMD_TARGET inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

MT_SIMD_TARGET inline float sum(const float* __restrict a, int64_t n) {
  __m256 s0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s0 = _mm256_add_ps(_mm256_loadu_ps(a + i), s0);
  float s = hsum(s0);
  for (; i < n; ++i) s += a[i];
  return s;
}
#else
inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
inline float sum(const float* a, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i];
  return s;
}
#endif

#ifdef MT_SIMD_X86
namespace detail {
// R rows (R <= 4) of gemm below: 16 columns at a time in 2R registers while the K rows of B stream past.
template <int R>
MT_SIMD_TARGET inline void gemm_rows(int64_t N, int64_t K, const float* __restrict A, int64_t ars, int64_t acs,
                                     const float* __restrict B, int64_t ldb, float* __restrict C, int64_t ldc,
                                     float alpha, bool accumulate) {
  const __m256 al = _mm256_set1_ps(alpha);
  int64_t j0 = 0;
  for (; j0 + 16 <= N; j0 += 16) {
    __m256 c0[R], c1[R];
    for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 b0 = _mm256_loadu_ps(B + k * ldb + j0), b1 = _mm256_loadu_ps(B + k * ldb + j0 + 8);
      for (int r = 0; r < R; ++r) {
        const __m256 a = _mm256_set1_ps(A[r * ars + k * acs]);
        c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
        c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float* c = C + r * ldc + j0;
      _mm256_storeu_ps(c, accumulate ? _mm256_fmadd_ps(al, c0[r], _mm256_loadu_ps(c)) : _mm256_mul_ps(al, c0[r]));
      _mm256_storeu_ps(c + 8,
                       accumulate ? _mm256_fmadd_ps(al, c1[r], _mm256_loadu_ps(c + 8)) : _mm256_mul_ps(al, c1[r]));
    }
  }
  for (; j0 + 8 <= N; j0 += 8) {
    __m256 c0[R];
    for (int r = 0; r < R; ++r) c0[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 b0 = _mm256_loadu_ps(B + k * ldb + j0);
      for (int r = 0; r < R; ++r) c0[r] = _mm256_fmadd_ps(_mm256_set1_ps(A[r * ars + k * acs]), b0, c0[r]);
    }
    for (int r = 0; r < R; ++r) {
      float* c = C + r * ldc + j0;
      _mm256_storeu_ps(c, accumulate ? _mm256_fmadd_ps(al, c0[r], _mm256_loadu_ps(c)) : _mm256_mul_ps(al, c0[r]));
    }
  }
  for (; j0 < N; ++j0) {
    for (int r = 0; r < R; ++r) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += A[r * ars + k * acs] * B[k * ldb + j0];
      float* c = C + r * ldc + j0;
      *c = accumulate ? *c + alpha * acc : alpha * acc;
    }
  }
}
}  // namespace detail

// C[M, N] = alpha A B (+ C when accumulating), for the small matrices of the TTT kernels. A's element
// (i, k) is A[i * ars + k * acs] (a transposed operand: ars = 1, acs = its row length); B and C are
// row-major with leading dimensions ldb and ldc.
MT_SIMD_TARGET inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t acs,
                                const float* B, int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4)
    detail::gemm_rows<4>(N, K, A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, alpha, accumulate);
  switch (M - i) {
    case 3: detail::gemm_rows<3>(N, K, A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, alpha, accumulate); break;
    case 2: detail::gemm_rows<2>(N, K, A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, alpha, accumulate); break;
    case 1: detail::gemm_rows<1>(N, K, A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, alpha, accumulate); break;
    default: break;
  }
}
#else
inline void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
                 float* C, int64_t ldc, float alpha, bool accumulate) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += A[i * ars + k * acs] * B[k * ldb + j];
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + alpha * acc : alpha * acc;
    }
}
#endif

// dst[c, r] = src[r, c] for a [rows, cols] block of src with leading dimension lds (dst: [cols, rows]),
// in 8 x 8 register tiles (a scalar transpose stores with a stride of `rows` floats, and for widths
// like 64 or 256 those stores alias in the cache: it ran ~10x slower here).
MT_SIMD_TARGET inline void transpose(const float* __restrict src, int64_t rows, int64_t cols, int64_t lds,
                                     float* __restrict dst) {
  int64_t r0 = 0;
#ifdef MT_SIMD_X86
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      __m256 r[8], t[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + (r0 + k) * lds + c0);
      for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
      }
      for (int k = 0; k < 8; k += 4) {
        r[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
        r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
      }
      for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(dst + (c0 + k) * rows + r0, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
        _mm256_storeu_ps(dst + (c0 + k + 4) * rows + r0, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
      }
    }
    for (; c0 < cols; ++c0)
      for (int64_t k = 0; k < 8; ++k) dst[c0 * rows + r0 + k] = src[(r0 + k) * lds + c0];
  }
#endif
  for (; r0 < rows; ++r0)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r0] = src[r0 * lds + c];
}

// y[0:n] += a * x[0:n]
MT_SIMD_TARGET inline void axpy(float a, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// LayerNorm of one row (biased variance, eps inside the sqrt): xhat into `xhat`, returns the std.
MT_SIMD_TARGET inline float ln_row(const float* __restrict z, int64_t f, double eps, float* __restrict xhat) {
  const float mu = sum(z, f) / static_cast<float>(f);
  for (int64_t j = 0; j < f; ++j) xhat[j] = z[j] - mu;
  const float sd = std::sqrt(dot(xhat, xhat, f) / static_cast<float>(f) + static_cast<float>(eps));
  const float inv = 1.f / sd;
  for (int64_t j = 0; j < f; ++j) xhat[j] *= inv;
  return sd;
}

// The probes' inner loss of key row t: 1/2 ||LN(z) - (xv_t - xk_t)||^2 (xka rows of f + 1).
MT_SIMD_TARGET inline float inner_loss(const float* xka, const float* xv, const float* lnw, const float* lnb, int64_t f,
                                       int64_t t, const float* z, double eps, float* xhat) {
  const float* xk = xka + t * (f + 1);
  const float* x = xv + t * f;
  ln_row(z, f, eps, xhat);
  float l = 0.f;
  for (int64_t j = 0; j < f; ++j) {
    const float e = lnw[j] * xhat[j] + lnb[j] - (x[j] - xk[j]);
    l += e * e;
  }
  return 0.5f * l;
}

#ifdef MT_SIMD_X86
// exp(x) for x <= 0 (Cephes' single-precision polynomial after x = n ln2 + r; ~1 ulp): tanh needs
// exp(-2|u|) only.
MT_SIMD_TARGET inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);  // max(c, NaN) is NaN: NaN passes through
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|); NaN stays NaN.
MT_SIMD_TARGET inline __m256 tanh8(__m256 u) {
  const __m256 sign = _mm256_and_ps(u, _mm256_set1_ps(-0.f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), u);
  const __m256 e = exp_nonpositive(_mm256_mul_ps(a, _mm256_set1_ps(-2.f)));
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), e), _mm256_add_ps(_mm256_set1_ps(1.f), e));
  const __m256 r = _mm256_or_ps(t, sign);
  return _mm256_blendv_ps(r, u, _mm256_cmp_ps(u, u, _CMP_UNORD_Q));
}
#endif

// a = gelu_tanh(z) and, when da is given, da = its derivative (the reference's gelu_bwd constants).
// dda (optional): the derivative of that derivative formula (what autograd takes through it).
MT_SIMD_TARGET inline void gelu_row(const float* __restrict z, int64_t n, float* __restrict a, float* __restrict da,
                                    float* __restrict dda = nullptr) {
  int64_t i = 0;
#ifdef MT_SIMD_X86
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), c0 = _mm256_set1_ps(0.79788456f),
               c1 = _mm256_set1_ps(0.044715f), c2 = _mm256_set1_ps(0.1070322243f), c3 = _mm256_set1_ps(3.f * 0.044715f);
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(z + i), x2 = _mm256_mul_ps(x, x);
    const __m256 t = tanh8(_mm256_mul_ps(_mm256_mul_ps(x, _mm256_fmadd_ps(x2, c1, one)), c0));
    _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t)));
    if (da) {
      const __m256 inner = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(x, half), _mm256_fnmadd_ps(t, t, one)),
                                         _mm256_fmadd_ps(x2, c2, c0));
      _mm256_storeu_ps(da + i, _mm256_fmadd_ps(_mm256_add_ps(t, one), half, inner));
    }
    if (dda) {
      // (1 - t^2) (kp/2 + up/2 + c2 x^2 - x t up kp), kp = c2 x^2 + c0, up = c0 (1 + 3 c1 x^2)
      const __m256 kp = _mm256_fmadd_ps(x2, c2, c0), up = _mm256_mul_ps(c0, _mm256_fmadd_ps(x2, c3, one));
      __m256 v = _mm256_mul_ps(half, _mm256_add_ps(kp, up));
      v = _mm256_fmadd_ps(c2, x2, v);
      v = _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_mul_ps(x, t), up), kp, v);
      _mm256_storeu_ps(dda + i, _mm256_mul_ps(_mm256_fnmadd_ps(t, t, one), v));
    }
  }
#endif
  for (; i < n; ++i) {
    const float x = z[i], x2 = x * x, t = std::tanh(x * (1.f + 0.044715f * x2) * 0.79788456f);
    a[i] = 0.5f * x * (1.f + t);
    if (da) da[i] = x * 0.5f * (1.f - t * t) * (x2 * 0.1070322243f + 0.79788456f) + (t + 1.f) * 0.5f;
    if (dda) {
      const float kp = x2 * 0.1070322243f + 0.79788456f, up = 0.79788456f * (1.f + 3.f * 0.044715f * x2);
      dda[i] = (1.f - t * t) * (0.5f * (kp + up) + 0.1070322243f * x2 - x * t * up * kp);
    }
  }
}

}  // namespace mt::util::simd
