#include "ttt/ttt_scan_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "util/simd.h"

namespace mt::ttt::detail {

using namespace util::simd;

namespace {

// Everything one segment of one stream computes, as [m, width] row-major blocks, per inner layer l of
// input width din = d_l + 1 (augmented with a one) and output width dout = d_{l+1}:
//   keys:    X[l] the augmented inputs (X[0]: the keys themselves), Zk[l] = X[l] W[l], GELU' / GELU'' at
//            Zk (hidden layers), GZ[l] the inner-loss gradient w.r.t. Zk[l] at the mini-batch start
//            weights and H[l] its value before the GELU' factor;
//   queries: Inp[l] the augmented inputs (Inp[0]: the queries), P[l] = Inp[l] X[l]^T (masked),
//            IG[l] = Inp[l] G[l] (live sums), Zq[l] the pre-activations at the dual-form per-row weights
//            W[l] - t_i (G[l] + sum_{j<=i} lr_j X[l]_j^T GZ[l]_j), GELU' at Zq (hidden layers);
//   LayerNorm parts of the keys' last layer (the inner loss) and of the queries' (the output).
// The backward's gradient blocks come after.
struct Seg {
  std::vector<float*> X, Zk, DA, DDA, H, GZ, Inp, P, IG, Zq, DAq;
  std::vector<float*> dGZ, dX, dZk;
  float *khat, *ksd, *gxh, *ks2;
  float *t1, *t2, *t3;  // times_wt's
  float *dZ, *dZn, *dInp, *Mq, *EP, *tdz, *U, *coef, *row, *row2;
};

// Lays the keys' blocks (what the backward can take over from a state-advancing forward) out in `base`
// (nullptr: only counts). Returns the float count.
int64_t plan_keys(const std::vector<int64_t>& d, int64_t m, float* base, Seg& g) {
  const size_t n = d.size() - 1;
  int64_t off = 0;
  auto take = [&](int64_t count) {
    float* p = base ? base + off : nullptr;
    off += (count + 15) / 16 * 16;  // 64-byte steps
    return p;
  };
  for (auto* v : {&g.X, &g.DA, &g.DDA, &g.H, &g.GZ}) v->assign(n, nullptr);
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    if (l > 0) g.X[l] = take(m * din);
    g.GZ[l] = take(m * dout);
    if (l + 1 < n) g.DA[l] = take(m * dout), g.DDA[l] = take(m * dout), g.H[l] = take(m * dout);
  }
  const int64_t f = d[0];
  g.khat = take(m * f), g.ksd = take(m), g.gxh = take(m * f), g.ks2 = take(m);
  return off;
}

// Lays all blocks out in `base` (nullptr: only counts), the keys' in `keys` when given. Returns the
// float count of `base`.
int64_t plan(const std::vector<int64_t>& d, int64_t m, float* base, Seg* s, float* keys = nullptr) {
  const size_t n = d.size() - 1;
  const int64_t dmax = *std::max_element(d.begin(), d.end()), w = dmax + 1;
  Seg tmp;
  Seg& g = s ? *s : tmp;
  int64_t off = plan_keys(d, m, base, g);
  if (keys) plan_keys(d, m, keys, g);
  auto take = [&](int64_t count) {
    float* p = base ? base + off : nullptr;
    off += (count + 15) / 16 * 16;
    return p;
  };
  for (auto* v : {&g.Zk, &g.Inp, &g.P, &g.IG, &g.Zq, &g.DAq, &g.dGZ, &g.dX, &g.dZk}) v->assign(n, nullptr);
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    if (l > 0) g.Inp[l] = take(m * din), g.dX[l] = take(m * din);
    g.Zk[l] = take(m * dout), g.Zq[l] = take(m * dout), g.IG[l] = take(m * dout);
    g.dGZ[l] = take(m * dout), g.dZk[l] = take(m * dout);
    if (l + 1 < n) g.DAq[l] = take(m * dout);
    g.P[l] = take(m * m);
  }
  g.t1 = take(m * w), g.t2 = take(m * w), g.t3 = take(m * w);
  g.dZ = take(m * w), g.dZn = take(m * w), g.dInp = take(m * w), g.tdz = take(m * w), g.U = take(m * w);
  g.Mq = take(m * m), g.EP = take(m * m), g.coef = take(m * m);
  g.row = take(w), g.row2 = take(w);
  return off;
}

