#include "nn/transformer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>

#include "nn/attention_step.h"
#include "util/error.h"
#include "util/fused.h"
#include "util/pitfall_switch.h"

namespace mt::lm {

// ---------------------------------------------------------------------------------------------
NormImpl::NormImpl(const std::string& k, int64_t dim) : kind(k) {
  if (kind == "layer_norm" || kind == "layer_norm_f32") {
    eps = kind == "layer_norm" ? 1e-5 : 1e-8;
    weight = register_parameter("weight", at::ones({dim}));
    bias = register_parameter("bias", at::zeros({dim}));
  } else if (kind == "rms_norm" || kind == "rms_norm_f32") {
    eps = kind == "rms_norm" ? 1e-5 : 1e-8;
    alpha = register_parameter("alpha", at::ones({1, 1, dim}));
  } else {
    fail("unknown norm '", kind, "'");
  }
}

at::Tensor NormImpl::forward(const at::Tensor& x) const {
  if (kind == "layer_norm") return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  if (kind == "layer_norm_f32")
    return at::layer_norm(x.to(at::kFloat), {x.size(-1)}, weight.to(at::kFloat), bias.to(at::kFloat), eps).to(x.scalar_type());
  // RMSNorm: y = x * alpha * rsqrt(eps + mean(x^2)); rms_norm_f32 computes in float32.
  const int64_t D = x.size(-1);
  if (util::fused_kernels_enabled() && x.device().is_cpu() && x.scalar_type() == at::kFloat && alpha.scalar_type() == at::kFloat &&
      x.is_contiguous() && alpha.is_contiguous() && D > 0 && x.numel() <= 4 * D &&
      !(at::GradMode::is_enabled() && (x.requires_grad() || alpha.requires_grad()))) {
    // A streaming step's few rows: one pass instead of seven tensor ops.
    at::Tensor y = at::empty_like(x);
    const float* xp = x.const_data_ptr<float>();
    const float* ap = alpha.const_data_ptr<float>();
    float* yp = y.mutable_data_ptr<float>();
    for (int64_t r = 0; r < x.numel() / D; ++r) {
      const float* xr = xp + r * D;
      float* yr = yp + r * D;
      double ss = 0;
      for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float inv = 1.f / std::sqrt(static_cast<float>(ss / static_cast<double>(D)) + static_cast<float>(eps));
      for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * (ap[i] * inv);
    }
    return y;
  }
  at::Tensor xf = kind == "rms_norm_f32" ? x.to(at::kFloat) : x;
  at::Tensor var = (xf * xf).mean(-1, /*keepdim=*/true) + eps;
  return (xf * (alpha.to(var.scalar_type()) * at::rsqrt(var))).to(x.scalar_type());
}

LayerScaleImpl::LayerScaleImpl(int64_t dim, double init) { scale = register_parameter("scale", at::full({dim}, init)); }

at::Tensor activation(const std::string& name, const at::Tensor& x) {
  if (name == "silu") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "relu") return at::relu(x);
  if (name == "sigmoid") return at::sigmoid(x);
  if (name == "tanh") return at::tanh(x);
  if (name == "leaky_relu") return at::leaky_relu(x, 0.01);
  if (name == "elu") return at::elu(x);
  if (name == "mish") return at::mish(x);
  if (name == "softsign") return x / (1 + x.abs());
  if (name == "identity") return x;
  fail("unknown activation '", name, "'");
}

GatingImpl::GatingImpl(const std::string& act, int64_t dim, int64_t dim_feedforward) : activation(act) {
  int64_t hidden = gating_hidden(dim, dim_feedforward);
  linear_in = register_module("linear_in", Linear(dim, 2 * hidden));
  linear_out = register_module("linear_out", Linear(hidden, dim));
}

namespace {
// A linear of a layer, with its TTT adapter's state and probes when it has one.
at::Tensor apply_linear(const LinearImpl& lin, const at::Tensor& x, LayerTTTState* st, LayerProbes* probes) {
  if (!lin.ttt_adapter) return lin.forward(x, nullptr);
  MT_CHECK(st, "a layer with TTT adapters was run without its TTT state");
  const auto slot = static_cast<size_t>(lin.adapter_slot);
  ttt::TTTProbes* pr = nullptr;
  if (probes) {
    if (probes->adapters.size() <= slot) probes->adapters.resize(slot + 1);
    pr = &probes->adapters[slot];
  }
  return lin.forward(x, &st->adapters.at(slot), pr);
}
}  // namespace

