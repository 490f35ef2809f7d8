#include "ttt/ttt_scan_kernel.h"

#include <algorithm>
#include <cmath>

#include "util/simd.h"

namespace mt::ttt::detail {

using namespace util::simd;

namespace {

struct Scratch {
  std::vector<float*> X;   // l = 1..n-1: [m, d_l + 1] the keys' augmented inputs of layer l (X[0]: the keys)
  std::vector<float*> DA;  // l = 0..n-2: [m, d_{l+1}] GELU' at the keys' pre-activations
  std::vector<float*> GZ;  // l = 0..n-1: [m, d_{l+1}] inner-loss gradient w.r.t. layer l's output
  float *lk, *a, *z, *tmp, *coef, *xhat, *gxh;
};

int64_t layout(const std::vector<int64_t>& d, int64_t m, float* base, Scratch* s) {
  const size_t n = d.size() - 1;
  const int64_t dmax = *std::max_element(d.begin(), d.end());
  int64_t off = 0;
  auto take = [&](int64_t count) {
    float* p = base ? base + off : nullptr;
    off += count;
    return p;
  };
  if (s) s->X.assign(n, nullptr), s->DA.assign(n, nullptr), s->GZ.assign(n, nullptr);
  for (size_t l = 0; l < n; ++l) {
    float* x = l > 0 ? take(m * (d[l] + 1)) : nullptr;
    float* da = l + 1 < n ? take(m * d[l + 1]) : nullptr;
    float* gz = take(m * d[l + 1]);
    if (s) s->X[l] = x, s->DA[l] = da, s->GZ[l] = gz;
  }
  float* lk = take(m * (dmax + 1));
  float* a = take(dmax + 1);
  float* z = take(dmax);
  float* tmp = take(dmax);
  float* coef = take(m);
  float* xhat = take(dmax);
  float* gxh = take(dmax);
  if (s) s->lk = lk, s->a = a, s->z = z, s->tmp = tmp, s->coef = coef, s->xhat = xhat, s->gxh = gxh;
  return off;
}

// Keys' row j of layer l's augmented input.
const float* key_row(const ScanStream& s, const Scratch& b, const std::vector<int64_t>& d, size_t l, int64_t t0, int64_t j) {
  return l == 0 ? s.xka + (t0 + j) * (d[0] + 1) : b.X[l] + j * (d[l] + 1);
}

// The inner model at the dual-form per-row weights for the augmented row x0 of token t0 + i with token
// factor t (keys j <= i, or j < i when strict): the last layer's pre-LN output in b.z.
MT_SIMD_TARGET void dual_rows(const ScanStream& s, const Scratch& b, const std::vector<int64_t>& d, int64_t t0, int64_t i,
                             const float* x0, float t, bool strict, bool g_live) {
  const size_t n = d.size() - 1;
  const int64_t keys = strict ? i : i + 1;
  const float* inp = x0;
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    row_times(inp, 1, din, s.W[l], dout, b.z, false);
    if (g_live) {
      row_times(inp, 1, din, s.G[l], dout, b.tmp, false);
      axpy(-t, b.tmp, b.z, dout);
    }
    for (int64_t j = 0; j < keys; ++j) b.coef[j] = -t * s.lr[t0 + j] * dot(inp, key_row(s, b, d, l, t0, j), din);
    if (keys > 0) row_times(b.coef, 1, keys, b.GZ[l], dout, b.z, true);
    if (l + 1 < n) {
      gelu_row(b.z, dout, b.a, nullptr);
      b.a[dout] = 1.f;
      inp = b.a;
    }
  }
}

}  // namespace

int64_t scan_segment_scratch(int64_t K, const std::vector<int64_t>& d) { return layout(d, K, nullptr, nullptr); }