// out[m, r] = alpha Z W[:r]^T (+ out when accumulating), Z: [m, k] (leading dimension ldz), W: rows of k
// (ldw), out: [m, r] (ldo). Computed as (W Z^T)^T: W streams once through gemm against the m columns of
// Z^T, and only the small [m, k] and [r, m] blocks are transposed, never W.
MT_SIMD_TARGET void times_wt(int64_t m, int64_t r, int64_t k, const float* Z, int64_t ldz, const float* W, int64_t ldw,
                             float* out, int64_t ldo, float alpha, bool accumulate, Seg& g) {
  transpose(Z, m, k, ldz, g.t1);                           // [k, m]
  gemm(r, m, k, W, ldw, 1, g.t1, m, g.t2, m, 1.f, false);  // [r, m]
  transpose(g.t2, r, m, m, g.t3);                          // [m, r]
  for (int64_t i = 0; i < m; ++i) {
    float* o = out + i * ldo;
    const float* v = g.t3 + i * r;
    if (accumulate)
      axpy(alpha, v, o, r);
    else
      for (int64_t j = 0; j < r; ++j) o[j] = alpha * v[j];
  }
}

// Rows of a hidden layer's next input: GELU(z) with the one of the bias appended (rows of dout + 1),
// and, where asked, GELU' and GELU'' at z.
MT_SIMD_TARGET void gelu_augmented(const float* z, int64_t m, int64_t dout, float* a, float* da, float* dda) {
  for (int64_t i = 0; i < m; ++i) {
    gelu_row(z + i * dout, dout, a + i * (dout + 1), da ? da + i * dout : nullptr, dda ? dda + i * dout : nullptr);
    a[i * (dout + 1) + dout] = 1.f;
  }
}

// Keys' augmented inputs of layer l (X[0]: the stream's keys from token t0).
const float* key_rows(const ScanStream& s, const Seg& g, const std::vector<int64_t>& d, size_t l, int64_t t0) {
  return l == 0 ? s.xka + t0 * (d[0] + 1) : g.X[l];
}

// 1. The keys through the inner model at the mini-batch start weights, and the inner-loss gradient
// w.r.t. each layer's pre-activation (LN-fused L2 in closed form, then back through the layers).
MT_SIMD_TARGET void keys_pass(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, double eps,
                              bool second, Seg& g) {
  const size_t n = d.size() - 1;
  const int64_t f = d[0], fa = f + 1;
  const float D = static_cast<float>(f);
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    gemm(m, dout, din, key_rows(s, g, d, l, t0), din, 1, s.W[l], dout, g.Zk[l], dout, 1.f, false);
    if (l + 1 < n) gelu_augmented(g.Zk[l], m, dout, g.X[l + 1], g.DA[l], second ? g.DDA[l] : nullptr);
  }
  for (int64_t i = 0; i < m; ++i) {
    const float* z = g.Zk[n - 1] + i * f;
    const float* xk = s.xka + (t0 + i) * fa;
    const float* xv = s.xv + (t0 + i) * f;
    float* xh = g.khat + i * f;
    float* gx = g.gxh + i * f;
    float* gz = g.GZ[n - 1] + i * f;
    const float sd = ln_row(z, f, eps, xh);
    for (int64_t j = 0; j < f; ++j) gx[j] = (s.lnw[j] * xh[j] + s.lnb[j] - (xv[j] - xk[j])) * s.lnw[j];
    const float s1 = sum(gx, f), s2 = dot(gx, xh, f), inv = 1.f / (sd * D);
    for (int64_t j = 0; j < f; ++j) gz[j] = (gx[j] * D - s1 - xh[j] * s2) * inv;
    g.ksd[i] = sd;
    g.ks2[i] = s2;
  }
  for (size_t l = n - 1; l-- > 0;) {  // gz_l = (gz_{l+1} W_{l+1}[:d]^T) * GELU'(zk_l)
    const int64_t dh = d[l + 1], dn = d[l + 2];
    times_wt(m, dh, dn, g.GZ[l + 1], dn, s.W[l + 1], dn, g.H[l], dh, 1.f, false, g);
    for (int64_t k = 0; k < m * dh; ++k) g.GZ[l][k] = g.H[l][k] * g.DA[l][k];
  }
}