at::Tensor GatingImpl::forward(const at::Tensor& x, LayerTTTState* st, LayerProbes* probes) const {
  at::Tensor u = apply_linear(*linear_in, x, st, probes);
  auto shape = u.sizes().vec();
  int64_t hidden = shape.back() / 2;
  shape.back() = 2;
  shape.push_back(hidden);
  u = u.view(shape);
  return apply_linear(*linear_out, mt::lm::activation(activation, u.select(-2, 0)) * u.select(-2, 1), st, probes);
}

ScaledEmbeddingImpl::ScaledEmbeddingImpl(int64_t num, int64_t dim, std::optional<int64_t> lr) {
  weight = register_parameter("weight", at::empty({num, lr.value_or(dim)}));
  if (lr) low_rank = register_module("low_rank", Linear(*lr, dim));
}

at::Tensor ScaledEmbeddingImpl::forward(const at::Tensor& ids) const {
  at::Tensor y = at::embedding(weight, ids.clamp_min(0));
  y = at::where(ids.eq(LMConfig::kZeroToken).unsqueeze(-1), at::zeros({}, y.options()), y);
  if (low_rank) y = low_rank->forward(y);
  return y;
}

// ---------------------------------------------------------------------------------------------
void apply_rope(at::Tensor& q, at::Tensor& k, const at::Tensor& positions, double max_period, const RopeScaling* yarn) {
  const int64_t D = q.size(-1);
  auto fopt = at::TensorOptions().dtype(at::kFloat).device(q.device());
  at::Tensor ds = at::arange(D / 2, fopt);
  at::Tensor freqs = at::exp(ds * static_cast<float>(-std::log(max_period) * 2.0 / static_cast<double>(D)));
  if (yarn && yarn->on()) {
    // RopeScaling::scaled_frequency on the device (no host loop or upload per step): pair i turns
    // r = L θ / 2π times over the original context; γ ramps from 0 at β_slow to 1 at β_fast.
    at::Tensor r = freqs * static_cast<float>(static_cast<double>(yarn->original_context) / (2.0 * M_PI));
    at::Tensor g = ((r - yarn->beta_slow) / (yarn->beta_fast - yarn->beta_slow)).clamp(0.0, 1.0);
    freqs = (1.0 - g) * freqs / yarn->factor + g * freqs;
  }
  at::Tensor ts = positions.to(at::kFloat).unsqueeze(1).unsqueeze(-1);  // [B, 1, T, 1]
  at::Tensor ang = freqs * ts;                                          // [B, 1, T, D/2]
  at::Tensor rotr = at::cos(ang), roti = at::sin(ang);
  if (yarn && yarn->on()) {  // attention temperature: q and k both scaled by sqrt(1/t)
    rotr = rotr * yarn->mscale();
    roti = roti * yarn->mscale();
  }
  auto rot = [&](const at::Tensor& x) {
    auto dims = x.sizes().vec();
    dims.back() = D / 2;
    dims.push_back(2);
    at::Tensor xv = x.view(dims);
    at::Tensor xr = xv.select(-1, 0).to(at::kFloat), xi = xv.select(-1, 1).to(at::kFloat);
    at::Tensor outr = xr * rotr - xi * roti;
    at::Tensor outi = xr * roti + xi * rotr;
    return at::stack({outr.to(x.scalar_type()), outi.to(x.scalar_type())}, -1).view(x.sizes());
  };
  q = rot(q);
  k = rot(k);
}

at::Tensor sin_embedding(const at::Tensor& positions, int64_t dim, double max_period, at::ScalarType dtype) {
  const int64_t half = dim / 2;
  auto opt = at::TensorOptions().dtype(dtype).device(positions.device());
  at::Tensor pos = positions.to(dtype).unsqueeze(-1);  // [B, T, 1]
  at::Tensor adim = at::arange(half, opt).view({1, 1, -1});
  at::Tensor denom = at::pow(at::full({}, max_period, opt), adim / static_cast<double>(half - 1));
  at::Tensor phase = pos / denom;
  return at::cat({at::cos(phase), at::sin(phase)}, -1);
}

// ---------------------------------------------------------------------------------------------
void KVCache::reset() {
  if (k.defined()) k.zero_();
  if (v.defined()) v.zero_();
}

