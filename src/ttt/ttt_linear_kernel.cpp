#include "ttt/ttt_linear_kernel.h"

#include <algorithm>
#include <cmath>

// AVX2 + FMA on x86 (callers check util::cpu_has_avx2_fma()); plain loops elsewhere.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define MT_TTT_X86 1
#define MT_TTT_TARGET __attribute__((target("avx2,fma")))
#else
#define MT_TTT_TARGET
#endif

namespace mt::ttt::detail {

namespace {

#ifdef MT_TTT_X86
// z[0:f] (+)= sum_k x[k * xs] W[k, 0:f] for k < kin: 32 outputs at a time stay in four registers while
// the k rows stream past.
MT_TTT_TARGET inline void row_times(const float* __restrict x, int64_t xs, int64_t kin, const float* __restrict W,
                                    int64_t f, float* __restrict z, bool accumulate) {
  int64_t j0 = 0;
  for (; j0 + 32 <= f; j0 += 32) {
    __m256 a0 = accumulate ? _mm256_loadu_ps(z + j0) : _mm256_setzero_ps();
    __m256 a1 = accumulate ? _mm256_loadu_ps(z + j0 + 8) : _mm256_setzero_ps();
    __m256 a2 = accumulate ? _mm256_loadu_ps(z + j0 + 16) : _mm256_setzero_ps();
    __m256 a3 = accumulate ? _mm256_loadu_ps(z + j0 + 24) : _mm256_setzero_ps();
    for (int64_t k = 0; k < kin; ++k) {
      const __m256 c = _mm256_set1_ps(x[k * xs]);
      const float* w = W + k * f + j0;
      a0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(w), a0);
      a1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(w + 8), a1);
      a2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(w + 16), a2);
      a3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(w + 24), a3);
    }
    _mm256_storeu_ps(z + j0, a0);
    _mm256_storeu_ps(z + j0 + 8, a1);
    _mm256_storeu_ps(z + j0 + 16, a2);
    _mm256_storeu_ps(z + j0 + 24, a3);
  }
  for (; j0 + 8 <= f; j0 += 8) {
    __m256 a0 = accumulate ? _mm256_loadu_ps(z + j0) : _mm256_setzero_ps();
    for (int64_t k = 0; k < kin; ++k) a0 = _mm256_fmadd_ps(_mm256_set1_ps(x[k * xs]), _mm256_loadu_ps(W + k * f + j0), a0);
    _mm256_storeu_ps(z + j0, a0);
  }
  for (int64_t j = j0; j < f; ++j) {
    float acc = accumulate ? z[j] : 0.f;
    for (int64_t k = 0; k < kin; ++k) acc += x[k * xs] * W[k * f + j];
    z[j] = acc;
  }
}

MT_TTT_TARGET inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MT_TTT_TARGET inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
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

MT_TTT_TARGET inline float sum(const float* __restrict a, int64_t n) {
  __m256 s0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) s0 = _mm256_add_ps(_mm256_loadu_ps(a + i), s0);
  float s = hsum(s0);
  for (; i < n; ++i) s += a[i];
  return s;
}
#else
inline void row_times(const float* x, int64_t xs, int64_t kin, const float* W, int64_t f, float* z, bool accumulate) {
  for (int64_t j = 0; j < f; ++j) {
    float acc = accumulate ? z[j] : 0.f;
    for (int64_t k = 0; k < kin; ++k) acc += x[k * xs] * W[k * f + j];
    z[j] = acc;
  }
}
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

// y[0:n] += a * x[0:n]
MT_TTT_TARGET inline void axpy(float a, const float* __restrict x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// LayerNorm of one row (biased variance, eps inside the sqrt): xhat into `xhat`, returns the std.
MT_TTT_TARGET inline float ln_row(const float* __restrict z, int64_t f, double eps, float* __restrict xhat) {
  const float mu = sum(z, f) / static_cast<float>(f);
  for (int64_t j = 0; j < f; ++j) xhat[j] = z[j] - mu;
  const float sd = std::sqrt(dot(xhat, xhat, f) / static_cast<float>(f) + static_cast<float>(eps));
  const float inv = 1.f / sd;
  for (int64_t j = 0; j < f; ++j) xhat[j] *= inv;
  return sd;
}

}  // namespace