// 2. Rows x0 (augmented, row stride f + 1) through the inner model at the dual-form per-row weights of
// token factors t (keys j <= i, or j < i when strict): pre-activations in Zq, the last layer's in
// Zq[n-1]. P, IG and DAq are kept for the backward.
MT_SIMD_TARGET void query_pass(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m,
                               const float* x0, const float* t, bool strict, bool g_live, Seg& g) {
  const size_t n = d.size() - 1;
  const float* lr = s.lr + t0;
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    const float* inp = l == 0 ? x0 : g.Inp[l];
    const float* X = key_rows(s, g, d, l, t0);
    gemm(m, dout, din, inp, din, 1, s.W[l], dout, g.Zq[l], dout, 1.f, false);
    if (g_live) {
      gemm(m, dout, din, inp, din, 1, s.G[l], dout, g.IG[l], dout, 1.f, false);
      for (int64_t i = 0; i < m; ++i) axpy(-t[i], g.IG[l] + i * dout, g.Zq[l] + i * dout, dout);
    }
    float* P = g.P[l];
    for (int64_t i = 0; i < m; ++i) {
      const int64_t keys_i = strict ? i : i + 1;
      for (int64_t j = 0; j < m; ++j) {
        const float p = j < keys_i ? dot(inp + i * din, X + j * din, din) : 0.f;
        P[i * m + j] = p;
        g.coef[i * m + j] = -t[i] * lr[j] * p;
      }
    }
    gemm(m, dout, m, g.coef, m, 1, g.GZ[l], dout, g.Zq[l], dout, 1.f, true);
    if (l + 1 < n) gelu_augmented(g.Zq[l], m, dout, g.Inp[l + 1], g.DAq[l], nullptr);
  }
}

// 3. The gradient sums, in place: G_l = G_l (when live, else 0) + sum_j lr_j X_l,j^T GZ_l,j.
MT_SIMD_TARGET void grad_sums(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, bool g_live,
                              Seg& g) {
  const size_t n = d.size() - 1;
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    const float* X = key_rows(s, g, d, l, t0);
    float* LX = g.U;  // [m, din] rows scaled by their learning rate
    for (int64_t j = 0; j < m; ++j)
      for (int64_t k = 0; k < din; ++k) LX[j * din + k] = s.lr[t0 + j] * X[j * din + k];
    gemm(din, dout, m, LX, 1, din, g.GZ[l], dout, s.G[l], dout, 1.f, g_live);
  }
}

// The probes' inner loss of key rows t0.. from the last layer's pre-activations z (rows of f).
MT_SIMD_TARGET void losses(const ScanStream& s, int64_t f, int64_t t0, int64_t m, const float* z, double eps,
                           float* xhat, float* dst) {
  for (int64_t i = 0; i < m; ++i) dst[t0 + i] = inner_loss(s.xka, s.xv, s.lnw, s.lnb, f, t0 + i, z + i * f, eps, xhat);
}

}  // namespace

int64_t scan_segment_scratch(int64_t K, const std::vector<int64_t>& d) { return plan(d, K, nullptr, nullptr); }

int64_t scan_keys_scratch(int64_t K, const std::vector<int64_t>& d) {
  Seg g;
  return plan_keys(d, K, nullptr, g);
}

