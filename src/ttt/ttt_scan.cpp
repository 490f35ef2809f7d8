#include "ttt/ttt_scan.h"

#include <ATen/core/grad_mode.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <mutex>

#include "util/error.h"
#include "util/pitfall_switch.h"

namespace mt::ttt::detail {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One stretch of tokens inside one mini-batch: tokens [t0, t0+m) of the call, in-mini-batch indices
// [s, s+m). Every gradient in it is taken at the mini-batch start state (spec 1.6, pitfall 5.4).
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

// Inner state of one chunk of streams. An undefined accumulator means "zero" (saves a zero tensor per
// mini-batch in the common case).
struct Inner {
  at::Tensor W1b, G1b, W2b, G2b;
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
at::Tensor ln_fused_l2_bwd(const at::Tensor& z, const at::Tensor& target, const at::Tensor& w,
                           const at::Tensor& b, double eps) {
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
at::Tensor layer_apply(const at::Tensor& q, const at::Tensor& Wb, const at::Tensor& A,
                       const at::Tensor& keys, const at::Tensor& G, const at::Tensor& E,
                       const at::Tensor& tokq) {
  auto z = at::bmm(q, Wb) - at::bmm(E * at::bmm(q, keys.transpose(1, 2)), G);
  if (A.defined()) z = z - tokq * at::bmm(q, A);
  return z;
}

// Gradients of the inner loss at the mini-batch start state, for the whole segment.
struct InnerGrads {
  at::Tensor xk, target, G1, X2a, G2;
};

InnerGrads inner_grads(const Inner& st, const SegIn& in, bool mlp, double eps, int64_t f) {
  InnerGrads g;
  g.xk = in.xka.narrow(-1, 0, f);
  g.target = in.xv - g.xk;  // residual f(x) = x + LN(f_res(x)) makes the target XV - XK
  auto Z1 = at::bmm(in.xka, st.W1b);
  if (!mlp) {
    g.G1 = ln_fused_l2_bwd(Z1, g.target, in.lnw, in.lnb, eps);
    return g;
  }
  const int64_t h = Z1.size(-1);
  g.X2a = with_ones(gelu_tanh(Z1));
  auto Z2 = at::bmm(g.X2a, st.W2b);
  g.G2 = ln_fused_l2_bwd(Z2, g.target, in.lnw, in.lnb, eps);
  auto W2 = st.W2b.narrow(1, 0, h);
  g.G1 = at::bmm(g.G2, W2.transpose(1, 2)) * gelu_tanh_grad(Z1);
  return g;
}

// Pre-LN output of the inner model for query rows q (augmented) at the dual-form per-row weights.
at::Tensor model_apply(const at::Tensor& qa, const Inner& st, const InnerGrads& g, const SegIn& in,
                       const at::Tensor& E, const at::Tensor& tokq, bool mlp) {
  auto z1 = layer_apply(qa, st.W1b, st.G1b, in.xka, g.G1, E, tokq);
  if (!mlp) return z1;
  return layer_apply(with_ones(gelu_tanh(z1)), st.W2b, st.G2b, g.X2a, g.G2, E, tokq);
}

at::Tensor inner_loss(const at::Tensor& z, const at::Tensor& target, const SegIn& in, double eps) {
  return (ln_fwd(z, in.lnw, in.lnb, eps) - target).square().sum(-1) * 0.5;
}

struct ProbeSlices {  // chunk views of the probe tensors
  at::Tensor tokprev, W1b0, W2b0, l0, lprev, lafter;
};

// One segment: returns the output rows and advances the state (functional: no in-place ops, so the
// same code runs under autograd in the backward's recomputation).
at::Tensor segment_step(const Segment& sg, Inner& st, const SegIn& in, bool mlp, double eps,
                        const at::Tensor& mask, const at::Tensor& strict_mask, ProbeSlices* pr) {
  const int64_t m = sg.m;
  const int64_t f = in.xv.size(-1);
  auto g = inner_grads(st, in, mlp, eps, f);
  auto tokq = in.tok.view({1, m, 1});
  // E[i, j] = tok_i * lr_j for j <= i (spec 1.5)
  auto E = tokq * in.lr.unsqueeze(1) * mask;
  auto z = model_apply(in.xqa, st, g, in, E, tokq, mlp);
  auto out = in.xqa.narrow(-1, 0, f) + ln_fwd(z, in.lnw, in.lnb, eps);

  if (pr) {
    at::NoGradGuard ng;
    pr->lafter.narrow(1, sg.t0, m).copy_(inner_loss(model_apply(in.xka, st, g, in, E, tokq, mlp), g.target, in, eps));
    auto tokp = pr->tokprev.narrow(0, sg.t0, m).view({1, m, 1});
    auto Ep = tokp * in.lr.unsqueeze(1) * strict_mask;
    pr->lprev.narrow(1, sg.t0, m).copy_(inner_loss(model_apply(in.xka, st, g, in, Ep, tokp, mlp), g.target, in, eps));
    auto z0 = at::bmm(in.xka, pr->W1b0);
    if (mlp) z0 = at::bmm(with_ones(gelu_tanh(z0)), pr->W2b0);
    pr->l0.narrow(1, sg.t0, m).copy_(inner_loss(z0, g.target, in, eps));
  }

  // Gradient sums over the segment: S = sum_j lr_j keys_j^T G_j (+ what earlier tokens of this
  // mini-batch accumulated).
  auto lrc = in.lr.unsqueeze(-1);
  auto S1 = at::bmm((lrc * in.xka).transpose(1, 2), g.G1);
  if (st.G1b.defined()) S1 = S1 + st.G1b;
  at::Tensor S2;
  if (mlp) {
    S2 = at::bmm((lrc * g.X2a).transpose(1, 2), g.G2);
    if (st.G2b.defined()) S2 = S2 + st.G2b;
  }
  if (sg.commit) {
    // End of a mini-batch: W <- W0 - tok_K * S (the state the last token used), sums restart at 0.
    auto tl = in.tok.narrow(0, m - 1, 1);
    st.W1b = st.W1b - tl * S1;
    st.G1b = at::Tensor();
    if (mlp) {
      st.W2b = st.W2b - tl * S2;
      st.G2b = at::Tensor();
    }
  } else {
    st.G1b = S1;
    if (mlp) st.G2b = S2;
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

SegIn seg_in(const ScanInputs& in, int64_t c0, int64_t n, int64_t t0, int64_t m) {
  auto sl = [&](const at::Tensor& t) { return t.narrow(0, c0, n).narrow(1, t0, m); };
  return {sl(in.XQa), sl(in.XKa), sl(in.XV), sl(in.lr), in.tok.narrow(0, t0, m),
          in.lnw.narrow(0, c0, n), in.lnb.narrow(0, c0, n)};
}

at::Tensor mask_for(const Masks& mk, const Segment& sg, bool strict) {
  const auto& M = strict ? mk.strict : mk.incl;
  return M.narrow(0, sg.s, sg.m).narrow(1, sg.s, sg.m);
}

// Chunk ranges [c0, c0+n) of the N streams.
std::vector<std::pair<int64_t, int64_t>> chunk_ranges(int64_t N, int64_t chunks) {
  std::vector<std::pair<int64_t, int64_t>> r;
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t b = N * c / chunks, e = N * (c + 1) / chunks;
    if (e > b) r.push_back({b, e - b});
  }
  return r;
}

// Runs fn(chunk index, c0, n) for every chunk, always inside an OpenMP team when libtorch has more than
// one thread: libtorch decides whether an op may fork by omp_in_parallel() alone, and tiny ops such
// as bmm and tril on [K, f] slices do fork outside a team (milliseconds each on a loaded machine).
// With fewer chunks than two, the team gets an idle second member so that the work still runs in it.
template <class F>
void for_each_chunk(const std::vector<std::pair<int64_t, int64_t>>& ranges, bool cpu, F&& fn) {
  const int64_t nc = static_cast<int64_t>(ranges.size());
  const int64_t tasks = (cpu && at::get_num_threads() > 1) ? std::max<int64_t>(nc, 2) : nc;
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < std::min(e, nc); ++c) fn(c, ranges[c].first, ranges[c].second);
  });
}

Inner chunk_state(const at::Tensor& W1b, const at::Tensor& G1b, const at::Tensor& W2b,
                  const at::Tensor& G2b, int64_t c0, int64_t n, bool live_acc) {
  Inner st;
  st.W1b = W1b.narrow(0, c0, n);
  if (live_acc) st.G1b = G1b.narrow(0, c0, n);
  if (W2b.defined()) {
    st.W2b = W2b.narrow(0, c0, n);
    if (live_acc) st.G2b = G2b.narrow(0, c0, n);
  }
  return st;
}

// Forward over all groups without autograd. Writes outputs, final state, and (when `saved` is given)
// the state at every group start.
void forward_no_grad(const ScanSpec& sp, const ScanInputs& in, ScanOutputs& o, ScanProbes* probes,
                     at::Tensor* saved_W1, at::Tensor* saved_W2) {
  const int64_t N = in.XV.size(0), L = in.XV.size(1);
  auto segs = make_segments(L, sp.K, sp.s0);
  auto groups = make_groups(segs.size(), sp.group_size);
  auto masks = make_masks(sp.K, in.XV.options());
  auto ranges = chunk_ranges(N, num_chunks(N, in.XV));
  for_each_chunk(ranges, in.XV.device().is_cpu(), [&](int64_t, int64_t c0, int64_t n) {
    at::NoGradGuard ng;
    Inner st = chunk_state(in.W1b, in.G1b, in.W2b, in.G2b, c0, n, sp.s0 > 0);
    ProbeSlices ps, *pps = nullptr;
    if (probes) {
      ps = {probes->tokprev, probes->W1b0.narrow(0, c0, n),
            sp.mlp ? probes->W2b0.narrow(0, c0, n) : at::Tensor(), probes->l0.narrow(0, c0, n),
            probes->lprev.narrow(0, c0, n), probes->lafter.narrow(0, c0, n)};
      pps = &ps;
    }
    auto out = o.out.narrow(0, c0, n);
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      if (saved_W1) {
        saved_W1->select(0, gi).narrow(0, c0, n).copy_(st.W1b);
        if (sp.mlp) saved_W2->select(0, gi).narrow(0, c0, n).copy_(st.W2b);
      }
      for (size_t si = groups[gi].first; si < groups[gi].second; ++si) {
        const auto& sg = segs[si];
        auto y = segment_step(sg, st, seg_in(in, c0, n, sg.t0, sg.m), sp.mlp, sp.eps, mask_for(masks, sg, false),
                              mask_for(masks, sg, true), pps);
        out.narrow(1, sg.t0, sg.m).copy_(y);
      }
    }
    o.W1b.narrow(0, c0, n).copy_(st.W1b);
    if (st.G1b.defined()) o.G1b.narrow(0, c0, n).copy_(st.G1b);
    if (sp.mlp) {
      o.W2b.narrow(0, c0, n).copy_(st.W2b);
      if (st.G2b.defined()) o.G2b.narrow(0, c0, n).copy_(st.G2b);
    }
  });
}