int64_t LayerTTTState::updates() const {
  int64_t n = hybrid.updates + inplace.updates;
  for (const auto& a : adapters) n += a.updates;
  return n;
}

void LayerTTTState::reset() {
  if (hybrid.batch > 0) hybrid.reset();
  for (auto& a : adapters) a.reset();
  if (inplace.batch() > 0) inplace.reset();
}

void LayerTTTState::reset_slot(int64_t b) {
  if (hybrid.batch > 0) hybrid.reset_slot(b);
  for (auto& a : adapters) a.reset_slot(b);
  if (inplace.batch() > 0) inplace.reset_slot(b);
}

void LayerTTTState::detach() {
  if (hybrid.batch > 0) hybrid.detach();
  for (auto& a : adapters) a.detach();
  if (inplace.batch() > 0) inplace.detach();
}

void TransformerState::reset(const at::Tensor& mask) {
  if (!mask.defined()) {
    offsets.zero_();
    offset_cpu = 0;
    for (auto& t : ttt) t.reset();
    return;
  }
  MT_CHECK(mask.dim() == 1 && mask.size(0) == batch, "reset mask must be [", batch, "] booleans, got ",
           shape_str(mask.sizes().vec()));
  // Slots with offset 0 see every cache entry as invalid, so their old keys are never read again.
  offsets.masked_fill_(mask.to(offsets.device(), at::kBool), 0);
  if (!ttt.empty()) {
    at::Tensor m = mask.to(at::kCPU, at::kBool);
    for (int64_t b = 0; b < batch; ++b)
      if (m[b].item<bool>())
        for (auto& t : ttt)
          if (!t.empty()) t.reset_slot(b);
  }
}

void TransformerState::detach() {
  for (auto& t : ttt) t.detach();
}

HybridTTTImpl::HybridTTTImpl(const std::string& norm_kind, int64_t dim, const ttt::TTTConfig& cfg, double alpha_init) {
  norm = register_module("norm", Norm(norm_kind, dim));
  gating_alpha = register_parameter("gating_alpha", at::full({dim}, alpha_init));
  layer = std::make_shared<ttt::TTTLayer>(ttt::TTTLayer::init(cfg, 0));
  auto holder = register_module("layer", std::make_shared<torch::nn::Module>("TTTLayer"));
  for (const auto& [name, t] : layer->named_parameters()) register_param_tree(*holder, name, t);
}

void HybridTTTImpl::init(uint64_t seed, double alpha_init) const {
  at::NoGradGuard ng;
  ttt::TTTLayer fresh = ttt::TTTLayer::init(layer->config(), seed);
  for (const auto& [name, t] : fresh.named_parameters()) layer->param(name).copy_(t);
  gating_alpha.fill_(alpha_init);
  if (norm->alpha.defined()) norm->alpha.fill_(1.0);
  if (norm->weight.defined()) norm->weight.fill_(1.0);
  if (norm->bias.defined()) norm->bias.zero_();
}

at::Tensor HybridTTTImpl::forward(const at::Tensor& h, ttt::TTTState& st, ttt::TTTProbes* probes) const {
  // Tests only: pitfalls.md row 8, a hard clamp that zeroes α's gradient outside [-3, 3].
  const at::Tensor a = pitfall::on(8) ? gating_alpha.clamp(-3.0, 3.0) : gating_alpha;
  return at::tanh(a) * layer->forward(norm->forward(h), st, probes);
}

namespace {
// Applies one module per time step (weights per step): step t of x uses set schedule[t + offset].
template <class F>
at::Tensor per_step(const at::Tensor& x, const TransformerConfig& cfg, int64_t offset_cpu, F&& apply) {
  const int64_t T = x.size(1);
  auto set_of = [&](int64_t t) {
    int64_t s = t + offset_cpu;
    MT_CHECK(s < cfg.weights_per_step, "weights-per-step module used at step ", s, " but it has only ",
             cfg.weights_per_step, " steps");
    return cfg.weights_per_step_schedule.empty() ? s : cfg.weights_per_step_schedule[s];
  };
  if (T == 1) return apply(set_of(0), x);
  std::vector<at::Tensor> ys;
  ys.reserve(T);
  for (int64_t t = 0; t < T; ++t) ys.push_back(apply(set_of(t), x.narrow(1, t, 1)));
  return at::cat(ys, 1);
}
}  // namespace

