#include "nn/transformer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>

#include "nn/attention_step.h"
#include "util/choices.h"
#include "util/error.h"
#include "util/fused.h"

namespace mt::nn {

// ---------------------------------------------------------------------------------------------
namespace {
const util::Choices<NormKind> kNorms{{{"layer_norm", NormKind::kLayerNorm},
                                      {"layer_norm_f32", NormKind::kLayerNormF32},
                                      {"rms_norm", NormKind::kRmsNorm},
                                      {"rms_norm_f32", NormKind::kRmsNormF32}}};
const util::Choices<Activation> kActivations{{{"silu", Activation::kSilu},
                                              {"gelu", Activation::kGelu},
                                              {"relu", Activation::kRelu},
                                              {"sigmoid", Activation::kSigmoid},
                                              {"tanh", Activation::kTanh},
                                              {"leaky_relu", Activation::kLeakyRelu},
                                              {"elu", Activation::kElu},
                                              {"mish", Activation::kMish},
                                              {"softsign", Activation::kSoftsign},
                                              {"identity", Activation::kIdentity}}};
const util::Choices<PositionalEmbedding> kPositional{{{"none", PositionalEmbedding::kNone},
                                                      {"sin", PositionalEmbedding::kSin},
                                                      {"rope", PositionalEmbedding::kRope},
                                                      {"sin_rope", PositionalEmbedding::kSinRope}}};
}  // namespace

NormKind parse_norm(const std::string& name) { return kNorms.parse(name, "norm"); }
Activation parse_activation(const std::string& name) { return kActivations.parse(name, "activation"); }
PositionalEmbedding parse_positional_embedding(const std::string& name) {
  return kPositional.parse(name, "positional embedding");
}

NormImpl::NormImpl(const std::string& name, int64_t dim) : kind(parse_norm(name)) {
  const bool f32 = kind == NormKind::kLayerNormF32 || kind == NormKind::kRmsNormF32;
  eps = f32 ? 1e-8 : 1e-5;
  if (kind == NormKind::kLayerNorm || kind == NormKind::kLayerNormF32) {
    weight = register_parameter("weight", at::ones({dim}));
    bias = register_parameter("bias", at::zeros({dim}));
  } else {
    alpha = register_parameter("alpha", at::ones({1, 1, dim}));
  }
}

at::Tensor NormImpl::forward(const at::Tensor& x) const {
  if (kind == NormKind::kLayerNorm) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  if (kind == NormKind::kLayerNormF32)
    return at::layer_norm(x.to(at::kFloat), {x.size(-1)}, weight.to(at::kFloat), bias.to(at::kFloat), eps)
        .to(x.scalar_type());
  // RMSNorm: y = x * alpha * rsqrt(eps + mean(x^2)); rms_norm_f32 computes in float32.
  const int64_t D = x.size(-1);
  if (util::fused_kernels_enabled() && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
      alpha.scalar_type() == at::kFloat && x.is_contiguous() && alpha.is_contiguous() && D > 0 && x.numel() <= 4 * D &&
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
  at::Tensor xf = kind == NormKind::kRmsNormF32 ? x.to(at::kFloat) : x;
  at::Tensor var = (xf * xf).mean(-1, /*keepdim=*/true) + eps;
  return (xf * (alpha.to(var.scalar_type()) * at::rsqrt(var))).to(x.scalar_type());
}

LayerScaleImpl::LayerScaleImpl(int64_t dim, double init) { scale = register_parameter("scale", at::full({dim}, init)); }

at::Tensor activation(Activation a, const at::Tensor& x) {
  switch (a) {
    case Activation::kSilu: return at::silu(x);
    case Activation::kGelu: return at::gelu(x);
    case Activation::kRelu: return at::relu(x);
    case Activation::kSigmoid: return at::sigmoid(x);
    case Activation::kTanh: return at::tanh(x);
    case Activation::kLeakyRelu: return at::leaky_relu(x, 0.01);
    case Activation::kElu: return at::elu(x);
    case Activation::kMish: return at::mish(x);
    case Activation::kSoftsign: return x / (1 + x.abs());
    case Activation::kIdentity: return x;
  }
  fail("activation: bad enum value");
}

GatingImpl::GatingImpl(const std::string& act, int64_t dim, int64_t dim_feedforward)
    : activation(parse_activation(act)) {
  int64_t hidden = gating_hidden(dim, dim_feedforward);
  linear_in = register_module("linear_in", Linear(dim, 2 * hidden));
  linear_out = register_module("linear_out", Linear(hidden, dim));
}

namespace {
// A linear of a layer, with its add-on when it has one (and the context holding the add-on's state).
at::Tensor apply_linear(const LinearImpl& lin, const at::Tensor& x, const StepContext* c) {
  return c ? lin.forward(x, *c) : lin.forward(x);
}
}  // namespace

at::Tensor GatingImpl::forward(const at::Tensor& x, const StepContext* c) const {
  at::Tensor u = apply_linear(*linear_in, x, c);
  auto shape = u.sizes().vec();
  int64_t hidden = shape.back() / 2;
  shape.back() = 2;
  shape.push_back(hidden);
  u = u.view(shape);
  // unbind, not two selects: their backward would be two zero-filled copies of u summed.
  const std::vector<at::Tensor> gv = u.unbind(-2);
  return apply_linear(*linear_out, nn::activation(activation, gv[0]) * gv[1], c);
}

ScaledEmbeddingImpl::ScaledEmbeddingImpl(int64_t num, int64_t dim, std::optional<int64_t> lr) {
  weight = register_parameter("weight", at::empty({num, lr.value_or(dim)}));
  if (lr) low_rank = register_module("low_rank", Linear(*lr, dim));
}

at::Tensor ScaledEmbeddingImpl::forward(const at::Tensor& ids) const {
  at::Tensor y = at::embedding(weight, ids.clamp_min(0));
  y = at::where(ids.eq(kZeroId).unsqueeze(-1), at::zeros({}, y.options()), y);
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
    const std::vector<at::Tensor> ri = xv.unbind(-1);  // (two selects: two zero-filled copies in backward)
    at::Tensor xr = ri[0].to(at::kFloat), xi = ri[1].to(at::kFloat);
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

void KVCache::reset_slot(int64_t b) {
  if (k.defined()) k.select(0, b).zero_();
  if (v.defined()) v.select(0, b).zero_();
}

void KVCache::write(const std::string& prefix, TensorMap& out) const {
  if (!k.defined()) return;
  out[prefix + "k"] = saved(k);
  out[prefix + "v"] = saved(v);
}

void KVCache::read(const std::string& prefix, const TensorMap& in, const at::Device& device) {
  if (!k.defined()) return;
  for (auto [key, t] : {std::pair<const char*, at::Tensor*>{"k", &k}, {"v", &v}}) {
    const at::Tensor& src = need(in, prefix, key);
    MT_CHECK(src.sizes() == t->sizes(), "checkpoint: '", prefix, key, "': expected shape ", shape_str(t->sizes().vec()),
             ", got ", shape_str(src.sizes().vec()));
    t->copy_(src.to(device));
  }
}

void TransformerState::reset(const at::Tensor& mask) {
  if (!mask.defined()) {
    offsets.zero_();
    offset_cpu = 0;
    for (auto& a : addons) a.reset();
    return;
  }
  MT_CHECK(mask.dim() == 1 && mask.size(0) == batch, "reset mask must be [", batch, "] booleans, got ",
           shape_str(mask.sizes().vec()));
  // Slots with offset 0 see every cache entry as invalid, so their old keys are never read again.
  offsets.masked_fill_(mask.to(offsets.device(), at::kBool), 0);
  if (addons.empty()) return;
  const at::Tensor m = mask.to(at::kCPU, at::kBool).contiguous();
  const bool* reset = m.data_ptr<bool>();
  for (int64_t b = 0; b < batch; ++b)
    if (reset[b])
      for (auto& a : addons) a.reset_slot(b);
}

void TransformerState::reset_slot(int64_t b) {
  MT_CHECK(b >= 0 && b < batch, "transformer state: slot ", b, " out of range [0, ", batch, ")");
  offsets.select(0, b).fill_(0);
  for (auto& a : addons) a.reset_slot(b);
}

void TransformerState::detach() {
  for (auto& a : addons) a.detach();
}

void TransformerState::write(const std::string& prefix, TensorMap& out) const {
  out[prefix + "offsets"] = saved(offsets);
  out[prefix + "offset_cpu"] = long_tensor({offset_cpu});
  for (size_t l = 0; l < layers.size(); ++l) layers[l].write(prefix + "kv" + std::to_string(l) + ".", out);
  for (size_t l = 0; l < addons.size(); ++l) addons[l].write(prefix + "l" + std::to_string(l) + ".", out);
}

void TransformerState::read(const std::string& prefix, const TensorMap& in, const at::Device& device) {
  const at::Tensor& o = need(in, prefix, "offsets");
  MT_CHECK(o.numel() == batch, "checkpoint: '", prefix, "offsets' has ", o.numel(), " slots, the state ", batch);
  offsets.copy_(o.to(device));
  offset_cpu = long_vector(need(in, prefix, "offset_cpu")).at(0);
  for (size_t l = 0; l < layers.size(); ++l) layers[l].read(prefix + "kv" + std::to_string(l) + ".", in, device);
  for (size_t l = 0; l < addons.size(); ++l) addons[l].read(prefix + "l" + std::to_string(l) + ".", in, device);
}

int64_t TransformerState::updates() const {
  int64_t n = 0;
  for (const auto& a : addons) n += a.updates();
  return n;
}

namespace {
// Up to this many positions, causal attention without a cache uses explicit products (see forward).
constexpr int64_t kShortSequence = 16;

// softmax(q kᵀ / sqrt(head dim), -inf where `blocked`) v as explicit products; `blocked` broadcasts
// against the scores [B, H, T, S].
at::Tensor explicit_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& blocked) {
  at::Tensor sc = at::matmul(q, k.transpose(-1, -2)).mul_(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  sc.masked_fill_(blocked, -std::numeric_limits<float>::infinity());
  return at::matmul(at::softmax(sc, -1), v);
}

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
  // unbind, not narrow: the backward of T narrowed slices is T zero-filled copies of x summed; that of
  // unbind is one stack.
  const std::vector<at::Tensor> xs = x.unbind(1);
  std::vector<at::Tensor> ys;
  ys.reserve(T);
  for (int64_t t = 0; t < T; ++t) ys.push_back(apply(set_of(t), xs[t]));
  return at::stack(ys, 1);
}
}  // namespace

AttentionImpl::AttentionImpl(const TransformerConfig& c)
    : cfg(c), pos_emb(parse_positional_embedding(c.positional_embedding)) {
  in_projs = register_module("in_projs", torch::nn::ModuleList());
  out_projs = register_module("out_projs", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_weight_sets(); ++i) {
    in_projs->push_back(Linear(cfg.d_model, 3 * cfg.d_model));
    out_projs->push_back(Linear(cfg.d_model, cfg.d_model));
  }
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const StepContext& c) const {
  const at::Tensor& offsets = c.offsets;
  const int64_t offset_cpu = c.offset_cpu;
  KVCache* cache = c.cache;
  const int64_t B = x.size(0), T = x.size(1), H = cfg.num_heads, Dh = cfg.head_dim();
  auto proj = [&](const torch::nn::ModuleList& list, const at::Tensor& in) {
    if (list->size() == 1) return list->ptr(0)->as<LinearImpl>()->forward(in, c);
    return per_step(in, cfg, offset_cpu,
                    [&](int64_t s, const at::Tensor& xi) { return list->ptr(s)->as<LinearImpl>()->forward(xi); });
  };
  const at::Tensor qkv_flat = proj(in_projs, x);  // [B, T, 3 * H * Dh]
  const bool rope = pos_emb == PositionalEmbedding::kRope || pos_emb == PositionalEmbedding::kSinRope;
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
    if (plain_causal && T <= kShortSequence) {
      // The depformer's few codebook steps over many frames: SDPA's flash kernel pays per (batch, head)
      // block, and explicit scores, softmax and sum run ~3x faster forward + backward (measured on
      // 256 x 4 heads x 8 steps, 2 threads).
      out = explicit_attention(q, keys, values, at::ones({T, T}, lopt.dtype(at::kBool)).triu(1));
    } else if (plain_causal) {
      out = at::scaled_dot_product_attention(q, keys, values, {}, 0.0, /*is_causal=*/true);
    } else {
      at::Tensor delta = pos_q.unsqueeze(2) - pos_k.unsqueeze(1);  // [B, T, S]
      at::Tensor allowed = pos_k.unsqueeze(1).ge(0) & delta.ge(0);
      if (cfg.context) allowed = allowed & delta.lt(*cfg.context);
      if (T == 1 && cache && q.device().is_cpu() && q.scalar_type() == at::kFloat) {
        // One query of a streaming step (the current slot is always allowed, so no row is empty):
        // explicit scores, softmax and sum. On the CPU, SDPA with a mask costs ~60 us a call here,
        // ~3x these four ops on a few hundred cached keys.
        out = explicit_attention(q, keys, values, allowed.unsqueeze(1).logical_not());
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
      gating_list->push_back(
          Gating(cfg.gating, cfg.d_model, cfg.dim_feedforward[cfg.dim_feedforward.size() == 1 ? 0 : i]));
  } else {
    gating = register_module("gating", Gating(cfg.gating, cfg.d_model, cfg.dim_feedforward[0]));
  }
  if (cfg.layer_scale) {
    layer_scale_1 = register_module("layer_scale_1", LayerScale(cfg.d_model, *cfg.layer_scale));
    layer_scale_2 = register_module("layer_scale_2", LayerScale(cfg.d_model, *cfg.layer_scale));
  }
}

at::Tensor TransformerLayerImpl::forward(const at::Tensor& x, const StepContext& c) const {
  MT_CHECK(c.state || !has_addons(), "layer ", c.layer, " has add-ons but was run without their state");
  at::Tensor a = x;
  for (const auto& addon : layer_addons_) a = addon->before_attention(a, c);
  at::Tensor upd = self_attn->forward(norm1->forward(a), c);
  at::Tensor h = a + (layer_scale_1 ? layer_scale_1->forward(upd) : upd);
  for (const auto& addon : layer_addons_) h = addon->after_attention(x, h, c);
  upd = ffn(norm2->forward(h), c);
  return h + (layer_scale_2 ? layer_scale_2->forward(upd) : upd);
}

at::Tensor TransformerLayerImpl::ffn(const at::Tensor& n, const StepContext& c) const {
  if (ffn_addon_) return ffn_addon_->ffn(n, c);
  if (linear1) return linear2->forward(at::gelu(linear1->forward(n, c)), c);
  if (gating_list)
    return per_step(n, cfg, c.offset_cpu, [&](int64_t s, const at::Tensor& xi) {
      return gating_list->ptr(s)->as<GatingImpl>()->forward(xi);
    });
  return gating->forward(n, &c);
}

void TransformerLayerImpl::add(std::shared_ptr<LayerAddon> addon) {
  if (addon->replaces_ffn()) {
    MT_CHECK(!ffn_addon_, "layer: two add-ons replace the FFN ('", ffn_addon_ ? ffn_addon_->unit() : "", "', '",
             addon->unit(), "')");
    ffn_addon_ = addon.get();
  }
  addon->slot = static_cast<int64_t>(by_slot_.size());
  by_slot_.push_back(addon.get());
  layer_addons_.push_back(std::move(addon));
}

void TransformerLayerImpl::attach(const std::string& target, const std::string& name,
                                  std::shared_ptr<LinearAddon> addon) {
  AddonBase* raw = addon.get();
  linear(target)->attach(name, std::move(addon));  // the linear owns it; throws before anything changed
  raw->slot = static_cast<int64_t>(by_slot_.size());
  by_slot_.push_back(raw);
}

Linear TransformerLayerImpl::linear(const std::string& target) const {
  if (target == "self_attn.in_proj" || target == "self_attn.out_proj") {
    const auto& list = target == "self_attn.in_proj" ? self_attn->in_projs : self_attn->out_projs;
    MT_CHECK(list->size() == 1, target, " has weights per step (not supported)");
    return Linear(list->ptr<LinearImpl>(0));
  }
  if (target == "gating.linear_in" || target == "gating.linear_out") {
    MT_CHECK(gating, target, ": the layer has no single gated FFN");
    return target == "gating.linear_in" ? gating->linear_in : gating->linear_out;
  }
  if (target == "linear1" || target == "linear2") {
    MT_CHECK(linear1, target, ": the layer has a gated FFN (use gating.linear_in/out)");
    return target == "linear1" ? linear1 : linear2;
  }
  fail("unknown linear '", target,
       "' (self_attn.in_proj, self_attn.out_proj, gating.linear_in, gating.linear_out, linear1, linear2)");
}

LayerState TransformerLayerImpl::make_state(int64_t batch) const {
  LayerState s;
  for (const AddonBase* a : by_slot_) s.add(a->state_name(), a->make_state(batch));
  return s;
}

StreamingTransformerImpl::StreamingTransformerImpl(const TransformerConfig& c,
                                                   const std::function<TransformerConfig(int64_t)>& layer_config)
    : cfg(c), pos_emb_(parse_positional_embedding(c.positional_embedding)) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    TransformerLayer layer(layer_config ? layer_config(i) : cfg);
    layer_ptrs.push_back(layer);
    layers->push_back(layer);
  }
}

bool StreamingTransformerImpl::has_addons() const {
  for (const auto& l : layer_ptrs)
    if (l->has_addons()) return true;
  return false;
}

std::vector<LayerState> StreamingTransformerImpl::make_layer_states(int64_t batch) const {
  std::vector<LayerState> out;
  out.reserve(layer_ptrs.size());
  for (const auto& l : layer_ptrs) out.push_back(l->make_state(batch));
  return out;
}

at::Tensor StreamingTransformerImpl::add_positional(const at::Tensor& x, const at::Tensor& offsets) const {
  if (pos_emb_ != PositionalEmbedding::kSin && pos_emb_ != PositionalEmbedding::kSinRope) return x;
  const int64_t T = x.size(1);
  at::Tensor pos = offsets.view({-1, 1}) + at::arange(T, offsets.options());
  return x + sin_embedding(pos, x.size(2), cfg.max_period, x.scalar_type());
}

namespace {
// Reentrant activation checkpointing of one layer without add-ons (whole-sequence forward): the
// forward runs without recording, the backward runs it again with recording and back-propagates
// through it, which accumulates the parameters' gradients and returns the input's.
struct LayerCheckpoint : torch::autograd::Function<LayerCheckpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& offsets,
                            int64_t layer_ptr) {
    ctx->save_for_backward({x, offsets});
    ctx->saved_data["layer"] = layer_ptr;
    at::NoGradGuard ng;
    return run(layer_ptr, x, offsets);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto saved = ctx->get_saved_variables();
    at::Tensor x = saved[0].detach().requires_grad_(true);
    at::Tensor y;
    {
      at::AutoGradMode on(true);
      y = run(ctx->saved_data["layer"].toInt(), x, saved[1]);
    }
    torch::autograd::backward({y}, {g[0]});
    return {x.grad(), at::Tensor(), at::Tensor()};
  }
  static at::Tensor run(int64_t layer_ptr, const at::Tensor& x, const at::Tensor& offsets) {
    StepContext c;
    c.offsets = offsets;
    return reinterpret_cast<const TransformerLayerImpl*>(layer_ptr)->forward(x, c);
  }
};
}  // namespace

