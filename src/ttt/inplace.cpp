#include "ttt/inplace.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "io/safetensors.h"
#include "nn/transformer.h"
#include "util/choices.h"
#include "util/error.h"
#include "util/pitfall_switch.h"

namespace mt::ttt {

namespace {
const util::Choices<InPlaceStrategy> kStrategies{{{"linear_attention", InPlaceStrategy::kLinearAttention},
                                                  {"running", InPlaceStrategy::kRunning},
                                                  {"materialized", InPlaceStrategy::kMaterialized}}};
}  // namespace

const char* strategy_name(InPlaceStrategy s) { return kStrategies.name(s); }

InPlaceStrategy parse_strategy(const std::string& name) { return kStrategies.parse(name, "In-Place TTT strategy"); }

namespace {

// In-place writes into the state are only safe when no autograd graph can have saved the tensor
// being overwritten; with grad mode on, every state update is out of place.
bool may_write_in_place() { return !c10::GradMode::is_enabled(); }

// buf[b, pos[b] : pos[b] + S] = vals[b] for every slot b (vals [B, S, X]).
void put_rows(at::Tensor& buf, const at::Tensor& vals, const std::vector<int64_t>& pos) {
  const int64_t B = buf.size(0), S = vals.size(1);
  if (may_write_in_place()) {
    for (int64_t b = 0; b < B; ++b) buf.select(0, b).narrow(0, pos[b], S).copy_(vals.select(0, b));
    return;
  }
  std::vector<int64_t> bi, pi;
  bi.reserve(B * S);
  pi.reserve(B * S);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      bi.push_back(b);
      pi.push_back(pos[b] + s);
    }
  auto opt = at::TensorOptions().dtype(at::kLong);
  at::Tensor bt = at::tensor(bi, opt).to(buf.device()), pt = at::tensor(pi, opt).to(buf.device());
  buf = buf.index_put({bt, pt}, vals.reshape({B * S, vals.size(2)}));
}

// Σ_{j<i} (h_i h_jᵀ) v_j for chunks i = 1..n-1 of h [B, L, H], v [B, >= (n-1)·C, D] -> [B, L-C, D].
// A custom backward: with plain autograd every use of the prefix h[:, :iC] is a slice whose gradient
// is a zero-filled [B, L, H] tensor added into the total (measured: a sixth of the forward+backward
// time at D 1024, H 2816, T 2048); here the gradients accumulate into one buffer. The C × iC score
// blocks are kept for the backward (T²/2 floats per row, 8 MB at T 2048), never a D×H update.
struct LinearAttentionFn : torch::autograd::Function<LinearAttentionFn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const at::Tensor& v,
                            int64_t C) {
    const int64_t L = h.size(1), n = (L + C - 1) / C;
    std::vector<at::Tensor> outs, scores;
    for (int64_t i = 1; i < n; ++i) {
      at::Tensor q = h.narrow(1, i * C, std::min(C, L - i * C));
      at::Tensor s = at::matmul(q, h.narrow(1, 0, i * C).transpose(1, 2));
      outs.push_back(at::matmul(s, v.narrow(1, 0, i * C)));
      scores.push_back(s);
    }
    ctx->save_for_backward({h, v});
    ctx->saved_data["scores"] = scores;
    ctx->saved_data["C"] = C;
    return at::cat(outs, 1);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &h = saved[0], &v = saved[1];
    const std::vector<at::Tensor> scores = ctx->saved_data["scores"].toTensorVector();
    const int64_t C = ctx->saved_data["C"].toInt(), L = h.size(1), n = (L + C - 1) / C;
    at::Tensor dh = at::zeros_like(h), dv = at::zeros_like(v);
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {dh, dv, at::Tensor()};
    for (int64_t i = 1; i < n; ++i) {
      const int64_t len = std::min(C, L - i * C);
      at::Tensor gi = g.narrow(1, (i - 1) * C, len), q = h.narrow(1, i * C, len);
      at::Tensor k = h.narrow(1, 0, i * C), vv = v.narrow(1, 0, i * C);
      at::Tensor ds = at::matmul(gi, vv.transpose(1, 2));              // [B, len, iC]
      dh.narrow(1, i * C, len).add_(at::matmul(ds, k));                // through the query
      dh.narrow(1, 0, i * C).add_(at::matmul(ds.transpose(1, 2), q));  // through the keys
      dv.narrow(1, 0, i * C).add_(at::matmul(scores[i - 1].transpose(1, 2), gi));
    }
    return {dh, dv, at::Tensor()};
  }
};

