#include "ttt/ttt_scan.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

#include "ttt/ttt_scan_kernel.h"
#include "util/error.h"
#include "util/fused.h"
#include "util/pitfall_switch.h"

namespace mt::ttt::detail {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One stretch of tokens inside one mini-batch: tokens [t0, t0+m) of the call, in-mini-batch indices
// [s, s+m). Every gradient in it is taken at the mini-batch start state (ttt.md 1.6: the dual form takes every gradient
// of a mini-batch at its start).
struct Segment {
  int64_t t0, m, s;
  bool commit;  // ends on a mini-batch boundary: fold the gradient sum into the weights
};

std::vector<Segment> make_segments(int64_t L, int64_t K, int64_t s0) {
  std::vector<Segment> segs;
  int64_t t = 0, s = s0;
  while (t < L) {
    int64_t m = std::min(K - s, L - t);
    segs.push_back({t, m, s, s + m == K});
    t += m;
    s = 0;
  }
  return segs;
}

// Groups of consecutive segments: [begin, end) indices into the segment list.
std::vector<std::pair<size_t, size_t>> make_groups(size_t nseg, int64_t group_size) {
  std::vector<std::pair<size_t, size_t>> g;
  size_t gs = group_size <= 0 ? nseg : static_cast<size_t>(group_size);
  for (size_t b = 0; b < nseg; b += gs) g.push_back({b, std::min(nseg, b + gs)});
  return g;
}

// Inner state of one chunk of streams, per inner layer. An undefined gradient sum means "zero" (saves
// a zero tensor per mini-batch in the common case).
struct Inner {
  std::vector<at::Tensor> W, G;
};

// Per-segment inputs (views into the chunk).
struct SegIn {
  at::Tensor xqa, xka, xv, lr, tok, lnw, lnb;
};

// LayerNorm over the last dim with the reference's formula (biased variance, eps inside the sqrt).
struct LnParts {
  at::Tensor xhat, std;
};
LnParts ln_parts(const at::Tensor& z, double eps) {
  auto mu = z.mean(-1, true);
  auto xc = z - mu;
  auto std = (xc.square().mean(-1, true) + eps).sqrt();
  return {xc / std, std};
}

// d(1/2 ||LN(z) - target||^2)/dz in closed form (spec 1.4, reference ln_fused_l2_bwd).
at::Tensor ln_fused_l2_bwd(const at::Tensor& z, const at::Tensor& target, const at::Tensor& w, const at::Tensor& b,
                           double eps) {
  const double D = static_cast<double>(z.size(-1));
  auto p = ln_parts(z, eps);
  auto gxh = (w * p.xhat + b - target) * w;
  auto num = gxh * D - gxh.sum(-1, true) - p.xhat * (gxh * p.xhat).sum(-1, true);
  return num / (p.std * D);
}

at::Tensor ln_fwd(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b, double eps) {
  return w * ln_parts(z, eps).xhat + b;
}

at::Tensor gelu_tanh(const at::Tensor& x) { return at::gelu(x, "tanh"); }

// Derivative of the tanh-approximate GELU with the reference's constants (gelu_bwd).
at::Tensor gelu_tanh_grad(const at::Tensor& x) {
  auto x2 = x.square();
  auto t = at::tanh(x * (x2 * 0.044715 + 1.0) * 0.79788456);
  return x * 0.5 * (1.0 - t.square()) * (x2 * 0.1070322243 + 0.79788456) + (t + 1.0) * 0.5;
}

at::Tensor with_ones(const at::Tensor& x) {
  auto shape = x.sizes().vec();
  shape.back() = 1;
  return at::cat({x, at::ones(shape, x.options())}, -1);
}

// f_res evaluated at the per-row weights of the dual form, for one layer:
//   row i uses W_i = Wb - tok_i * (A + sum_{j<=i} lr_j keys_j^T G_j)   (E already holds tok_i lr_j mask)
// = q Wb - (E * (q keys^T)) G - tok_i q A.
at::Tensor layer_apply(const at::Tensor& q, const at::Tensor& Wb, const at::Tensor& A, const at::Tensor& keys,
                       const at::Tensor& G, const at::Tensor& E, const at::Tensor& tokq) {
  auto z = at::bmm(q, Wb) - at::bmm(E * at::bmm(q, keys.transpose(1, 2)), G);
  if (A.defined()) z = z - tokq * at::bmm(q, A);
  return z;
}

// Gradients of the inner loss at the mini-batch start state, for the whole segment. Per inner layer l:
// X[l] its augmented input (X[0] = the keys) and G[l] the loss gradient w.r.t. its pre-activation.
// Every layer's gradient is taken at the same (mini-batch start) weights of all layers.
struct InnerGrads {
  at::Tensor xk, target;
  std::vector<at::Tensor> X, G;
};

InnerGrads inner_grads(const Inner& st, const SegIn& in, double eps, int64_t f) {
  const size_t n = st.W.size();
  InnerGrads g;
  g.xk = in.xka.narrow(-1, 0, f);
  g.target = in.xv - g.xk;  // residual f(x) = x + LN(f_res(x)) makes the target XV - XK
  g.X.resize(n);
  g.G.resize(n);
  std::vector<at::Tensor> Z(n);
  g.X[0] = in.xka;
  for (size_t l = 0; l < n; ++l) {
    Z[l] = at::bmm(g.X[l], st.W[l]);
    if (l + 1 < n) g.X[l + 1] = with_ones(gelu_tanh(Z[l]));
  }
  g.G[n - 1] = ln_fused_l2_bwd(Z[n - 1], g.target, in.lnw, in.lnb, eps);
  for (size_t l = n - 1; l-- > 0;) {
    const auto& Wn = st.W[l + 1];
    g.G[l] = at::bmm(g.G[l + 1], Wn.narrow(1, 0, Wn.size(1) - 1).transpose(1, 2)) * gelu_tanh_grad(Z[l]);
  }
  return g;
}

// Pre-LN output of the inner model for query rows q (augmented) at the dual-form per-row weights.
// `twice` (tests only, pitfalls.md row 4): layers after the first apply their update a second time.
at::Tensor model_apply(const at::Tensor& qa, const Inner& st, const InnerGrads& g, const at::Tensor& E,
                       const at::Tensor& tokq, bool twice = false) {
  at::Tensor z;
  for (size_t l = 0; l < st.W.size(); ++l) {
    auto inp = l == 0 ? qa : with_ones(gelu_tanh(z));
    if (twice && l > 0)
      z = layer_apply(inp, st.W[l], st.G[l].defined() ? st.G[l] * 2.0 : st.G[l], g.X[l], g.G[l], E * 2.0, tokq);
    else
      z = layer_apply(inp, st.W[l], st.G[l], g.X[l], g.G[l], E, tokq);
  }
  return z;
}

at::Tensor inner_loss(const at::Tensor& z, const at::Tensor& target, const SegIn& in, double eps) {
  return (ln_fwd(z, in.lnw, in.lnb, eps) - target).square().sum(-1) * 0.5;
}

struct ProbeSlices {  // chunk views of the probe tensors
  at::Tensor tokprev;
  std::vector<at::Tensor> W0;
  at::Tensor l0, lprev, lafter;
};

// One segment: returns the output rows and advances the state (functional: no in-place ops, so the
// same code runs under autograd in the backward's recomputation).
at::Tensor segment_step(const Segment& sg, Inner& st, const SegIn& in, double eps, const at::Tensor& mask,
                        const at::Tensor& strict_mask, ProbeSlices* pr) {
  const int64_t m = sg.m;
  const int64_t f = in.xv.size(-1);
  const size_t n = st.W.size();
  const bool twice = n > 1 && pitfall::on(4);  // tests only: pitfalls.md row 4
  auto g = inner_grads(st, in, eps, f);
  auto tokq = in.tok.view({1, m, 1});
  // E[i, j] = tok_i * lr_j for j <= i (spec 1.5)
  auto E = tokq * in.lr.unsqueeze(1) * mask;
  auto z = model_apply(in.xqa, st, g, E, tokq, twice);
  auto out = in.xqa.narrow(-1, 0, f) + ln_fwd(z, in.lnw, in.lnb, eps);

  if (pr) {
    at::NoGradGuard ng;
    pr->lafter.narrow(1, sg.t0, m).copy_(inner_loss(model_apply(in.xka, st, g, E, tokq, twice), g.target, in, eps));
    auto tokp = pr->tokprev.narrow(0, sg.t0, m).view({1, m, 1});
    auto Ep = tokp * in.lr.unsqueeze(1) * strict_mask;
    pr->lprev.narrow(1, sg.t0, m).copy_(inner_loss(model_apply(in.xka, st, g, Ep, tokp, twice), g.target, in, eps));
    at::Tensor z0;
    for (size_t l = 0; l < n; ++l) z0 = at::bmm(l == 0 ? in.xka : with_ones(gelu_tanh(z0)), pr->W0[l]);
    pr->l0.narrow(1, sg.t0, m).copy_(inner_loss(z0, g.target, in, eps));
  }

  // Gradient sums over the segment, per layer: S = sum_j lr_j X_j^T G_j (+ what earlier tokens of
  // this mini-batch accumulated).
  auto lrc = in.lr.unsqueeze(-1);
  auto tl = in.tok.narrow(0, m - 1, 1);
  for (size_t l = 0; l < n; ++l) {
    auto S = at::bmm((lrc * g.X[l]).transpose(1, 2), g.G[l]);
    if (st.G[l].defined()) S = S + st.G[l];
    if (sg.commit) {
      // End of a mini-batch: W <- W0 - tok_K * S (the state the last token used), sums restart at 0.
      st.W[l] = st.W[l] - tl * S;
      st.G[l] = at::Tensor();
    } else {
      st.G[l] = S;
    }
  }
  return out;
}

struct Masks {
  at::Tensor incl, strict;  // [K, K] lower triangular with / without the diagonal
};
Masks make_masks(int64_t K, const at::TensorOptions& opt) {
  auto ones = at::ones({K, K}, opt);
  if (pitfall::on(1)) return {ones, ones};  // tests only: the bidirectional mini-batch of pitfalls.md row 1
  return {at::tril(ones), at::tril(ones, -1)};
}

SegIn seg_in(const ScanInputs& in, int64_t t0, int64_t m) {
  auto sl = [&](const at::Tensor& t) { return t.narrow(1, t0, m); };
  return {sl(in.XQa), sl(in.XKa), sl(in.XV), sl(in.lr), in.tok.narrow(0, t0, m), in.lnw, in.lnb};
}

at::Tensor mask_for(const Masks& mk, const Segment& sg, bool strict) {
  const auto& M = strict ? mk.strict : mk.incl;
  return M.narrow(0, sg.s, sg.m).narrow(1, sg.s, sg.m);
}

// The state the tensor path starts from: all N streams (the gradient sums only when live).
Inner start_state(const std::vector<at::Tensor>& W, const std::vector<at::Tensor>& G, bool live_acc) {
  Inner st;
  st.W = W;
  st.G.resize(W.size());
  if (live_acc) st.G = G;
  return st;
}

// Streams per thread of the fused kernels: enough that a thread's share outweighs waking it (tens of
// microseconds; far more when processes share the cores and the team waits for a descheduled thread):
// small scans (the tests', a tiny model's) run on the calling thread.
int64_t streams_per_thread(int64_t L, const std::vector<int64_t>& d) {
  int64_t state = 0;
  for (size_t l = 0; l + 1 < d.size(); ++l) state += (d[l] + 1) * d[l + 1];
  const int64_t per_stream = std::max<int64_t>(1, L * state);  // ~ multiply-adds / 8 of one stream
  return std::max<int64_t>(1, (int64_t{1} << 22) / per_stream);
}

// The scan through the hand-fused per-stream kernel (ttt_scan_kernel.h, TTT-Linear and TTT-MLP):
// float32 on a CPU with AVX2 + FMA, the causal mini-batch mask. Other cases take the tensor ops below. Probes or not,
// the outputs come from the same kernel code (asking for probes changes no output bit).
bool fused_scan_applies(const ScanSpec& sp, const ScanInputs& in, const ScanProbes* probes) {
  if (!util::fused_kernels_enabled() || !util::cpu_has_avx2_fma()) return false;
  if (pitfall::on(1)) return false;                   // tests only: pitfalls.md row 1's bidirectional mask
  if (sp.layers > 1 && pitfall::on(4)) return false;  // tests only: pitfalls.md row 4 (update applied twice)
  auto cpu_f32 = [](const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat;
  };
  // Any layout will do: the kernels read contiguous copies (no copy where already contiguous).
  for (const at::Tensor* t : {&in.XQa, &in.XKa, &in.XV, &in.lr, &in.tok, &in.lnw, &in.lnb})
    if (!cpu_f32(*t)) return false;
  for (size_t l = 0; l < in.W.size(); ++l)
    if (!cpu_f32(in.W[l]) || !cpu_f32(in.G[l])) return false;
  if (probes) {
    for (const at::Tensor* t : {&probes->tokprev, &probes->l0, &probes->lprev, &probes->lafter})
      if (!cpu_f32(*t)) return false;
    if (probes->W0.size() != in.W.size()) return false;
    for (const auto& w : probes->W0)
      if (!cpu_f32(w)) return false;
  }
  return true;
}

// The scan's inputs as the fused kernels read them: contiguous float32 (no copy where already so), the
// inner widths d_0 = f, hidden widths, d_n = f, and one stream's view.
struct FusedInputs {
  int64_t N, L, f;
  std::vector<int64_t> d;
  at::Tensor xqa, xka, xv, lr, tok, lnw, lnb;