MT_SIMD_TARGET bool scan_segment(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, bool commit,
                                bool g_live, double eps, float* scratch) {
  const size_t n = d.size() - 1;
  const int64_t f = d[0], fa = f + 1;
  Scratch b;
  layout(d, m, scratch, &b);
  const float D = static_cast<float>(f);

  // 1. The keys through the inner model at the mini-batch start weights: each layer's input, GELU'.
  for (int64_t i = 0; i < m; ++i) {
    for (size_t l = 0; l < n; ++l) {
      const int64_t dout = d[l + 1];
      float* zrow = l + 1 < n ? b.z : b.GZ[n - 1] + i * dout;
      row_times(key_row(s, b, d, l, t0, i), 1, d[l] + 1, s.W[l], dout, zrow, false);
      if (l + 1 < n) {
        float* x = b.X[l + 1] + i * (dout + 1);
        gelu_row(zrow, dout, x, b.DA[l] + i * dout);
        x[dout] = 1.f;
      }
    }
    // 2. Gradient of 1/2 ||LN(z) - (xv - xk)||^2 w.r.t. the last pre-LN output (in place).
    float* g = b.GZ[n - 1] + i * f;
    const float* xk = s.xka + (t0 + i) * fa;
    const float* xv = s.xv + (t0 + i) * f;
    const float sd = ln_row(g, f, eps, b.xhat);
    for (int64_t j = 0; j < f; ++j) b.gxh[j] = (s.lnw[j] * b.xhat[j] + s.lnb[j] - (xv[j] - xk[j])) * s.lnw[j];
    const float s1 = sum(b.gxh, f), s2 = dot(b.gxh, b.xhat, f), inv = 1.f / (sd * D);
    for (int64_t j = 0; j < f; ++j) g[j] = (b.gxh[j] * D - s1 - b.xhat[j] * s2) * inv;
    // 3. Back through the layers: gz_l = (gz_{l+1} W_{l+1}[:d]^T) * GELU'(z_l).
    for (size_t l = n - 1; l-- > 0;) {
      const int64_t dh = d[l + 1], dn = d[l + 2];
      const float* gn = b.GZ[l + 1] + i * dn;
      float* gl = b.GZ[l] + i * dh;
      const float* da = b.DA[l] + i * dh;
      for (int64_t a = 0; a < dh; ++a) gl[a] = dot(gn, s.W[l + 1] + a * dn, dn) * da[a];
    }
  }

  // 4. Output rows: xq + LN(z) at the query's per-row weights.
  for (int64_t i = 0; i < m; ++i) {
    const float* xq = s.xqa + (t0 + i) * fa;
    float* o = s.out + (t0 + i) * f;
    dual_rows(s, b, d, t0, i, xq, s.tok[t0 + i], false, g_live);
    ln_row(b.z, f, eps, b.xhat);
    for (int64_t j = 0; j < f; ++j) o[j] = xq[j] + s.lnw[j] * b.xhat[j] + s.lnb[j];
  }

  // 5. Probes: the inner loss of each key row at the learned initial weights, before and after its update.
  if (s.l0) {
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = t0 + i;
      const float* xk = s.xka + t * fa;
      dual_rows(s, b, d, t0, i, xk, s.tok[t], false, g_live);
      s.lafter[t] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t, b.z, eps, b.xhat);
      dual_rows(s, b, d, t0, i, xk, s.tokprev[t], true, g_live);
      s.lprev[t] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t, b.z, eps, b.xhat);
      const float* inp = xk;
      for (size_t l = 0; l < n; ++l) {
        row_times(inp, 1, d[l] + 1, s.W0[l], d[l + 1], b.z, false);
        if (l + 1 < n) {
          gelu_row(b.z, d[l + 1], b.a, nullptr);
          b.a[d[l + 1]] = 1.f;
          inp = b.a;
        }
      }
      s.l0[t] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t, b.z, eps, b.xhat);
    }
  }

  // 6. Gradient sums per layer: G_l += sum_j lr_j X_l,j^T gz_l,j; at the mini-batch's end W_l -= tok_last G_l.
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    for (int64_t j = 0; j < m; ++j) {
      const float* x = key_row(s, b, d, l, t0, j);
      for (int64_t k = 0; k < din; ++k) b.lk[j * din + k] = s.lr[t0 + j] * x[k];
    }
    for (int64_t k = 0; k < din; ++k) row_times(b.lk + k, din, m, b.GZ[l], dout, s.G[l] + k * dout, g_live);
    if (commit) {
      axpy(-s.tok[t0 + m - 1], s.G[l], s.W[l], din * dout);
      std::fill(s.G[l], s.G[l] + din * dout, 0.f);
    }
  }
  return !commit;
}

}  // namespace mt::ttt::detail