void check_input(const char* what, const at::Tensor& a, int64_t dim) {
  MT_CHECK(a.defined(), "InPlaceFFN: ", what, " is undefined");
  MT_CHECK(a.dim() == 3 && a.size(2) == dim, "InPlaceFFN: ", what, " must be [B, T, ", dim, "], got ",
           shape_str(a.sizes().vec()));
  MT_CHECK(at::isFloatingType(a.scalar_type()), "InPlaceFFN: ", what, " must be floating point, got ",
           c10::toString(a.scalar_type()));
}

}  // namespace

void InPlaceConfig::validate() const {
  MT_CHECK(dim > 0, "inplace config: dim must be > 0, got ", dim);
  MT_CHECK(hidden > 0, "inplace config: hidden must be > 0, got ", hidden);
  MT_CHECK(chunk_size > 0, "inplace config: chunk_size must be > 0, got ", chunk_size);
  MT_CHECK(std::isfinite(lr), "inplace config: lr must be finite, got ", lr);
  MT_CHECK(conv_kernel >= 1, "inplace config: conv_kernel must be >= 1, got ", conv_kernel);
  MT_CHECK(std::isfinite(delta_clip_fro_norm) && delta_clip_fro_norm >= 0,
           "inplace config: delta_clip_fro_norm must be >= 0 (0: off), got ", delta_clip_fro_norm);
  MT_CHECK(lookahead() >= 0 && lookahead() <= conv_kernel - 1, "inplace config: conv_lookahead must be in [0, ",
           conv_kernel - 1, "] (or -1 for centred), got ", conv_lookahead);
  try {
    nn::parse_activation(activation);
  } catch (const Error&) {
    fail("inplace config: unknown activation '", activation, "'");
  }
}