ScanOutputs alloc_outputs(const ScanSpec& sp, const ScanInputs& in) {
  ScanOutputs o;
  o.out = at::empty(in.XV.sizes(), in.XV.options());
  o.W1b = at::empty_like(in.W1b);
  o.G1b = at::zeros_like(in.W1b);
  if (sp.mlp) {
    o.W2b = at::empty_like(in.W2b);
    o.G2b = at::zeros_like(in.W2b);
  }
  return o;
}

void spec_to_ctx(AutogradContext* ctx, const ScanSpec& sp) {
  ctx->saved_data["mlp"] = sp.mlp;
  ctx->saved_data["K"] = sp.K;
  ctx->saved_data["s0"] = sp.s0;
  ctx->saved_data["group_size"] = sp.group_size;
  ctx->saved_data["eps"] = sp.eps;
}
ScanSpec spec_from_ctx(AutogradContext* ctx) {
  ScanSpec sp;
  sp.mlp = ctx->saved_data["mlp"].toBool();
  sp.K = ctx->saved_data["K"].toInt();
  sp.s0 = ctx->saved_data["s0"].toInt();
  sp.group_size = ctx->saved_data["group_size"].toInt();
  sp.eps = ctx->saved_data["eps"].toDouble();
  return sp;
}

// Input order of the autograd function.
enum In { XQa, XKa, XV, LR, TOK, LNW, LNB, W1B, G1B, W2B, G2B };