  explicit FusedInputs(const ScanInputs& in)
      : N(in.XV.size(0)),
        L(in.XV.size(1)),
        f(in.XV.size(2)),
        d{f},
        xqa(in.XQa.contiguous()),
        xka(in.XKa.contiguous()),
        xv(in.XV.contiguous()),
        lr(in.lr.contiguous()),
        tok(in.tok.contiguous()),
        lnw(in.lnw.contiguous()),
        lnb(in.lnb.contiguous()) {
    for (size_t l = 0; l < in.W.size(); ++l) {
      MT_CHECK(in.W[l].dim() == 3 && in.W[l].size(0) == N && in.W[l].size(1) == d.back() + 1, "ttt scan: inner layer ",
               l, " weight of shape ", shape_str(in.W[l].sizes().vec()), " after width ", d.back());
      d.push_back(in.W[l].size(2));
    }
    MT_CHECK(in.XQa.size(-1) == f + 1 && d.back() == f && in.lnw.numel() == N * f,
             "ttt scan: inconsistent shapes (f = ", f, ")");
  }
  size_t layers() const { return d.size() - 1; }
  int64_t layer_size(size_t l) const { return (d[l] + 1) * d[l + 1]; }
  int64_t state_size() const {
    int64_t s = 0;
    for (size_t l = 0; l < layers(); ++l) s += layer_size(l);
    return s;
  }
  // Stream n's inputs (no output, no state yet).
  ScanStream stream(int64_t n) const {
    ScanStream st;
    st.xqa = xqa.const_data_ptr<float>() + n * L * (f + 1);
    st.xka = xka.const_data_ptr<float>() + n * L * (f + 1);
    st.xv = xv.const_data_ptr<float>() + n * L * f;
    st.lr = lr.const_data_ptr<float>() + n * L;
    st.tok = tok.const_data_ptr<float>();
    st.lnw = lnw.const_data_ptr<float>() + n * f;
    st.lnb = lnb.const_data_ptr<float>() + n * f;
    return st;
  }
  // Stream n's block of a per-layer [N, ...] tensor.
  float* block(const at::Tensor& t, size_t l, int64_t n) const {
    return t.mutable_data_ptr<float>() + n * layer_size(l);
  }
};

void forward_fused(const ScanSpec& sp, const ScanInputs& in, ScanOutputs& o, ScanProbes* probes,
                   std::vector<at::Tensor>* saved) {
  const FusedInputs fi(in);
  const int64_t N = fi.N, L = fi.L, f = fi.f;
  const size_t nl = fi.layers();
  const auto segs = make_segments(L, sp.K, sp.s0);
  const auto groups = make_groups(segs.size(), sp.group_size);
  for (size_t l = 0; l < nl; ++l) {
    o.W[l].copy_(in.W[l]);
    if (sp.s0 > 0) o.G[l].copy_(in.G[l]);  // else the zeros alloc_outputs made
  }
  at::Tensor tokprev, l0, lprev, lafter;  // probes: contiguous inputs, outputs written back below
  std::vector<at::Tensor> W0(nl);
  if (probes) {
    tokprev = probes->tokprev.contiguous();
    for (size_t l = 0; l < nl; ++l) W0[l] = probes->W0[l].contiguous();
    l0 = at::empty({N, L}, o.out.options());
    lprev = at::empty({N, L}, o.out.options());
    lafter = at::empty({N, L}, o.out.options());
  }
  at::parallel_for(0, N, streams_per_thread(L, fi.d), [&](int64_t b, int64_t e) {
    std::vector<float> scratch(static_cast<size_t>(scan_segment_scratch(sp.K, fi.d)));
    for (int64_t n = b; n < e; ++n) {
      ScanStream st = fi.stream(n);
      st.out = o.out.mutable_data_ptr<float>() + n * L * f;
      for (size_t l = 0; l < nl; ++l) {
        st.W.push_back(fi.block(o.W[l], l, n));
        st.G.push_back(fi.block(o.G[l], l, n));
      }
      if (probes) {
        st.tokprev = tokprev.const_data_ptr<float>();
        for (size_t l = 0; l < nl; ++l) st.W0.push_back(fi.block(W0[l], l, n));
        st.l0 = l0.mutable_data_ptr<float>() + n * L;
        st.lprev = lprev.mutable_data_ptr<float>() + n * L;
        st.lafter = lafter.mutable_data_ptr<float>() + n * L;
      }
      bool live = sp.s0 > 0;
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        if (saved)
          for (size_t l = 0; l < nl; ++l)
            std::copy(st.W[l], st.W[l] + fi.layer_size(l), fi.block((*saved)[l], l, static_cast<int64_t>(gi) * N + n));
        for (size_t si = groups[gi].first; si < groups[gi].second; ++si) {
          const auto& sg = segs[si];
          live = scan_segment(st, fi.d, sg.t0, sg.m, sg.commit, live, sp.eps, scratch.data());
        }
      }
    }
  });
  if (probes) {
    probes->l0.copy_(l0);
    probes->lprev.copy_(lprev);
    probes->lafter.copy_(lafter);
  }
}