AttentionImpl::AttentionImpl(const TransformerConfig& c) : cfg(c) {
  in_projs = register_module("in_projs", torch::nn::ModuleList());
  out_projs = register_module("out_projs", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_weight_sets(); ++i) {
    in_projs->push_back(Linear(cfg.d_model, 3 * cfg.d_model));
    out_projs->push_back(Linear(cfg.d_model, cfg.d_model));
  }
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& offsets, int64_t offset_cpu,
                                  KVCache* cache, LayerTTTState* tst, LayerProbes* probes) const {
  const int64_t B = x.size(0), T = x.size(1), H = cfg.num_heads, Dh = cfg.head_dim();
  auto proj = [&](const torch::nn::ModuleList& list, const at::Tensor& in) {
    if (list->size() == 1) return apply_linear(*list->ptr(0)->as<LinearImpl>(), in, tst, probes);
    return per_step(in, cfg, offset_cpu, [&](int64_t s, const at::Tensor& xi) { return list->ptr(s)->as<LinearImpl>()->forward(xi); });
  };
  const at::Tensor qkv_flat = proj(in_projs, x);  // [B, T, 3 * H * Dh]
  const bool rope = cfg.positional_embedding == "rope" || cfg.positional_embedding == "sin_rope";
  if (T == 1 && cfg.causal && fused_attention_step_applies(qkv_flat, cache)) {
    const FusedStepGeometry g{H, Dh, rope, cfg.max_period, &cfg.rope_scaling, cfg.context};
    return proj(out_projs, fused_attention_step(qkv_flat, offsets, offset_cpu, *cache, g));
  }
  at::Tensor qkv = qkv_flat.view({B, T, 3, H, Dh}).permute({2, 0, 3, 1, 4});  // [3, B, H, T, Dh]
  at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  auto lopt = at::TensorOptions().dtype(at::kLong).device(x.device());
  at::Tensor steps = at::arange(T, lopt);
  at::Tensor pos_q = cache ? offsets.view({-1, 1}) + steps : steps.view({1, T}).expand({B, T});  // [B, T]
  if (rope) apply_rope(q, k, pos_q, cfg.max_period, &cfg.rope_scaling);

  at::Tensor keys = k, values = v, pos_k;
  if (cache) {
    const int64_t cap = cache->capacity;
    MT_CHECK(T <= cap, "streaming chunk of ", T, " steps exceeds the KV cache capacity ", cap);
    at::Tensor idx = (offsets.view({-1, 1}) + steps).remainder(cap);  // [B, T]
    at::Tensor sidx = idx.view({B, 1, T, 1}).expand({B, H, T, Dh});
    cache->k.scatter_(2, sidx, k.to(cache->k.scalar_type()));
    cache->v.scatter_(2, sidx, v.to(cache->v.scalar_type()));
    // Until the ring has wrapped, only its first offset_cpu + T slots can hold anything (no slot's
    // offset exceeds offset_cpu): attend over those alone instead of the whole ring.
    const int64_t used = std::min(cap, offset_cpu + T);
    keys = cache->k.narrow(2, 0, used);
    values = cache->v.narrow(2, 0, used);
    // Absolute position held by each slot, -1 if never written (as the reference's RingKVCache).
    at::Tensor slots = at::arange(used, lopt).view({1, used});
    at::Tensor last = offsets.view({-1, 1}) + (T - 1);
    at::Tensor delta = slots - last.remainder(cap);
    pos_k = at::where(delta <= 0, last + delta, last + delta - cap);
    pos_k = at::where(slots >= offsets.view({-1, 1}) + T, at::full({}, -1, lopt), pos_k);  // [B, cap]
  } else {
    pos_k = pos_q;
  }

  at::Tensor out;
  if (cfg.causal) {
    const bool plain_causal = !cache && (!cfg.context || *cfg.context >= T);
    if (plain_causal) {
      out = at::scaled_dot_product_attention(q, keys, values, {}, 0.0, /*is_causal=*/true);
    } else {
      at::Tensor delta = pos_q.unsqueeze(2) - pos_k.unsqueeze(1);  // [B, T, S]
      at::Tensor allowed = pos_k.unsqueeze(1).ge(0) & delta.ge(0);
      if (cfg.context) allowed = allowed & delta.lt(*cfg.context);
      if (T == 1 && cache && q.device().is_cpu() && q.scalar_type() == at::kFloat) {
        // One query of a streaming step (the current slot is always allowed, so no row is empty):
        // explicit scores, softmax and sum. On the CPU, SDPA with a mask costs ~60 us a call here,
        // ~3x these four ops on a few hundred cached keys.
        at::Tensor sc = at::matmul(q, keys.transpose(-1, -2)).mul_(1.0 / std::sqrt(static_cast<double>(Dh)));
        sc.masked_fill_(allowed.unsqueeze(1).logical_not(), -std::numeric_limits<float>::infinity());
        out = at::matmul(at::softmax(sc, -1), values);
      } else {
        out = at::scaled_dot_product_attention(q, keys, values, allowed.unsqueeze(1));
      }
    }
  } else {
    out = at::scaled_dot_product_attention(q, keys, values);
  }
  out = out.transpose(1, 2).reshape({B, T, H * Dh});
  return proj(out_projs, out);
}