at::Tensor StreamingTransformerImpl::forward(const at::Tensor& x, std::vector<LayerState>* states,
                                             const ProbeFn* probe) const {
  StepContext c;
  c.offsets = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(x.device()));
  c.input = x;
  c.probe = probe;
  at::Tensor h = add_positional(x, c.offsets);
  std::vector<LayerState> fresh;
  if (!states && has_addons()) {
    fresh = make_layer_states(x.size(0));
    states = &fresh;
  }
  const bool ckpt = gradient_checkpointing && at::GradMode::is_enabled();
  for (size_t i = 0; i < layer_ptrs.size(); ++i) {
    const bool addons = layer_ptrs[i]->has_addons();
    if (ckpt && !addons) {
      // The input must require grad for the backward to reach this layer's parameters (frozen
      // embeddings under LoRA would otherwise cut them off, silently).
      at::Tensor in = h.requires_grad() ? h : h.detach().requires_grad_(true);
      h = LayerCheckpoint::apply(in, c.offsets, reinterpret_cast<int64_t>(layer_ptrs[i].get()));
      continue;
    }
    c.layer = static_cast<int64_t>(i);
    c.state = addons ? &states->at(i) : nullptr;
    h = layer_ptrs[i]->forward(h, c);
  }
  return h;
}