// Forward over all groups without autograd. Writes outputs, final state, and (when `saved` is given)
// the state of every layer at every group start (saved[l]: [groups, N, ...]).
void forward_no_grad(const ScanSpec& sp, const ScanInputs& in, ScanOutputs& o, ScanProbes* probes,
                     std::vector<at::Tensor>* saved) {
  if (fused_scan_applies(sp, in, probes)) return forward_fused(sp, in, o, probes, saved);
  const int64_t L = in.XV.size(1);
  const size_t nl = in.W.size();
  auto segs = make_segments(L, sp.K, sp.s0);
  auto groups = make_groups(segs.size(), sp.group_size);
  auto masks = make_masks(sp.K, in.XV.options());
  // All N streams batched in each op, on the calling thread (the ops parallelise themselves).
  at::NoGradGuard ng;
  Inner st = start_state(in.W, in.G, sp.s0 > 0);
  ProbeSlices ps, *pps = nullptr;
  if (probes) {
    ps = {probes->tokprev, probes->W0, probes->l0, probes->lprev, probes->lafter};
    pps = &ps;
  }
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    if (saved)
      for (size_t l = 0; l < nl; ++l) (*saved)[l].select(0, gi).copy_(st.W[l]);
    for (size_t si = groups[gi].first; si < groups[gi].second; ++si) {
      const auto& sg = segs[si];
      auto y = segment_step(sg, st, seg_in(in, sg.t0, sg.m), sp.eps, mask_for(masks, sg, false),
                            mask_for(masks, sg, true), pps);
      o.out.narrow(1, sg.t0, sg.m).copy_(y);
    }
  }
  for (size_t l = 0; l < nl; ++l) {
    o.W[l].copy_(st.W[l]);
    if (st.G[l].defined()) o.G[l].copy_(st.G[l]);
  }
}