TransformerLayerImpl::TransformerLayerImpl(const TransformerConfig& c) : cfg(c) {
  self_attn = register_module("self_attn", Attention(cfg));
  norm1 = register_module("norm1", Norm(cfg.norm, cfg.d_model));
  norm2 = register_module("norm2", Norm(cfg.norm, cfg.d_model));
  if (cfg.gating == "none") {
    linear1 = register_module("linear1", Linear(cfg.d_model, cfg.dim_feedforward[0]));
    linear2 = register_module("linear2", Linear(cfg.dim_feedforward[0], cfg.d_model));
  } else if (cfg.weights_per_step > 0) {
    gating_list = register_module("gating", torch::nn::ModuleList());
    for (int64_t i = 0; i < cfg.num_weight_sets(); ++i)
      gating_list->push_back(Gating(cfg.gating, cfg.d_model, cfg.dim_feedforward[cfg.dim_feedforward.size() == 1 ? 0 : i]));
  } else {
    gating = register_module("gating", Gating(cfg.gating, cfg.d_model, cfg.dim_feedforward[0]));
  }
  if (cfg.layer_scale) {
    layer_scale_1 = register_module("layer_scale_1", LayerScale(cfg.d_model, *cfg.layer_scale));
    layer_scale_2 = register_module("layer_scale_2", LayerScale(cfg.d_model, *cfg.layer_scale));
  }
}

at::Tensor TransformerLayerImpl::forward(const at::Tensor& x, const at::Tensor& offsets, int64_t offset_cpu,
                                         KVCache* cache, LayerTTTState* tst, LayerProbes* probes, const at::Tensor& x0) const {
  MT_CHECK(tst || !has_ttt(), "a TTT layer was run without its TTT state");
  ttt::TTTProbes* hp = probes ? &probes->hybrid : nullptr;
  at::Tensor a = x, par;
  if (ttt && ttt_placement == Placement::before_attention) a = x + ttt->forward(x, tst->hybrid, hp);
  if (ttt && ttt_placement == Placement::parallel) par = ttt->forward(x, tst->hybrid, hp);
  at::Tensor upd = self_attn->forward(norm1->forward(a), offsets, offset_cpu, cache, tst, probes);
  at::Tensor h = a + (layer_scale_1 ? layer_scale_1->forward(upd) : upd);
  if (par.defined()) h = h + par;
  if (ttt && ttt_placement == Placement::after_attention) h = h + ttt->forward(h, tst->hybrid, hp);
  at::Tensor n = norm2->forward(h);
  if (inplace) {
    const at::Tensor& t = inplace_target_embeddings ? x0 : n;
    MT_CHECK(t.defined(), "In-Place TTT layer run without its target source (the transformer input)");
    upd = inplace->step(n, t, tst->inplace);
    if (probes) {
      probes->inplace_dw_norm = tst->inplace.dw.flatten(1).norm(2, {1});
      probes->inplace_updates = tst->inplace.tokens / inplace->cfg.chunk_size;
    }
  } else if (linear1) {
    upd = apply_linear(*linear2, at::gelu(apply_linear(*linear1, n, tst, probes)), tst, probes);
  } else if (gating_list) {
    upd = per_step(n, cfg, offset_cpu, [&](int64_t s, const at::Tensor& xi) { return gating_list->ptr(s)->as<GatingImpl>()->forward(xi); });
  } else {
    upd = gating->forward(n, tst, probes);
  }
  return h + (layer_scale_2 ? layer_scale_2->forward(upd) : upd);
}