MT_SIMD_TARGET bool scan_segment(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, bool commit,
                                 bool g_live, double eps, float* scratch, float* keys) {
  const size_t n = d.size() - 1;
  const int64_t f = d[0], fa = f + 1;
  thread_local Seg g;  // its vectors keep their storage: no allocation per segment
  plan(d, m, scratch, &g, keys);
  keys_pass(s, d, t0, m, eps, keys != nullptr, g);
  if (s.out) {
    query_pass(s, d, t0, m, s.xqa + t0 * fa, s.tok + t0, false, g_live, g);
    for (int64_t i = 0; i < m; ++i) {
      const float* xq = s.xqa + (t0 + i) * fa;
      float* o = s.out + (t0 + i) * f;
      float* xh = g.row;
      ln_row(g.Zq[n - 1] + i * f, f, eps, xh);
      for (int64_t j = 0; j < f; ++j) o[j] = xq[j] + s.lnw[j] * xh[j] + s.lnb[j];
    }
  }
  if (s.l0) {  // after the outputs, from the same state: probes change no output bit
    query_pass(s, d, t0, m, s.xka + t0 * fa, s.tok + t0, false, g_live, g);
    losses(s, f, t0, m, g.Zq[n - 1], eps, g.row, s.lafter);
    query_pass(s, d, t0, m, s.xka + t0 * fa, s.tokprev + t0, true, g_live, g);
    losses(s, f, t0, m, g.Zq[n - 1], eps, g.row, s.lprev);
    for (size_t l = 0; l < n; ++l) {  // the learned initial weights
      const int64_t din = d[l] + 1, dout = d[l + 1];
      gemm(m, dout, din, l == 0 ? s.xka + t0 * fa : g.Inp[l], din, 1, s.W0[l], dout, g.Zq[l], dout, 1.f, false);
      if (l + 1 < n) gelu_augmented(g.Zq[l], m, dout, g.Inp[l + 1], nullptr, nullptr);
    }
    losses(s, f, t0, m, g.Zq[n - 1], eps, g.row, s.l0);
  }
  grad_sums(s, d, t0, m, g_live, g);
  if (commit)
    for (size_t l = 0; l < n; ++l) {
      const int64_t sz = (d[l] + 1) * d[l + 1];
      axpy(-s.tok[t0 + m - 1], s.G[l], s.W[l], sz);
      std::fill(s.G[l], s.G[l] + sz, 0.f);
    }
  return !commit;
}