ScanOutputs alloc_outputs(const ScanInputs& in) {
  ScanOutputs o;
  o.out = at::empty(in.XV.sizes(), in.XV.options());
  for (const auto& w : in.W) {
    o.W.push_back(at::empty_like(w));
    o.G.push_back(at::zeros_like(w));
  }
  return o;
}

void spec_to_ctx(AutogradContext* ctx, const ScanSpec& sp) {
  ctx->saved_data["layers"] = sp.layers;
  ctx->saved_data["K"] = sp.K;
  ctx->saved_data["s0"] = sp.s0;
  ctx->saved_data["group_size"] = sp.group_size;
  ctx->saved_data["eps"] = sp.eps;
}
ScanSpec spec_from_ctx(AutogradContext* ctx) {
  ScanSpec sp;
  sp.layers = ctx->saved_data["layers"].toInt();
  sp.K = ctx->saved_data["K"].toInt();
  sp.s0 = ctx->saved_data["s0"].toInt();
  sp.group_size = ctx->saved_data["group_size"].toInt();
  sp.eps = ctx->saved_data["eps"].toDouble();
  return sp;
}

// Input order of the autograd function: the fixed inputs, then W[0], G[0], W[1], G[1], ...
enum In { XQa, XKa, XV, LR, TOK, LNW, LNB, NFIXED };
constexpr size_t w_at(size_t l) { return NFIXED + 2 * l; }
constexpr size_t g_at(size_t l) { return NFIXED + 2 * l + 1; }