ScanInputs unpack(const variable_list& v, bool mlp) {
  ScanInputs in{v[XQa], v[XKa], v[XV], v[LR], v[TOK], v[LNW], v[LNB], v[W1B], v[G1B], {}, {}};
  if (mlp) {
    in.W2b = v[W2B];
    in.G2b = v[G2B];
  }
  return in;
}

struct ScanFunction : public torch::autograd::Function<ScanFunction> {
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, ScanSpec sp, ScanProbes* probes) {
    variable_list v(inputs.begin(), inputs.end());
    auto in = unpack(v, sp.mlp);
    auto o = alloc_outputs(sp, in);
    const int64_t L = in.XV.size(1);
    const int64_t G = static_cast<int64_t>(make_groups(make_segments(L, sp.K, sp.s0).size(), sp.group_size).size());
    auto sW1 = at::empty({G, in.W1b.size(0), in.W1b.size(1), in.W1b.size(2)}, in.W1b.options());
    at::Tensor sW2;
    if (sp.mlp) sW2 = at::empty({G, in.W2b.size(0), in.W2b.size(1), in.W2b.size(2)}, in.W2b.options());
    forward_no_grad(sp, in, o, probes, &sW1, sp.mlp ? &sW2 : nullptr);
    ctx->save_for_backward(v);
    ctx->saved_data["sW1"] = sW1;
    if (sp.mlp) ctx->saved_data["sW2"] = sW2;
    spec_to_ctx(ctx, sp);
    if (sp.mlp) return {o.out, o.W1b, o.G1b, o.W2b, o.G2b};
    return {o.out, o.W1b, o.G1b};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const ScanSpec sp = spec_from_ctx(ctx);
    auto saved = ctx->get_saved_variables();
    auto in = unpack(saved, sp.mlp);
    auto sW1 = ctx->saved_data["sW1"].toTensor();
    at::Tensor sW2 = sp.mlp ? ctx->saved_data["sW2"].toTensor() : at::Tensor();
    const int64_t N = in.XV.size(0), L = in.XV.size(1);
    auto segs = make_segments(L, sp.K, sp.s0);
    auto groups = make_groups(segs.size(), sp.group_size);
    auto masks = make_masks(sp.K, in.XV.options());
    auto ranges = chunk_ranges(N, num_chunks(N, in.XV));

    auto gz = [](const at::Tensor& g, const at::Tensor& like) { return g.defined() ? g : at::zeros_like(like); };
    auto g_out = gz(grads[0], in.XV);
    auto g_W1end = gz(grads[1], in.W1b), g_G1end = gz(grads[2], in.W1b);
    at::Tensor g_W2end, g_G2end;
    if (sp.mlp) {
      g_W2end = gz(grads[3], in.W2b);
      g_G2end = gz(grads[4], in.W2b);
    }

    auto gXQa = at::zeros_like(in.XQa), gXKa = at::zeros_like(in.XKa), gXV = at::zeros_like(in.XV);
    auto glr = at::zeros_like(in.lr), glnw = at::zeros_like(in.lnw), glnb = at::zeros_like(in.lnb);
    auto gtok_parts = at::zeros({static_cast<int64_t>(ranges.size()), L}, in.tok.options());
    auto gW1 = at::zeros_like(in.W1b), gG1 = at::zeros_like(in.W1b);
    at::Tensor gW2, gG2;
    if (sp.mlp) {
      gW2 = at::zeros_like(in.W2b);
      gG2 = at::zeros_like(in.W2b);
    }

    for_each_chunk(ranges, in.XV.device().is_cpu(), [&](int64_t ci, int64_t c0, int64_t n) {
      at::AutoGradMode enable(true);
      auto cs = [&](const at::Tensor& t) { return t.narrow(0, c0, n); };
      // Gradient w.r.t. the state at the end of the current group (starts with the outputs' grads).
      at::Tensor cW1 = cs(g_W1end), cW2 = sp.mlp ? cs(g_W2end) : at::Tensor();
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
          auto sl = [&](const at::Tensor& t) { return leaf(t.narrow(0, c0, n).narrow(1, sg.t0, sg.m)); };
          sl_.push_back({sl(in.XQa), sl(in.XKa), sl(in.XV), sl(in.lr), leaf(in.tok.narrow(0, sg.t0, sg.m))});
        }
        auto lnw = leaf(cs(in.lnw)), lnb = leaf(cs(in.lnb));
        Inner st0;
        st0.W1b = leaf(cs(sW1.select(0, gi)));
        if (sp.mlp) st0.W2b = leaf(cs(sW2.select(0, gi)));
        if (live_acc) {
          st0.G1b = leaf(cs(in.G1b));
          if (sp.mlp) st0.G2b = leaf(cs(in.G2b));
        }
        Inner st = st0;
        std::vector<at::Tensor> outs;
        for (size_t si = sb; si < se; ++si) {
          const auto& sg = segs[si];
          const auto& lv = sl_[si - sb];
          SegIn s{lv.xqa, lv.xka, lv.xv, lv.lr, lv.tok, lnw, lnb};
          outs.push_back(segment_step(sg, st, s, sp.mlp, sp.eps, mask_for(masks, sg, false), mask_for(masks, sg, true),
                                      nullptr));
        }
        variable_list ys, gys;
        for (size_t si = sb; si < se; ++si) {
          ys.push_back(outs[si - sb]);
          gys.push_back(cs(g_out).narrow(1, segs[si].t0, segs[si].m));
        }
        // A state output that is the untouched input leaf passes its gradient straight through.
        at::Tensor passW1, passW2, passG1, passG2;
        auto add_out = [&](const at::Tensor& y, const at::Tensor& leaf_in, const at::Tensor& g, at::Tensor& pass) {
          if (!y.defined() || !g.defined()) return;
          if (leaf_in.defined() && y.is_same(leaf_in)) {
            pass = g;
            return;
          }
          ys.push_back(y);
          gys.push_back(g);
        };
        add_out(st.W1b, st0.W1b, cW1, passW1);
        if (sp.mlp) add_out(st.W2b, st0.W2b, cW2, passW2);
        if (last) {  // only the call's last segment can leave a live gradient sum
          add_out(st.G1b, st0.G1b, cs(g_G1end), passG1);
          if (sp.mlp) add_out(st.G2b, st0.G2b, cs(g_G2end), passG2);
        }
        variable_list xs{lnw, lnb, st0.W1b};
        if (sp.mlp) xs.push_back(st0.W2b);
        if (live_acc) {
          xs.push_back(st0.G1b);
          if (sp.mlp) xs.push_back(st0.G2b);
        }
        const size_t n_fixed = xs.size();
        for (const auto& lv : sl_) xs.insert(xs.end(), {lv.xqa, lv.xka, lv.xv, lv.lr, lv.tok});
        auto gx = torch::autograd::grad(ys, xs, gys, /*retain_graph=*/false, /*create_graph=*/false,
                                        /*allow_unused=*/true);
        for (size_t si = sb; si < se; ++si) {
          const auto& sg = segs[si];
          const size_t b = n_fixed + 5 * (si - sb);
          auto put = [&](const at::Tensor& dst, const at::Tensor& g) {
            if (g.defined()) dst.narrow(0, c0, n).narrow(1, sg.t0, sg.m).copy_(g);
          };
          put(gXQa, gx[b]);
          put(gXKa, gx[b + 1]);
          put(gXV, gx[b + 2]);
          put(glr, gx[b + 3]);
          if (gx[b + 4].defined()) gtok_parts.select(0, ci).narrow(0, sg.t0, sg.m).add_(gx[b + 4]);
        }
        if (gx[0].defined()) cs(glnw).add_(gx[0]);
        if (gx[1].defined()) cs(glnb).add_(gx[1]);
        auto sum2 = [](const at::Tensor& a, const at::Tensor& b) {
          if (!a.defined()) return b;
          if (!b.defined()) return a;
          return a + b;
        };
        size_t k = 2;
        cW1 = sum2(gx[k++], passW1);
        if (sp.mlp) cW2 = sum2(gx[k++], passW2);
        if (live_acc) {
          auto g1 = sum2(gx[k++], passG1);
          if (g1.defined()) cs(gG1).copy_(g1);
          if (sp.mlp) {
            auto g2 = sum2(gx[k++], passG2);
            if (g2.defined()) cs(gG2).copy_(g2);
          }
        } else if (first) {
          // s0 == 0: the input gradient sums are zero by contract and unused; a pass-through from a
          // single uncommitted segment is still their gradient.
          if (passG1.defined()) cs(gG1).copy_(passG1);
          if (passG2.defined()) cs(gG2).copy_(passG2);
        }
        if (!cW1.defined()) cW1 = at::zeros_like(st0.W1b);
        if (sp.mlp && !cW2.defined()) cW2 = at::zeros_like(st0.W2b);
      }
      cs(gW1).copy_(cW1);
      if (sp.mlp) cs(gW2).copy_(cW2);
    });

    variable_list res(sp.mlp ? 11 : 9);
    res[XQa] = gXQa;
    res[XKa] = gXKa;
    res[XV] = gXV;
    res[LR] = glr;
    res[TOK] = gtok_parts.sum(0);
    res[LNW] = glnw;
    res[LNB] = glnb;
    res[W1B] = gW1;
    res[G1B] = gG1;
    if (sp.mlp) {
      res[W2B] = gW2;
      res[G2B] = gG2;
    }
    res.push_back(at::Tensor());  // spec
    res.push_back(at::Tensor());  // probes
    return res;
  }
};

}  // namespace