at::Tensor StreamingTransformerImpl::step(const at::Tensor& x, TransformerState& st, const ProbeFn* probe) const {
  MT_CHECK(x.dim() == 3 && x.size(0) == st.batch && x.size(2) == cfg.d_model, "transformer step: expected [", st.batch,
           ", T, ", cfg.d_model, "], got ", shape_str(x.sizes().vec()));
  MT_CHECK(x.size(1) <= st.max_chunk, "transformer step: chunk of ", x.size(1),
           " steps, but the state was made for at most ", st.max_chunk, " (make_state's max_chunk)");
  StepContext c;
  c.offsets = st.offsets;
  c.offset_cpu = st.offset_cpu;
  c.input = x;
  c.probe = probe;
  at::Tensor h = add_positional(x, st.offsets);
  for (size_t i = 0; i < layer_ptrs.size(); ++i) {
    c.layer = static_cast<int64_t>(i);
    c.cache = &st.layers[i];
    c.state = layer_ptrs[i]->has_addons() ? &st.addons.at(i) : nullptr;
    h = layer_ptrs[i]->forward(h, c);
  }
  st.offsets.add_(x.size(1));
  st.offset_cpu += x.size(1);
  return h;
}

TransformerState StreamingTransformerImpl::make_state(int64_t batch, int64_t max_chunk,
                                                      std::optional<int64_t> window) const {
  TransformerState st;
  st.batch = batch;
  MT_CHECK(max_chunk >= 1, "max_chunk must be >= 1");
  st.max_chunk = max_chunk;
  // The run dtype and device: a float parameter's (a q8 linear holds int8 codes and float32 scales).
  at::Tensor any = at::empty({0});
  for (const auto& kv : named_parameters()) {
    const std::string& n = kv.key();
    if (at::isFloatingType(kv.value().scalar_type()) && !(n.size() >= 4 && n.compare(n.size() - 4, 4, "_scb") == 0)) {
      any = kv.value();
      break;
    }
  }
  auto opt = any.options().requires_grad(false);
  st.offsets = at::zeros({batch}, opt.dtype(at::kLong));
  st.addons = make_layer_states(batch);
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

}  // namespace mt::nn