// Gradients in the autograd function's input order: the fixed inputs (in In order), then W[0], G[0], ...
variable_list pack_grads(variable_list fixed, const std::vector<at::Tensor>& gW, const std::vector<at::Tensor>& gG) {
  fixed.resize(NFIXED + 2 * gW.size());
  for (size_t l = 0; l < gW.size(); ++l) {
    fixed[w_at(l)] = gW[l];
    fixed[g_at(l)] = gG[l];
  }
  return fixed;
}

ScanInputs unpack(const variable_list& v, int64_t layers) {
  ScanInputs in{v[XQa], v[XKa], v[XV], v[LR], v[TOK], v[LNW], v[LNB], {}, {}};
  for (int64_t l = 0; l < layers; ++l) {
    in.W.push_back(v[w_at(l)]);
    in.G.push_back(v[g_at(l)]);
  }
  return in;
}

// The backward through the hand-written per-stream kernel (scan_segment_backward), for the cases
// fused_scan_applies accepts. Per stream and checkpoint group, from the last: the group's start state
// is restored from `sW`, advanced segment by segment (states kept), then the segments are
// differentiated in reverse, carrying the gradient w.r.t. the state.
// Returns the gradients in the order of the autograd function's inputs.
variable_list backward_fused(const ScanSpec& sp, const ScanInputs& in, const std::vector<at::Tensor>& sW,
                             const at::Tensor& g_out, const std::vector<at::Tensor>& g_Wend,
                             const std::vector<at::Tensor>& g_Gend) {
  const FusedInputs fi(in);
  const int64_t N = fi.N, L = fi.L, f = fi.f, fa = f + 1, state_size = fi.state_size();
  const size_t nl = fi.layers();
  const auto segs = make_segments(L, sp.K, sp.s0);
  const auto groups = make_groups(segs.size(), sp.group_size);
  size_t max_group = 0;
  for (const auto& [b, e] : groups) max_group = std::max(max_group, e - b);

  const at::Tensor GO = g_out.contiguous();
  std::vector<at::Tensor> SW(nl), G0(nl);
  for (size_t l = 0; l < nl; ++l) SW[l] = sW[l].contiguous(), G0[l] = in.G[l].contiguous();
  // Per-token gradients: every segment zeroes its own rows before accumulating (no memset of the whole).
  auto gXQa = at::empty_like(fi.xqa), gXKa = at::empty_like(fi.xka), gXV = at::empty_like(fi.xv),
       glr = at::empty_like(fi.lr);
  auto gtok = at::empty({N, L}, fi.xv.options()), glnw = at::zeros({N, f}, fi.xv.options()),
       glnb = at::zeros({N, f}, fi.xv.options());
  std::vector<at::Tensor> gW(nl), gG(nl);
  for (size_t l = 0; l < nl; ++l) {  // running gradients w.r.t. the state, from the end state's
    gW[l] = g_Wend[l].clone(at::MemoryFormat::Contiguous);
    gG[l] = g_Gend[l].clone(at::MemoryFormat::Contiguous);
  }

  at::parallel_for(0, N, streams_per_thread(L, fi.d), [&](int64_t b, int64_t e) {
    std::vector<float> scratch(static_cast<size_t>(scan_segment_scratch(sp.K, fi.d)));
    // Start states of the current group's segments, W per layer, and the keys' blocks of every advanced
    // segment (its backward skips recomputing them).
    std::vector<float> states(static_cast<size_t>(state_size) * max_group);
    const int64_t keys_size = scan_keys_scratch(sp.K, fi.d);
    std::vector<float> keys(static_cast<size_t>(keys_size) * max_group);
    // The gradient sums: the call's first segment starts from G0 when s0 > 0 (live); every later
    // segment from zero, which the kernels then neither read nor need (g_live false): adv_g is only
    // the advancing forward's scratch for them.
    std::vector<float> g0(static_cast<size_t>(state_size)), adv_g(static_cast<size_t>(state_size));
    std::vector<float*> segW(nl), segG(nl);
    auto point = [&](std::vector<float*>& ptrs, float* base) {
      int64_t o = 0;
      for (size_t l = 0; l < nl; ++l) ptrs[l] = base + o, o += fi.layer_size(l);
    };
    for (int64_t n = b; n < e; ++n) {
      ScanStream st = fi.stream(n);
      ScanStreamGrads gr{GO.const_data_ptr<float>() + n * L * f,
                         gXQa.mutable_data_ptr<float>() + n * L * fa,
                         gXKa.mutable_data_ptr<float>() + n * L * fa,
                         gXV.mutable_data_ptr<float>() + n * L * f,
                         glr.mutable_data_ptr<float>() + n * L,
                         gtok.mutable_data_ptr<float>() + n * L,
                         glnw.mutable_data_ptr<float>() + n * f,
                         glnb.mutable_data_ptr<float>() + n * f,
                         {},
                         {}};
      for (size_t l = 0; l < nl; ++l) {
        gr.dW.push_back(fi.block(gW[l], l, n));
        gr.dG.push_back(fi.block(gG[l], l, n));
      }
      if (sp.s0 > 0) {
        point(segG, g0.data());
        for (size_t l = 0; l < nl; ++l)
          std::copy(fi.block(G0[l], l, n), fi.block(G0[l], l, n) + fi.layer_size(l), segG[l]);
      }
      for (int64_t gi = static_cast<int64_t>(groups.size()) - 1; gi >= 0; --gi) {
        const auto [sb, se] = groups[gi];
        auto live = [&](size_t si) { return si == 0 && sp.s0 > 0; };  // only the call's first segment
        point(segW, states.data());
        for (size_t l = 0; l < nl; ++l)
          std::copy(fi.block(SW[l], l, gi * N + n), fi.block(SW[l], l, gi * N + n) + fi.layer_size(l), segW[l]);
        if (live(sb)) std::copy(g0.begin(), g0.end(), adv_g.begin());
        // Advance through the group, keeping each segment's start state.
        for (size_t si = sb; si + 1 < se; ++si) {
          float* next = states.data() + (si + 1 - sb) * state_size;
          std::copy(next - state_size, next, next);
          point(segW, next);
          point(segG, adv_g.data());
          st.W = segW;
          st.G = segG;
          const auto& sg = segs[si];
          scan_segment(st, fi.d, sg.t0, sg.m, sg.commit, live(si), sp.eps, scratch.data(),
                       keys.data() + (si - sb) * keys_size);
        }
        // Then differentiate the segments in reverse.
        for (size_t si = se; si-- > sb;) {
          point(segW, states.data() + (si - sb) * state_size);
          point(segG, live(si) ? g0.data() : adv_g.data());
          st.W = segW;
          st.G = segG;
          const auto& sg = segs[si];
          scan_segment_backward(st, gr, fi.d, sg.t0, sg.m, sg.commit, live(si), sp.eps, scratch.data(),
                                si + 1 < se ? keys.data() + (si - sb) * keys_size : nullptr);
        }
      }
    }
  });

  return pack_grads({gXQa, gXKa, gXV, glr, gtok.sum(0), glnw.view(in.lnw.sizes()), glnb.view(in.lnb.sizes())}, gW, gG);
}