namespace {

// Pre-LN output z of the augmented row x of token t0 + i at its dual-form weights, with token factor t:
//   z = x W - t (x G + sum_j lr_j (x . xk_j) gz_j), over the segment's keys j <= i (j < i when strict).
MT_TTT_TARGET void dual_row(const LinearStream& s, int64_t f, int64_t t0, int64_t i, const float* x, float t, bool strict,
                            bool g_live, const float* gz, float* coef, float* tmp, float* z) {
  const int64_t fa = f + 1;
  row_times(x, 1, fa, s.W, f, z, false);
  if (g_live) {
    row_times(x, 1, fa, s.G, f, tmp, false);
    axpy(-t, tmp, z, f);
  }
  const int64_t n = strict ? i : i + 1;
  for (int64_t j = 0; j < n; ++j) coef[j] = -t * s.lr[t0 + j] * dot(x, s.xka + (t0 + j) * fa, fa);
  if (n > 0) row_times(coef, 1, n, gz, f, z, true);
}

// 1/2 ||LN(z) - (xv - xk)||^2 of key row t (the probes' inner loss).
MT_TTT_TARGET float inner_loss(const LinearStream& s, int64_t f, int64_t t, const float* z, double eps, float* xhat) {
  const float* xk = s.xka + t * (f + 1);
  const float* xv = s.xv + t * f;
  ln_row(z, f, eps, xhat);
  float l = 0.f;
  for (int64_t j = 0; j < f; ++j) {
    const float d = s.lnw[j] * xhat[j] + s.lnb[j] - (xv[j] - xk[j]);
    l += d * d;
  }
  return 0.5f * l;
}

}  // namespace

MT_TTT_TARGET bool linear_segment(const LinearStream& s, int64_t f, int64_t t0, int64_t m, bool commit, bool g_live,
                                  double eps, float* scratch) {
  const int64_t fa = f + 1;
  float* gz = scratch;          // [m, f]: inner-loss gradient w.r.t. the pre-LN output, per key row
  float* zq = gz + m * f;       // [m, f]: a row's pre-LN output
  float* tmp = zq + m * f;      // [m, f+1]
  float* coef = tmp + m * fa;   // [m] (m * m reserved)
  float* xhat = coef + m * m;   // [f]
  float* gxh = xhat + f;        // [f]
  float* row = gxh + f;         // [f]
  const float D = static_cast<float>(f);

  // 1. Gradient of 1/2 ||LN(xk W) - (xv - xk)||^2 at the mini-batch start state, per key row.
  for (int64_t i = 0; i < m; ++i) {
    const float* xk = s.xka + (t0 + i) * fa;
    const float* xv = s.xv + (t0 + i) * f;
    float* g = gz + i * f;
    row_times(xk, 1, fa, s.W, f, row, false);
    const float sd = ln_row(row, f, eps, xhat);
    for (int64_t j = 0; j < f; ++j) gxh[j] = (s.lnw[j] * xhat[j] + s.lnb[j] - (xv[j] - xk[j])) * s.lnw[j];
    const float s1 = sum(gxh, f), s2 = dot(gxh, xhat, f), inv = 1.f / (sd * D);
    for (int64_t j = 0; j < f; ++j) g[j] = (gxh[j] * D - s1 - xhat[j] * s2) * inv;
  }

  // 2. Output rows: xq + LN(z) at the query's per-row weights.
  for (int64_t i = 0; i < m; ++i) {
    const float* xq = s.xqa + (t0 + i) * fa;
    float* o = s.out + (t0 + i) * f;
    dual_row(s, f, t0, i, xq, s.tok[t0 + i], false, g_live, gz, coef, tmp, zq);
    ln_row(zq, f, eps, xhat);
    for (int64_t j = 0; j < f; ++j) o[j] = xq[j] + s.lnw[j] * xhat[j] + s.lnb[j];
  }

  // 3. Probes (spec 1.13): the inner loss of each key row at the learned initial weights (l0), at the
  // state before its own update (lprev: the previous token factor, strictly earlier keys) and after it.
  if (s.l0) {
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = t0 + i;
      const float* xk = s.xka + t * fa;
      dual_row(s, f, t0, i, xk, s.tok[t], false, g_live, gz, coef, tmp, zq);
      s.lafter[t] = inner_loss(s, f, t, zq, eps, xhat);
      dual_row(s, f, t0, i, xk, s.tokprev[t], true, g_live, gz, coef, tmp, zq);
      s.lprev[t] = inner_loss(s, f, t, zq, eps, xhat);
      row_times(xk, 1, fa, s.W0, f, zq, false);
      s.l0[t] = inner_loss(s, f, t, zq, eps, xhat);
    }
  }

  // 4. Gradient sum G += sum_j lr_j xk_j^T gz_j; at the mini-batch's end W -= tok_last G, G restarts.
  // Row k of the sum: sum_j (lr_j xk_j[k]) gz_j, the coefficients a strided column of lr-scaled keys.
  float* lk = tmp;  // [m, f+1]
  for (int64_t j = 0; j < m; ++j)
    for (int64_t k = 0; k < fa; ++k) lk[j * fa + k] = s.lr[t0 + j] * s.xka[(t0 + j) * fa + k];
  for (int64_t k = 0; k < fa; ++k) row_times(lk + k, fa, m, gz, f, s.G + k * f, g_live);
  if (!commit) return true;
  axpy(-s.tok[t0 + m - 1], s.G, s.W, fa * f);
  std::fill(s.G, s.G + fa * f, 0.f);
  return false;
}

}  // namespace mt::ttt::detail