int64_t num_chunks(int64_t N, const at::Tensor& like) {
  if (!like.device().is_cpu()) return 1;  // one stream of kernels; the device parallelises
  // A thread fork/join costs tens of microseconds (milliseconds on a loaded machine): split only when
  // each chunk has enough work (like.numel() = N * L * f elements of XV).
  const int64_t min_elems_per_chunk = 1 << 15;
  const int64_t by_work = std::max<int64_t>(1, like.numel() / min_elems_per_chunk);
  return std::max<int64_t>(1, std::min({N, static_cast<int64_t>(at::get_num_threads()), by_work}));
}

ScanOutputs scan(const ScanSpec& sp, const ScanInputs& in, ScanProbes* probes) {
  MT_CHECK(in.XV.dim() == 3 && in.XV.size(1) >= 1, "ttt scan: XV must be [N, L>=1, f], got ",
           shape_str(in.XV.sizes().vec()));
  MT_CHECK(sp.s0 >= 0 && sp.s0 < sp.K, "ttt scan: bad in-mini-batch offset ", sp.s0);
  variable_list v{in.XQa, in.XKa, in.XV, in.lr, in.tok, in.lnw, in.lnb, in.W1b, in.G1b};
  if (sp.mlp) {
    v.push_back(in.W2b);
    v.push_back(in.G2b);
  }
  bool needs_grad = false;
  if (at::GradMode::is_enabled())
    for (const auto& t : v) needs_grad = needs_grad || t.requires_grad();
  if (!needs_grad) {
    auto o = alloc_outputs(sp, in);
    forward_no_grad(sp, in, o, probes, nullptr, nullptr);
    return o;
  }
  auto r = ScanFunction::apply(at::TensorList(v), sp, probes);
  ScanOutputs o;
  o.out = r[0];
  o.W1b = r[1];
  o.G1b = r[2];
  if (sp.mlp) {
    o.W2b = r[3];
    o.G2b = r[4];
  }
  return o;
}

}  // namespace mt::ttt::detail