// The backward on the tensor path: per checkpoint group, from the last, the forward is recomputed with
// tensor ops over all N streams and differentiated with autograd.
variable_list backward_tensor(const ScanSpec& sp, const ScanInputs& in, const std::vector<at::Tensor>& sW,
                              const at::Tensor& g_out, const std::vector<at::Tensor>& g_Wend,
                              const std::vector<at::Tensor>& g_Gend) {
  const size_t nl = in.W.size();
  const int64_t L = in.XV.size(1);
  auto segs = make_segments(L, sp.K, sp.s0);
  auto groups = make_groups(segs.size(), sp.group_size);
  auto masks = make_masks(sp.K, in.XV.options());
  std::vector<at::Tensor> gW(nl), gG(nl);
  for (size_t l = 0; l < nl; ++l) {
    gW[l] = at::zeros_like(in.W[l]);
    gG[l] = at::zeros_like(in.W[l]);
  }
  auto gXQa = at::zeros_like(in.XQa), gXKa = at::zeros_like(in.XKa), gXV = at::zeros_like(in.XV);
  auto glr = at::zeros_like(in.lr), glnw = at::zeros_like(in.lnw), glnb = at::zeros_like(in.lnb);
  auto gtok = at::zeros({L}, in.tok.options());
  at::AutoGradMode enable(true);
  // Gradient w.r.t. the state at the end of the current group (starts with the outputs' grads).
  std::vector<at::Tensor> cW(nl);
  for (size_t l = 0; l < nl; ++l) cW[l] = g_Wend[l];
  for (int64_t gi = static_cast<int64_t>(groups.size()) - 1; gi >= 0; --gi) {
    const auto [sb, se] = groups[gi];
    const bool first = gi == 0, last = gi + 1 == static_cast<int64_t>(groups.size());
    const bool live_acc = first && sp.s0 > 0;
    auto leaf = [](const at::Tensor& t) { return t.detach().requires_grad_(true); };
    // Leaves per segment, not slices of one group-wide leaf: autograd's slice backward would
    // materialise a zero-filled group-sized gradient for every segment (quadratic in L).
    struct SegLeaves {
      at::Tensor xqa, xka, xv, lr, tok;
    };
    std::vector<SegLeaves> sl_;
    for (size_t si = sb; si < se; ++si) {
      const auto& sg = segs[si];
      auto sl = [&](const at::Tensor& t) { return leaf(t.narrow(1, sg.t0, sg.m)); };
      sl_.push_back({sl(in.XQa), sl(in.XKa), sl(in.XV), sl(in.lr), leaf(in.tok.narrow(0, sg.t0, sg.m))});
    }
    auto lnw = leaf(in.lnw), lnb = leaf(in.lnb);
    Inner st0;
    st0.W.resize(nl);
    st0.G.resize(nl);
    for (size_t l = 0; l < nl; ++l) {
      st0.W[l] = leaf(sW[l].select(0, gi));
      if (live_acc) st0.G[l] = leaf(in.G[l]);
    }
    Inner st = st0;
    std::vector<at::Tensor> outs;
    for (size_t si = sb; si < se; ++si) {
      const auto& sg = segs[si];
      const auto& lv = sl_[si - sb];
      SegIn s{lv.xqa, lv.xka, lv.xv, lv.lr, lv.tok, lnw, lnb};
      outs.push_back(segment_step(sg, st, s, sp.eps, mask_for(masks, sg, false), mask_for(masks, sg, true), nullptr));
    }
    variable_list ys, gys;
    for (size_t si = sb; si < se; ++si) {
      ys.push_back(outs[si - sb]);
      gys.push_back(g_out.narrow(1, segs[si].t0, segs[si].m));
    }
    // A state output that is the untouched input leaf passes its gradient straight through.
    std::vector<at::Tensor> passW(nl), passG(nl);
    auto add_out = [&](const at::Tensor& y, const at::Tensor& leaf_in, const at::Tensor& g, at::Tensor& pass) {
      if (!y.defined() || !g.defined()) return;
      if (leaf_in.defined() && y.is_same(leaf_in)) {
        pass = g;
        return;
      }
      ys.push_back(y);
      gys.push_back(g);
    };
    for (size_t l = 0; l < nl; ++l) add_out(st.W[l], st0.W[l], cW[l], passW[l]);
    if (last)  // only the call's last segment can leave a live gradient sum
      for (size_t l = 0; l < nl; ++l) add_out(st.G[l], st0.G[l], g_Gend[l], passG[l]);
    variable_list xs{lnw, lnb};
    for (size_t l = 0; l < nl; ++l) xs.push_back(st0.W[l]);
    if (live_acc)
      for (size_t l = 0; l < nl; ++l) xs.push_back(st0.G[l]);
    const size_t n_fixed = xs.size();
    for (const auto& lv : sl_) xs.insert(xs.end(), {lv.xqa, lv.xka, lv.xv, lv.lr, lv.tok});
    auto gx = torch::autograd::grad(ys, xs, gys, /*retain_graph=*/false, /*create_graph=*/false,
                                    /*allow_unused=*/true);
    for (size_t si = sb; si < se; ++si) {
      const auto& sg = segs[si];
      const size_t b = n_fixed + 5 * (si - sb);
      auto put = [&](const at::Tensor& dst, const at::Tensor& g) {
        if (g.defined()) dst.narrow(1, sg.t0, sg.m).copy_(g);
      };
      put(gXQa, gx[b]);
      put(gXKa, gx[b + 1]);
      put(gXV, gx[b + 2]);
      put(glr, gx[b + 3]);
      if (gx[b + 4].defined()) gtok.narrow(0, sg.t0, sg.m).add_(gx[b + 4]);
    }
    if (gx[0].defined()) glnw.add_(gx[0]);
    if (gx[1].defined()) glnb.add_(gx[1]);
    auto sum2 = [](const at::Tensor& a, const at::Tensor& b) {
      if (!a.defined()) return b;
      if (!b.defined()) return a;
      return a + b;
    };
    size_t k = 2;
    for (size_t l = 0; l < nl; ++l) cW[l] = sum2(gx[k++], passW[l]);
    if (live_acc) {
      for (size_t l = 0; l < nl; ++l) {
        auto g = sum2(gx[k++], passG[l]);
        if (g.defined()) gG[l].copy_(g);
      }
    } else if (first) {
      // s0 == 0: the input gradient sums are zero by contract and unused; a pass-through from a
      // single uncommitted segment is still their gradient.
      for (size_t l = 0; l < nl; ++l)
        if (passG[l].defined()) gG[l].copy_(passG[l]);
    }
    for (size_t l = 0; l < nl; ++l)
      if (!cW[l].defined()) cW[l] = at::zeros_like(st0.W[l]);
  }
  for (size_t l = 0; l < nl; ++l) gW[l].copy_(cW[l]);
  return pack_grads({gXQa, gXKa, gXV, glr, gtok, glnw, glnb}, gW, gG);
}