InPlaceConfig InPlaceConfig::from_json_file(const std::string& path) {
  std::ifstream f(path);
  MT_CHECK(f, path, ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  InPlaceConfig c;
  auto get = [&](const char* key, auto& out, bool required) {
    if (!j.contains(key)) {
      MT_CHECK(!required, path, ": missing field '", key, "'");
      return;
    }
    try {
      j.at(key).get_to(out);
    } catch (const std::exception& e) {
      fail(path, ": field '", key, "': ", e.what());
    }
  };
  get("dim", c.dim, true);
  get("hidden", c.hidden, true);
  get("chunk", c.chunk_size, true);
  get("lr", c.lr, true);
  get("use_proj", c.use_proj, true);
  get("activation", c.activation, false);
  get("conv_kernel", c.conv_kernel, false);
  get("conv_lookahead", c.conv_lookahead, false);
  get("delta_clip_fro_norm", c.delta_clip_fro_norm, false);
  try {
    c.validate();
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
void InPlaceState::reset() {
  if (may_write_in_place()) {
    dw.zero_();
  } else {
    dw = at::zeros_like(dw);
  }
  std::fill(pos.begin(), pos.end(), 0);
}

void InPlaceState::reset_slot(int64_t b) {
  MT_CHECK(b >= 0 && b < batch(), "InPlaceState::reset_slot: slot ", b, " out of range [0, ", batch(), ")");
  if (may_write_in_place()) {
    dw.select(0, b).zero_();
  } else {
    dw = dw.index_fill(0, at::tensor({b}, at::TensorOptions().dtype(at::kLong)).to(dw.device()), 0);
  }
  pos[b] = 0;
}

void InPlaceState::reset(const at::Tensor& mask) {
  if (!mask.defined()) return reset();
  MT_CHECK(mask.dim() == 1 && mask.size(0) == batch(), "InPlaceState::reset: mask must be [", batch(), "], got ",
           shape_str(mask.sizes().vec()));
  at::Tensor m = mask.to(at::kCPU, at::kBool).contiguous();
  const bool* p = m.data_ptr<bool>();
  for (int64_t b = 0; b < batch(); ++b)
    if (p[b]) reset_slot(b);
}

void InPlaceState::detach() {
  dw = dw.detach();
  h_buf = h_buf.detach();
  t_buf = t_buf.detach();
}

at::Tensor InPlaceState::w_final(int64_t b) const {
  MT_CHECK(b >= 0 && b < batch(), "InPlaceState::w_final: slot ", b, " out of range [0, ", batch(), ")");
  return w0.to(dw.scalar_type()) + dw.select(0, b);
}

// ---------------------------------------------------------------------------------------------
InPlaceGatingImpl::InPlaceGatingImpl(int64_t dim, int64_t hidden) {
  linear_in = register_module("linear_in", nn::Linear(dim, 2 * hidden));
  linear_out = register_module("linear_out", nn::Linear(hidden, dim));
}

InPlaceFFNImpl::InPlaceFFNImpl(InPlaceConfig c) : cfg(std::move(c)) {
  cfg.validate();
  act = nn::parse_activation(cfg.activation);
  gating = register_module("gating", InPlaceGating(cfg.dim, cfg.hidden));
  // Registered as submodules so that the names are exactly ttt_conv.weight / ttt_proj.weight.
  auto conv = register_module("ttt_conv", std::make_shared<torch::nn::Module>());
  conv_weight = conv->register_parameter("weight", at::zeros({cfg.dim, 1, cfg.conv_kernel}));
  if (cfg.use_proj) {
    auto proj = register_module("ttt_proj", std::make_shared<torch::nn::Module>());
    proj_weight = proj->register_parameter("weight", at::zeros({cfg.dim, cfg.dim}));
  }
  init_weights(0);
}

at::ScalarType InPlaceFFNImpl::acc_dtype() const {
  return at::promote_types(gating->linear_out->weight.scalar_type(), at::kFloat);
}

std::vector<std::string> InPlaceFFNImpl::names() const {
  std::vector<std::string> n;
  for (const auto& kv : named_parameters()) n.push_back(kv.key());
  return n;
}

void InPlaceFFNImpl::init_weights(uint64_t seed, double std, double diag_std) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto fill = [](at::Tensor& p, const at::Tensor& v) { p.copy_(v); };
  for (at::Tensor* w : {&gating->linear_in->weight, &gating->linear_out->weight})
    fill(*w, at::empty(w->sizes(), at::kFloat).normal_(0, std, gen));
  conv_weight.zero_();
  if (proj_weight.defined()) {
    at::Tensor p = at::zeros({cfg.dim, cfg.dim}, at::kFloat);
    p.diagonal().normal_(0, diag_std, gen);
    fill(proj_weight, p);
  }
}

void InPlaceFFNImpl::load(const std::map<std::string, at::Tensor>& tensors) {
  auto params = named_parameters();
  for (const auto& [name, t] : tensors)
    MT_CHECK(params.contains(name), "InPlaceFFN: unexpected tensor '", name, "' with shape ",
             shape_str(t.sizes().vec()), " (use_proj=", cfg.use_proj, ")");
  at::NoGradGuard ng;
  for (auto& kv : params) {
    auto it = tensors.find(kv.key());
    MT_CHECK(it != tensors.end(), "InPlaceFFN: missing tensor '", kv.key(), "' (expected shape ",
             shape_str(kv.value().sizes().vec()), ")");
    MT_CHECK(it->second.sizes() == kv.value().sizes(), "InPlaceFFN: tensor '", kv.key(), "': expected shape ",
             shape_str(kv.value().sizes().vec()), ", got ", shape_str(it->second.sizes().vec()));
    kv.value().copy_(it->second);
  }
}

void InPlaceFFNImpl::load_file(const std::string& path) {
  try {
    load(io::load_all(path));
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
}

at::Tensor InPlaceFFNImpl::hidden_act(const at::Tensor& x) const {
  at::Tensor u = at::linear(x, gating->linear_in->weight);
  return nn::activation(act, u.narrow(-1, 0, cfg.hidden)) * u.narrow(-1, cfg.hidden, cfg.hidden);
}

// The streaming path's targets: the same conv over whole buffered chunks as training (tests only:
// pitfalls.md row 12 computes them one token at a time with zero padding).
at::Tensor InPlaceFFNImpl::streaming_targets(const at::Tensor& t_chunks) const {
  if (!pitfall::on(12)) return targets(t_chunks);
  const int64_t N = t_chunks.size(0), C = t_chunks.size(1), D = t_chunks.size(2);
  return targets(t_chunks.reshape({N * C, 1, D})).reshape({N, C, D});
}

at::Tensor InPlaceFFNImpl::targets(const at::Tensor& t_chunks) const {
  const int64_t C = t_chunks.size(1), k = cfg.conv_kernel, ahead = cfg.lookahead();
  const at::ScalarType acc = acc_dtype();
  // Depthwise conv inside each chunk as k shifted multiply-adds over a zero-padded copy: same as
  // Conv1d(groups=D, padding) on [N, D, C], without the layout transposes.
  at::Tensor tp = at::constant_pad_nd(t_chunks.to(acc), {0, 0, k - 1 - ahead, ahead});
  at::Tensor w = conv_weight.to(acc).squeeze(1);  // [D, k]
  at::Tensor v = tp.narrow(1, 0, C) * w.select(1, 0);
  for (int64_t m = 1; m < k; ++m) v = v + tp.narrow(1, m, C) * w.select(1, m);
  if (proj_weight.defined()) v = at::matmul(v, proj_weight.to(acc));  // v · P, P not transposed (official)
  return v;
}

at::Tensor InPlaceFFNImpl::clip_updates(const at::Tensor& v, const at::Tensor& h) const {
  const double c = cfg.delta_clip_fro_norm;
  if (c <= 0) return v;
  const int64_t B = v.size(0), C = cfg.chunk_size, n = v.size(1) / C;
  // ‖Σ_j v_jᵀ h_j‖²_F = Σ_ij (v_i·v_j)(h_i·h_j): two C×C Gram matrices per chunk, never the D×H update.
  at::Tensor vc = v.reshape({B, n, C, v.size(2)});
  at::Tensor hc = h.narrow(1, 0, n * C).reshape({B, n, C, h.size(2)});
  at::Tensor sq = (at::matmul(vc, vc.transpose(2, 3)) * at::matmul(hc, hc.transpose(2, 3))).sum({2, 3});
  // Floor before the sqrt: a zero update keeps a finite gradient (its scale is 1 anyway).
  at::Tensor scale = at::clamp_max(c / sq.clamp_min(1e-24).sqrt(), 1.0);
  return (vc * scale.view({B, n, 1, 1})).reshape(v.sizes());
}

at::Tensor InPlaceFFNImpl::ttt_part(const at::Tensor& h, const at::Tensor& v, const at::Tensor& dw0) const {
  const int64_t B = h.size(0), L = h.size(1), C = cfg.chunk_size, D = cfg.dim, H = cfg.hidden;
  const int64_t n = (L + C - 1) / C;
  at::Tensor out;
  if (n > 1) {
    std::vector<at::Tensor> parts;
    parts.push_back(at::zeros({B, C, D}, h.options()));  // chunk 0 sees no update of this sequence
    switch (cfg.strategy) {
      case InPlaceStrategy::kLinearAttention:
        // y_i += Σ_{j<i} (h_i h_jᵀ) (lr v_j): scores of chunk i against every earlier token.
        parts.push_back(LinearAttentionFn::apply(h, v, C));
        break;
      case InPlaceStrategy::kRunning: {
        at::Tensor s = at::zeros({B, D, H}, h.options());
        for (int64_t i = 1; i < n; ++i) {
          s = s + at::matmul(v.narrow(1, (i - 1) * C, C).transpose(1, 2), h.narrow(1, (i - 1) * C, C));
          parts.push_back(at::matmul(h.narrow(1, i * C, std::min(C, L - i * C)), s.transpose(1, 2)));
        }
        break;
      }
      case InPlaceStrategy::kMaterialized: {
        // As the official training code: every chunk's update [B, n-1, D, H], cumsum, one matmul.
        at::Tensor hc = h.narrow(1, 0, (n - 1) * C).reshape({B, n - 1, C, H});
        at::Tensor vc = v.narrow(1, 0, (n - 1) * C).reshape({B, n - 1, C, D});
        at::Tensor cum = at::matmul(vc.transpose(2, 3), hc).cumsum(1);
        at::Tensor q = at::constant_pad_nd(h.narrow(1, C, L - C), {0, 0, 0, (n - 1) * C - (L - C)});
        at::Tensor y = at::matmul(q.reshape({B, n - 1, C, H}), cum.transpose(2, 3));
        parts.push_back(y.reshape({B, (n - 1) * C, D}).narrow(1, 0, L - C));
        break;
      }
    }
    out = at::cat(parts, 1);
  }
  if (dw0.defined()) {
    at::Tensor base = at::matmul(h, dw0.transpose(1, 2));
    out = out.defined() ? out + base : base;
  }
  if (!out.defined()) out = at::zeros({B, L, D}, h.options());
  return out;
}

at::Tensor InPlaceFFNImpl::forward(const at::Tensor& x, const at::Tensor& t) const {
  check_input("x", x, cfg.dim);
  check_input("t", t, cfg.dim);
  MT_CHECK(t.size(0) == x.size(0) && t.size(1) == x.size(1), "InPlaceFFN: t must have x's shape ",
           shape_str(x.sizes().vec()), ", got ", shape_str(t.sizes().vec()));
  const int64_t B = x.size(0), T = x.size(1), C = cfg.chunk_size, D = cfg.dim;
  at::Tensor h = hidden_act(x);
  at::Tensor y = at::linear(h, gating->linear_out->weight);
  const int64_t n = (T + C - 1) / C;
  if (n <= 1) return y;  // a single chunk only ever sees W0
  // Only chunks 0..n-2 write an update this sequence reads; they are complete, so t needs no padding.
  at::Tensor v = targets(t.narrow(1, 0, (n - 1) * C).reshape({B * (n - 1), C, D})).reshape({B, (n - 1) * C, D});
  at::Tensor ha = h.to(acc_dtype());
  at::Tensor corr = ttt_part(ha, clip_updates(v * cfg.lr, ha), {});
  return y + corr.to(y.scalar_type());
}

// ---------------------------------------------------------------------------------------------
InPlaceState InPlaceFFNImpl::make_state(int64_t batch) const {
  MT_CHECK(batch >= 1, "InPlaceFFN::make_state: batch must be >= 1, got ", batch);
  const at::Tensor& w0 = gating->linear_out->weight;
  auto opt = w0.options().dtype(acc_dtype());
  InPlaceState s;
  s.dw = at::zeros({batch, cfg.dim, cfg.hidden}, opt);
  s.h_buf = at::zeros({batch, cfg.chunk_size, cfg.hidden}, opt);
  s.t_buf = at::zeros({batch, cfg.chunk_size, cfg.dim}, opt);
  s.pos.assign(batch, 0);
  s.w0 = w0;
  return s;
}

at::Tensor InPlaceFFNImpl::step(const at::Tensor& x, const at::Tensor& t, InPlaceState& st) const {
  check_input("x", x, cfg.dim);
  check_input("t", t, cfg.dim);
  MT_CHECK(t.size(0) == x.size(0) && t.size(1) == x.size(1), "InPlaceFFN::step: t must have x's shape ",
           shape_str(x.sizes().vec()), ", got ", shape_str(t.sizes().vec()));
  MT_CHECK(st.dw.defined() && x.size(0) == st.batch(), "InPlaceFFN::step: state has ", st.batch(),
           " slots, input has batch ", x.size(0), " (make the state with make_state(batch))");
  MT_CHECK(st.dw.sizes() == at::IntArrayRef({st.batch(), cfg.dim, cfg.hidden}) && st.h_buf.size(1) == cfg.chunk_size,
           "InPlaceFFN::step: state was made for another module (dw ", shape_str(st.dw.sizes().vec()), ")");
  const int64_t S = x.size(1);
  if (S == 0) return at::empty({x.size(0), 0, cfg.dim}, x.options());
  at::Tensor h = hidden_act(x);
  at::Tensor y = at::linear(h, gating->linear_out->weight);
  const at::ScalarType acc = acc_dtype();
  const bool uniform = std::all_of(st.pos.begin(), st.pos.end(), [&](int64_t p) { return p == st.pos[0]; });
  const at::Tensor dw_before = pitfall::on(13)
                                   ? st.dw.clone()
                                   : at::Tensor();  // tests only: pitfalls.md row 13 (streaming updates that never run)
  at::Tensor corr = uniform && st.pos[0] + S >= cfg.chunk_size ? step_uniform(h.to(acc), t.to(acc), st)
                                                               : step_segments(h.to(acc), t.to(acc), st);
  st.tokens += S;
  if (dw_before.defined()) st.dw = dw_before;  // pitfalls.md row 13: streaming updates that never run
  return y + corr.to(y.scalar_type());
}

// Every slot at position p, and at least one chunk completes: the buffered p tokens and the new ones
// form a sequence that starts at a chunk boundary, so the whole-sequence form applies (from ΔW).
at::Tensor InPlaceFFNImpl::step_uniform(const at::Tensor& h, const at::Tensor& t, InPlaceState& st) const {
  const int64_t B = h.size(0), S = h.size(1), C = cfg.chunk_size, D = cfg.dim, p = st.pos[0];
  at::Tensor hf = p ? at::cat({st.h_buf.narrow(1, 0, p), h}, 1) : h;
  at::Tensor tf = p ? at::cat({st.t_buf.narrow(1, 0, p), t}, 1) : t;
  const int64_t L = p + S, full = L / C, tail = L - full * C;
  at::Tensor v =
      streaming_targets(tf.narrow(1, 0, full * C).reshape({B * full, C, D})).reshape({B, full * C, D}) * cfg.lr;
  v = clip_updates(v, hf);
  at::Tensor corr = ttt_part(hf, v, st.dw).narrow(1, p, S);
  // Σ over the completed chunks of lr vᵀh is one matmul over their tokens: no per-chunk D×H update.
  at::Tensor upd = at::matmul(v.transpose(1, 2), hf.narrow(1, 0, full * C));
  if (may_write_in_place()) {
    st.dw.add_(upd);
    if (tail) {
      st.h_buf.narrow(1, 0, tail).copy_(hf.narrow(1, full * C, tail));
      st.t_buf.narrow(1, 0, tail).copy_(tf.narrow(1, full * C, tail));
    }
  } else {
    st.dw = st.dw + upd;
    if (tail) {
      st.h_buf = at::cat({hf.narrow(1, full * C, tail), st.h_buf.narrow(1, tail, C - tail)}, 1);
      st.t_buf = at::cat({tf.narrow(1, full * C, tail), st.t_buf.narrow(1, tail, C - tail)}, 1);
    }
  }
  std::fill(st.pos.begin(), st.pos.end(), tail);
  st.updates += full * B;
  return corr;
}

// General case (slots at different positions, or no chunk completes): split the step at every chunk
// boundary of any slot; inside a segment each slot's ΔW is fixed; at its end the completed slots update.
at::Tensor InPlaceFFNImpl::step_segments(const at::Tensor& h, const at::Tensor& t, InPlaceState& st) const {
  const int64_t B = h.size(0), S = h.size(1), C = cfg.chunk_size;
  std::vector<at::Tensor> outs;
  for (int64_t off = 0; off < S;) {
    int64_t seg = S - off;
    for (int64_t b = 0; b < B; ++b) seg = std::min(seg, C - st.pos[b]);
    at::Tensor hs = h.narrow(1, off, seg), ts = t.narrow(1, off, seg);
    outs.push_back(at::matmul(hs, st.dw.transpose(1, 2)));
    put_rows(st.h_buf, hs, st.pos);
    put_rows(st.t_buf, ts, st.pos);
    std::vector<int64_t> done;
    for (int64_t b = 0; b < B; ++b)
      if ((st.pos[b] += seg) == C) done.push_back(b);
    if (!done.empty()) {
      const bool all = static_cast<int64_t>(done.size()) == B;
      at::Tensor idx = at::tensor(done, at::TensorOptions().dtype(at::kLong)).to(h.device());
      at::Tensor hb = all ? st.h_buf : st.h_buf.index_select(0, idx);
      at::Tensor tb = all ? st.t_buf : st.t_buf.index_select(0, idx);
      at::Tensor upd = at::matmul(clip_updates(streaming_targets(tb) * cfg.lr, hb).transpose(1, 2), hb);
      if (may_write_in_place()) {
        all ? st.dw.add_(upd) : st.dw.index_add_(0, idx, upd);
      } else {
        st.dw = all ? st.dw + upd : st.dw.index_add(0, idx, upd);
      }
      for (int64_t b : done) st.pos[b] = 0;
      st.updates += static_cast<int64_t>(done.size());
    }
    off += seg;
  }
  return outs.size() == 1 ? outs[0] : at::cat(outs, 1);
}

}  // namespace mt::ttt