LayerTTTState TransformerLayerImpl::make_ttt_state(int64_t batch) const {
  LayerTTTState s;
  if (ttt) s.hybrid = ttt::TTTState(batch);
  for (size_t i = 0; i < adapted.size(); ++i) s.adapters.emplace_back(batch);
  if (inplace) s.inplace = inplace->make_state(batch);
  return s;
}

void TransformerLayerImpl::init_ttt(uint64_t seed) const {
  if (ttt) ttt->init(seed, initial_alpha);
  for (size_t i = 0; i < adapted.size(); ++i) adapted[i]->init_ttt_adapter(seed * 31 + i + 1);
  if (inplace) {
    at::NoGradGuard ng;
    at::Generator gen = at::detail::createCPUGenerator(seed);
    inplace->conv_weight.zero_();
    if (inplace->proj_weight.defined()) {
      at::Tensor p = at::zeros(inplace->proj_weight.sizes(), at::kFloat);
      p.diagonal().normal_(0, 0.02, gen);  // official: zero with a N(0, 0.02²) diagonal
      inplace->proj_weight.copy_(p);
    }
  }
}

namespace {
// The inner TTT layer config of the integration (hybrid block: the model's width and heads; adapter:
// one head of width adapter_rank); errors name the config field.
ttt::TTTConfig inner_config(const TTTIntegrationConfig& t, int64_t width, int64_t heads, int64_t layer, const char* what) {
  ttt::TTTConfig tc;
  tc.hidden_size = width;
  tc.num_attention_heads = heads;
  tc.mini_batch_size = t.mini_batch_size;
  tc.ttt_layer_type = t.type;
  tc.ttt_mlp_layers = t.mlp_layers;
  tc.ttt_base_lr = t.base_lr;
  tc.use_gate = t.use_gate;
  tc.share_qk = t.share_qk;
  tc.conv_kernel = t.conv_kernel;
  tc.scan_checkpoint_group_size = t.scan_checkpoint_group_size;
  try {
    tc.validate();
  } catch (const Error& e) {
    fail("ttt (", what, ", layer ", layer, "): ", e.what());
  }
  return tc;
}
}  // namespace