struct ScanFunction : public torch::autograd::Function<ScanFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, ScanSpec sp, ScanProbes* probes) {
    variable_list v(inputs.begin(), inputs.end());
    auto in = unpack(v, sp.layers);
    auto o = alloc_outputs(in);
    const int64_t L = in.XV.size(1);
    const int64_t G = static_cast<int64_t>(make_groups(make_segments(L, sp.K, sp.s0).size(), sp.group_size).size());
    std::vector<at::Tensor> saved;
    for (const auto& w : in.W) saved.push_back(at::empty({G, w.size(0), w.size(1), w.size(2)}, w.options()));
    forward_no_grad(sp, in, o, probes, &saved);
    ctx->save_for_backward(v);
    for (size_t l = 0; l < saved.size(); ++l) ctx->saved_data["sW" + std::to_string(l)] = saved[l];
    spec_to_ctx(ctx, sp);
    variable_list r{o.out};
    for (size_t l = 0; l < o.W.size(); ++l) r.insert(r.end(), {o.W[l], o.G[l]});
    return r;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const ScanSpec sp = spec_from_ctx(ctx);
    const size_t nl = static_cast<size_t>(sp.layers);
    auto saved = ctx->get_saved_variables();
    auto in = unpack(saved, sp.layers);
    std::vector<at::Tensor> sW(nl);
    for (size_t l = 0; l < nl; ++l) sW[l] = ctx->saved_data["sW" + std::to_string(l)].toTensor();
    auto gz = [](const at::Tensor& g, const at::Tensor& like) { return g.defined() ? g : at::zeros_like(like); };
    auto g_out = gz(grads[0], in.XV);
    std::vector<at::Tensor> g_Wend(nl), g_Gend(nl);
    for (size_t l = 0; l < nl; ++l) {
      g_Wend[l] = gz(grads[1 + 2 * l], in.W[l]);
      g_Gend[l] = gz(grads[2 + 2 * l], in.W[l]);
    }
    variable_list res = fused_scan_applies(sp, in, nullptr) ? backward_fused(sp, in, sW, g_out, g_Wend, g_Gend)
                                                            : backward_tensor(sp, in, sW, g_out, g_Wend, g_Gend);
    res.push_back(at::Tensor());  // spec
    res.push_back(at::Tensor());  // probes
    return res;
  }
};

}  // namespace

