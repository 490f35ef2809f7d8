#include "ttt/ttt_linear_kernel.h"

#include <algorithm>
#include <cmath>

#include "ttt/kernel_ops.h"

namespace mt::ttt::detail {

using namespace kernel;

namespace {

// Pre-LN output z of the augmented row x of token t0 + i at its dual-form weights, with token factor t:
//   z = x W - t (x G + sum_j lr_j (x . xk_j) gz_j), over the segment's keys j <= i (j < i when strict).
MT_TTT_TARGET void dual_row(const ScanStream& s, int64_t f, int64_t t0, int64_t i, const float* x, float t, bool strict,
                            bool g_live, const float* gz, float* coef, float* tmp, float* z) {
  const int64_t fa = f + 1;
  row_times(x, 1, fa, s.W[0], f, z, false);
  if (g_live) {
    row_times(x, 1, fa, s.G[0], f, tmp, false);
    axpy(-t, tmp, z, f);
  }
  const int64_t n = strict ? i : i + 1;
  for (int64_t j = 0; j < n; ++j) coef[j] = -t * s.lr[t0 + j] * dot(x, s.xka + (t0 + j) * fa, fa);
  if (n > 0) row_times(coef, 1, n, gz, f, z, true);
}

}  // namespace

MT_TTT_TARGET bool linear_segment(const ScanStream& s, int64_t f, int64_t t0, int64_t m, bool commit, bool g_live,
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
    row_times(xk, 1, fa, s.W[0], f, row, false);
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
      s.lafter[t] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t, zq, eps, xhat);
      dual_row(s, f, t0, i, xk, s.tokprev[t], true, g_live, gz, coef, tmp, zq);
      s.lprev[t] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t, zq, eps, xhat);
      row_times(xk, 1, fa, s.W0[0], f, zq, false);
      s.l0[t] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t, zq, eps, xhat);
    }
  }

  // 4. Gradient sum G += sum_j lr_j xk_j^T gz_j; at the mini-batch's end W -= tok_last G, G restarts.
  // Row k of the sum: sum_j (lr_j xk_j[k]) gz_j, the coefficients a strided column of lr-scaled keys.
  float* lk = tmp;  // [m, f+1]
  for (int64_t j = 0; j < m; ++j)
    for (int64_t k = 0; k < fa; ++k) lk[j * fa + k] = s.lr[t0 + j] * s.xka[(t0 + j) * fa + k];
  for (int64_t k = 0; k < fa; ++k) row_times(lk + k, fa, m, gz, f, s.G[0] + k * f, g_live);
  if (!commit) return true;
  axpy(-s.tok[t0 + m - 1], s.G[0], s.W[0], fa * f);
  std::fill(s.G[0], s.G[0] + fa * f, 0.f);
  return false;
}

}  // namespace mt::ttt::detail