MT_SIMD_TARGET void scan_segment_backward(const ScanStream& s, const ScanStreamGrads& gr, const std::vector<int64_t>& d,
                                          int64_t t0, int64_t m, bool commit, bool g_live, double eps, float* scratch,
                                          float* keys) {
  const size_t n = d.size() - 1;
  const int64_t f = d[0], fa = f + 1;
  const float D = static_cast<float>(f);
  const float* lr = s.lr + t0;
  const float* t = s.tok + t0;
  thread_local Seg g;  // its vectors keep their storage: no allocation per segment
  plan(d, m, scratch, &g, keys);
  const float* xq = s.xqa + t0 * fa;
  if (!keys) keys_pass(s, d, t0, m, eps, true, g);
  query_pass(s, d, t0, m, xq, t, false, g_live, g);
  std::fill(gr.dxqa + t0 * fa, gr.dxqa + (t0 + m) * fa, 0.f);  // this segment's rows, first touched here
  std::fill(gr.dxka + t0 * fa, gr.dxka + (t0 + m) * fa, 0.f);
  std::fill(gr.dxv + t0 * f, gr.dxv + (t0 + m) * f, 0.f);
  std::fill(gr.dlr + t0, gr.dlr + t0 + m, 0.f);
  std::fill(gr.dtok + t0, gr.dtok + t0 + m, 0.f);
  auto dXp = [&](size_t l) { return l == 0 ? gr.dxka + t0 * fa : g.dX[l]; };
  for (size_t l = 1; l < n; ++l) std::fill(g.dX[l], g.dX[l] + m * (d[l] + 1), 0.f);

  // 1. The state update, with S_l = G_l (live) + sum_j lr_j x_j^T gz_j the segment's gradient sums:
  // commit: W' = W - t_last S (the sums restart at a constant zero); else G' = S. So dS = c R with
  // R = dW' (c = -t_last) or dG' (c = 1).
  for (size_t l = 0; l < n; ++l) {
    const int64_t din = d[l] + 1, dout = d[l + 1], sz = din * dout;
    const float* R = commit ? gr.dW[l] : gr.dG[l];
    const float c = commit ? -t[m - 1] : 1.f;
    const float* X = key_rows(s, g, d, l, t0);
    float* dX = dXp(l);
    times_wt(m, din, dout, g.GZ[l], dout, R, dout, g.U, din, 1.f, false, g);  // U_j = R gz_j
    float dtl = 0.f;                                                          // d/dt_last of W' (commit): -<S, R>
    for (int64_t j = 0; j < m; ++j) {
      const float q = dot(X + j * din, g.U + j * din, din);  // x_j^T R gz_j
      gr.dlr[t0 + j] += c * q;
      dtl -= lr[j] * q;
      axpy(c * lr[j], g.U + j * din, dX + j * din, din);
    }
    gemm(m, dout, din, X, din, 1, R, dout, g.dGZ[l], dout, c, false);  // c x_j^T R, then times lr_j
    for (int64_t j = 0; j < m; ++j)
      for (int64_t k = 0; k < dout; ++k) g.dGZ[l][j * dout + k] *= lr[j];
    if (commit) {
      if (g_live) dtl -= dot(s.G[l], R, sz);
      gr.dtok[t0 + m - 1] += dtl;
    }
    // The sums before the segment: dS when they were live (a constant zero otherwise).
    if (!g_live)
      std::fill(gr.dG[l], gr.dG[l] + sz, 0.f);
    else if (commit)
      for (int64_t k = 0; k < sz; ++k) gr.dG[l][k] = c * gr.dW[l][k];
  }

  // 2. The output: xq + LN(zq) (the queries' first f columns pass the gradient straight through).
  {
    const float* zl = g.Zq[n - 1];
    for (int64_t i = 0; i < m; ++i) {
      const float* go = gr.dout + (t0 + i) * f;
      float* xh = g.row2;
      const float sd = ln_row(zl + i * f, f, eps, xh);
      axpy(1.f, go, gr.dxqa + (t0 + i) * fa, f);
      float* gw = g.row;
      for (int64_t j = 0; j < f; ++j) {
        gr.dlnw[j] += go[j] * xh[j];
        gr.dlnb[j] += go[j];
        gw[j] = go[j] * s.lnw[j];
      }
      const float m1 = sum(gw, f) / D, m2 = dot(gw, xh, f) / D, inv = 1.f / sd;
      float* dz = g.dZ + i * f;
      for (int64_t j = 0; j < f; ++j) dz[j] = (gw[j] - m1 - xh[j] * m2) * inv;
    }
  }

  // 3. Back through the queries' layers: z_i = inp_i W - t_i inp_i G - sum_{j<=i} t_i lr_j (inp_i . x_j) gz_j.
  float *dZ = g.dZ, *dZn = g.dZn;
  for (size_t l = n; l-- > 0;) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    const float* inp = l == 0 ? xq : g.Inp[l];
    const float* X = key_rows(s, g, d, l, t0);
    const float* P = g.P[l];
    const float* GZ = g.GZ[l];
    for (int64_t i = 0; i < m; ++i) {
      float dt = 0.f;
      for (int64_t j = 0; j < m; ++j) {
        const bool on = j <= i;
        const float q = on ? dot(dZ + i * dout, GZ + j * dout, dout) : 0.f;
        g.Mq[i * m + j] = t[i] * lr[j] * q;
        g.EP[i * m + j] = t[i] * lr[j] * P[i * m + j];
        dt -= lr[j] * P[i * m + j] * q;
        gr.dlr[t0 + j] -= t[i] * P[i * m + j] * q;
      }
      if (g_live) dt -= dot(g.IG[l] + i * dout, dZ + i * dout, dout);
      gr.dtok[t0 + i] += dt;
    }
    // dInp = dZ W^T - t (dZ G^T) - Mq X
    times_wt(m, din, dout, dZ, dout, s.W[l], dout, g.dInp, din, 1.f, false, g);
    if (g_live) {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < dout; ++k) g.tdz[i * dout + k] = t[i] * dZ[i * dout + k];
      times_wt(m, din, dout, g.tdz, dout, s.G[l], dout, g.dInp, din, -1.f, true, g);
      gemm(din, dout, m, inp, 1, din, g.tdz, dout, gr.dG[l], dout, -1.f, true);
    }
    gemm(m, din, m, g.Mq, m, 1, X, din, g.dInp, din, -1.f, true);
    gemm(din, dout, m, inp, 1, din, dZ, dout, gr.dW[l], dout, 1.f, true);  // dW += inp^T dZ
    gemm(m, din, m, g.Mq, 1, m, inp, din, dXp(l), din, -1.f, true);        // dX -= Mq^T inp
    gemm(m, dout, m, g.EP, 1, m, dZ, dout, g.dGZ[l], dout, -1.f, true);    // dGZ -= (E P)^T dZ
    if (l > 0) {
      const int64_t dp = d[l];
      for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < dp; ++k) dZn[i * dp + k] = g.dInp[i * din + k] * g.DAq[l - 1][i * dp + k];
      std::swap(dZ, dZn);
    } else {
      for (int64_t i = 0; i < m; ++i) axpy(1.f, g.dInp + i * din, gr.dxqa + (t0 + i) * fa, din);
    }
  }

  // 4. Back through the inner-loss gradients: gz_l = h_l * GELU'(zk_l), h_l = gz_{l+1} W_{l+1}[:d]^T.
  for (size_t l = 0; l + 1 < n; ++l) {
    const int64_t dh = d[l + 1], dn = d[l + 2];
    float* dH = g.dInp;  // [m, dh]
    for (int64_t k = 0; k < m * dh; ++k) {
      dH[k] = g.dGZ[l][k] * g.DA[l][k];
      g.dZk[l][k] = g.dGZ[l][k] * g.H[l][k] * g.DDA[l][k];
    }
    gemm(m, dn, dh, dH, dh, 1, s.W[l + 1], dn, g.dGZ[l + 1], dn, 1.f, true);
    gemm(dh, dn, m, dH, 1, dh, g.GZ[l + 1], dn, gr.dW[l + 1], dn, 1.f, true);
  }
  // The LN-fused L2 gradient gz = (D gxh - sum gxh - xhat (gxh . xhat)) / (sd D), gxh = (w xhat + b - target) w.
  for (int64_t i = 0; i < m; ++i) {
    const float* dg = g.dGZ[n - 1] + i * f;
    const float* gz = g.GZ[n - 1] + i * f;
    const float* xh = g.khat + i * f;
    const float* gx = g.gxh + i * f;
    const float* xk = s.xka + (t0 + i) * fa;
    const float* xv = s.xv + (t0 + i) * f;
    const float sd = g.ksd[i], s2 = g.ks2[i];
    float* u = g.row;
    float* dxh = g.row2;
    const float c = 1.f / (sd * D);
    for (int64_t j = 0; j < f; ++j) u[j] = dg[j] * c;
    const float su = sum(u, f), ux = dot(u, xh, f), dsd = -dot(dg, gz, f) / sd;
    float* dxv = gr.dxv + (t0 + i) * f;
    float* dxk = gr.dxka + (t0 + i) * fa;
    for (int64_t j = 0; j < f; ++j) {
      const float w = s.lnw[j];
      const float dgxh = D * u[j] - su - xh[j] * ux;
      dxh[j] = -u[j] * s2 - gx[j] * ux + dgxh * w * w;
      gr.dlnw[j] += dgxh * (2.f * w * xh[j] + s.lnb[j] - (xv[j] - xk[j]));
      gr.dlnb[j] += dgxh * w;
      const float dtarget = -dgxh * w;
      dxv[j] += dtarget;
      dxk[j] -= dtarget;
    }
    const float m1 = sum(dxh, f) / D, m2 = dot(dxh, xh, f) / D, inv = 1.f / sd;
    float* dz = g.dZk[n - 1] + i * f;
    for (int64_t j = 0; j < f; ++j) dz[j] = (dxh[j] - m1 - xh[j] * m2) * inv + dsd * xh[j] / D;
  }
  // Back through the keys' layers: zk_l = X_l W_l.
  for (size_t l = n; l-- > 0;) {
    const int64_t din = d[l] + 1, dout = d[l + 1];
    const float* X = key_rows(s, g, d, l, t0);
    gemm(din, dout, m, X, 1, din, g.dZk[l], dout, gr.dW[l], dout, 1.f, true);
    float* dX = dXp(l);
    times_wt(m, din, dout, g.dZk[l], dout, s.W[l], dout, dX, din, 1.f, true, g);
    if (l > 0) {
      const int64_t dp = d[l];
      for (int64_t i = 0; i < m; ++i)
        for (int64_t k = 0; k < dp; ++k) g.dZk[l - 1][i * dp + k] += dX[i * din + k] * g.DA[l - 1][i * dp + k];
    }
  }
}

}  // namespace mt::ttt::detail