ScanOutputs scan(const ScanSpec& sp, const ScanInputs& in, ScanProbes* probes) {
  MT_CHECK(in.XV.dim() == 3 && in.XV.size(1) >= 1, "ttt scan: XV must be [N, L>=1, f], got ",
           shape_str(in.XV.sizes().vec()));
  MT_CHECK(sp.s0 >= 0 && sp.s0 < sp.K, "ttt scan: bad in-mini-batch offset ", sp.s0);
  MT_CHECK(sp.layers >= 1 && static_cast<int64_t>(in.W.size()) == sp.layers && in.G.size() == in.W.size(),
           "ttt scan: ", sp.layers, " inner layers but ", in.W.size(), " weight and ", in.G.size(), " sum tensors");
  variable_list v{in.XQa, in.XKa, in.XV, in.lr, in.tok, in.lnw, in.lnb};
  for (size_t l = 0; l < in.W.size(); ++l) v.insert(v.end(), {in.W[l], in.G[l]});
  bool needs_grad = false;
  if (at::GradMode::is_enabled())
    for (const auto& t : v) needs_grad = needs_grad || t.requires_grad();
  if (!needs_grad) {
    auto o = alloc_outputs(in);
    forward_no_grad(sp, in, o, probes, nullptr);
    return o;
  }
  auto r = ScanFunction::apply(at::TensorList(v), sp, probes);
  ScanOutputs o;
  o.out = r[0];
  for (int64_t l = 0; l < sp.layers; ++l) {
    o.W.push_back(r[1 + 2 * l]);
    o.G.push_back(r[2 + 2 * l]);
  }
  return o;
}

}  // namespace mt::ttt::detail