StreamingTransformerImpl::StreamingTransformerImpl(const TransformerConfig& c, const TTTIntegrationConfig* ttt) : cfg(c) {
  layers = register_module("layers", torch::nn::ModuleList());
  const bool on = ttt && ttt->enable;
  if (on) ttt->validate(cfg.num_layers);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    TransformerConfig lc = cfg;
    const bool is_ttt = on && ttt->is_ttt_layer(i, cfg.num_layers);
    if (on) {
      if (is_ttt && ttt->attention_context) lc.context = ttt->attention_context;
      if (!is_ttt && ttt->non_ttt_attention_context) lc.context = ttt->non_ttt_attention_context;
    }
    TransformerLayer layer(lc);
    layer_ptrs.push_back(layer);
    layers->push_back(layer);
    if (!is_ttt) continue;
    layer->initial_alpha = ttt->initial_gating_alpha;
    // (validate() above has checked the name.)
    layer->ttt_placement = ttt->placement == "parallel"           ? TransformerLayerImpl::Placement::parallel
                           : ttt->placement == "before_attention" ? TransformerLayerImpl::Placement::before_attention
                                                                  : TransformerLayerImpl::Placement::after_attention;
    if (ttt->variant == "hybrid") {
      ttt::TTTConfig tc = inner_config(*ttt, cfg.d_model, ttt->num_heads > 0 ? ttt->num_heads : cfg.num_heads, i, "hybrid");
      layer->ttt = layer->register_module("ttt", HybridTTT(cfg.norm, cfg.d_model, tc, ttt->initial_gating_alpha));
    } else if (ttt->variant == "adapter") {
      ttt::TTTConfig tc = inner_config(*ttt, ttt->adapter_rank, 1, i, "adapter of width adapter_rank");
      for (const auto& target : ttt->adapter_targets) {
        Linear lin{nullptr};
        if (target == "self_attn.in_proj" || target == "self_attn.out_proj") {
          const auto& list = target == "self_attn.in_proj" ? layer->self_attn->in_projs : layer->self_attn->out_projs;
          MT_CHECK(list->size() == 1, "ttt.adapter_targets: ", target, " of layer ", i, " has weights per step (not supported)");
          lin = Linear(list->ptr<LinearImpl>(0));
        } else if (target == "gating.linear_in" || target == "gating.linear_out") {
          MT_CHECK(layer->gating, "ttt.adapter_targets: ", target, ": layer ", i, " has no single gated FFN");
          lin = target == "gating.linear_in" ? layer->gating->linear_in : layer->gating->linear_out;
        } else if (target == "linear1" || target == "linear2") {
          MT_CHECK(layer->linear1, "ttt.adapter_targets: ", target, ": layer ", i, " has a gated FFN (use gating.linear_in/out)");
          lin = target == "linear1" ? layer->linear1 : layer->linear2;
        } else {
          fail("ttt.adapter_targets: unknown target '", target,
               "' (self_attn.in_proj, self_attn.out_proj, gating.linear_in, gating.linear_out, linear1, linear2)");
        }
        MT_CHECK(!lin->ttt_adapter, "ttt.adapter_targets: '", target, "' listed twice");
        lin->enable_ttt_adapter(tc, ttt->adapter_scale, static_cast<int64_t>(layer->adapted.size()));
        layer->adapted.push_back(lin);
        layer->adapted_names.push_back(target);
      }
    } else if (ttt->variant == "inplace") {
      MT_CHECK(layer->gating, "ttt.variant inplace: layer ", i, " needs a gated FFN with one weight set (gating '", cfg.gating,
               "', weights_per_step ", cfg.weights_per_step, ")");
      ttt::InPlaceConfig ic;
      ic.dim = cfg.d_model;
      ic.hidden = layer->gating->linear_out->weight.size(1);
      ic.chunk_size = ttt->inplace_chunk_size;
      ic.lr = ttt->inplace_lr;
      ic.use_proj = ttt->inplace_use_proj;
      ic.conv_kernel = ttt->inplace_conv_kernel;
      ic.conv_lookahead = ttt->inplace_lookahead;
      // Tests only: pitfalls.md row 9, a setting parsed and never forwarded.
      ic.delta_clip_fro_norm = pitfall::on(9) ? 0.0 : ttt->inplace_delta_clip_fro_norm;
      ic.activation = cfg.gating;
      try {
        ic.validate();
      } catch (const Error& e) {
        fail("ttt (inplace, layer ", i, "): ", e.what());
      }
      auto ffn = std::make_shared<ttt::InPlaceFFNImpl>(ic);
      // The FFN runs on the layer's own gating weights (its own copies are emptied); its target
      // tensors live under gating.
      {
        at::NoGradGuard ng;
        ffn->gating->linear_in->weight.set_data(at::empty({0}));
        ffn->gating->linear_out->weight.set_data(at::empty({0}));
      }
      ffn->gating->linear_in->weight = layer->gating->linear_in->weight;
      ffn->gating->linear_out->weight = layer->gating->linear_out->weight;
      register_param_tree(*layer->gating, "ttt_conv.weight", ffn->conv_weight);
      if (ffn->proj_weight.defined()) register_param_tree(*layer->gating, "ttt_proj.weight", ffn->proj_weight);
      layer->inplace = ffn;
      layer->inplace_target_embeddings = ttt->inplace_target == "embeddings";
    }
  }
}

bool StreamingTransformerImpl::has_ttt() const {
  for (const auto& l : layer_ptrs)
    if (l->has_ttt()) return true;
  return false;
}

std::vector<LayerTTTState> StreamingTransformerImpl::make_ttt_states(int64_t batch) const {
  std::vector<LayerTTTState> out;
  for (const auto& l : layer_ptrs) out.push_back(l->has_ttt() ? l->make_ttt_state(batch) : LayerTTTState());
  return out;
}

at::Tensor StreamingTransformerImpl::add_positional(const at::Tensor& x, const at::Tensor& offsets) const {
  if (cfg.positional_embedding != "sin" && cfg.positional_embedding != "sin_rope") return x;
  const int64_t T = x.size(1);
  at::Tensor pos = offsets.view({-1, 1}) + at::arange(T, offsets.options());
  return x + sin_embedding(pos, x.size(2), cfg.max_period, x.scalar_type());
}

namespace {
// Reentrant activation checkpointing of one layer (whole-sequence forward, no state): the forward runs
// without recording, the backward runs it again with recording and back-propagates through it, which
// accumulates the parameters' gradients and returns the input's.
struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& offsets,
                            int64_t layer_ptr) {
    ctx->save_for_backward({x, offsets});
    ctx->saved_data["layer"] = layer_ptr;
    at::NoGradGuard ng;
    return reinterpret_cast<const TransformerLayerImpl*>(layer_ptr)->forward(x, offsets, 0, nullptr);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    auto saved = ctx->get_saved_variables();
    const auto* layer = reinterpret_cast<const TransformerLayerImpl*>(ctx->saved_data["layer"].toInt());
    at::Tensor x = saved[0].detach().requires_grad_(true);
    at::Tensor y;
    {
      at::AutoGradMode on(true);
      y = layer->forward(x, saved[1], 0, nullptr);
    }
    torch::autograd::backward({y}, {g[0]});
    return {x.grad(), at::Tensor(), at::Tensor()};
  }
};
}  // namespace

at::Tensor StreamingTransformerImpl::forward(const at::Tensor& x, std::vector<LayerTTTState>* ttt_states,
                                             std::vector<LayerProbes>* probes) const {
  at::Tensor offsets = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(x.device()));
  at::Tensor h = add_positional(x, offsets);
  std::vector<LayerTTTState> fresh;
  if (!ttt_states && has_ttt()) {
    fresh = make_ttt_states(x.size(0));
    ttt_states = &fresh;
  }
  if (probes) probes->assign(layer_ptrs.size(), {});
  const bool ckpt = gradient_checkpointing && at::GradMode::is_enabled();
  for (size_t i = 0; i < layer_ptrs.size(); ++i) {
    const bool t = layer_ptrs[i]->has_ttt();
    if (ckpt && !t) {
      // The input must require grad for the backward to reach this layer's parameters (frozen
      // embeddings under LoRA would otherwise cut them off, silently).
      at::Tensor in = h.requires_grad() ? h : h.detach().requires_grad_(true);
      h = LayerCheckpoint::apply(in, offsets, reinterpret_cast<int64_t>(layer_ptrs[i].get()));
      continue;
    }
    h = layer_ptrs[i]->forward(h, offsets, 0, nullptr, t ? &ttt_states->at(i) : nullptr, probes && t ? &(*probes)[i] : nullptr, x);
  }
  return h;
}

at::Tensor StreamingTransformerImpl::step(const at::Tensor& x, TransformerState& st, std::vector<LayerProbes>* probes) const {
  MT_CHECK(x.dim() == 3 && x.size(0) == st.batch && x.size(2) == cfg.d_model, "transformer step: expected [",
           st.batch, ", T, ", cfg.d_model, "], got ", shape_str(x.sizes().vec()));
  MT_CHECK(x.size(1) <= st.max_chunk, "transformer step: chunk of ", x.size(1), " steps, but the state was made for at most ",
           st.max_chunk, " (make_state's max_chunk)");
  at::Tensor h = add_positional(x, st.offsets);
  if (probes) probes->assign(layer_ptrs.size(), {});
  for (size_t i = 0; i < layer_ptrs.size(); ++i) {
    const bool t = layer_ptrs[i]->has_ttt();
    h = layer_ptrs[i]->forward(h, st.offsets, st.offset_cpu, &st.layers[i], t ? &st.ttt.at(i) : nullptr,
                               probes && t ? &(*probes)[i] : nullptr, x);
  }
  st.offsets.add_(x.size(1));
  st.offset_cpu += x.size(1);
  return h;
}

TransformerState StreamingTransformerImpl::make_state(int64_t batch, int64_t max_chunk, std::optional<int64_t> window) const {
  TransformerState st;
  st.batch = batch;
  MT_CHECK(max_chunk >= 1, "max_chunk must be >= 1");
  st.max_chunk = max_chunk;
  at::Tensor any = parameters().empty() ? at::empty({0}) : parameters().front();
  auto opt = any.options().requires_grad(false);
  st.offsets = at::zeros({batch}, opt.dtype(at::kLong));
  st.ttt = make_ttt_states(batch);
  for (size_t i = 0; i < layer_ptrs.size(); ++i) {
    const auto& lc = layer_ptrs[i]->cfg;
    int64_t w = window.value_or(lc.context ? *lc.context : lc.weights_per_step);
    MT_CHECK(w > 0, "streaming needs a bounded KV cache: layer ", i, " has no context (attention window)");
    int64_t cap = w + max_chunk - 1;
    KVCache c;
    c.capacity = cap;
    c.k = at::zeros({batch, cfg.num_heads, cap, cfg.head_dim()}, opt);
    c.v = at::zeros({batch, cfg.num_heads, cap, cfg.head_dim()}, opt);
    st.layers.push_back(std::move(c));
  }
  return st;
}

}  // namespace mt::lm
