#include "lm/ttt_integration.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "util/error.h"
#include "util/pitfall_switch.h"

namespace mt::lm {

std::function<nn::TransformerConfig(int64_t)> layer_configs(const nn::TransformerConfig& base,
                                                            const TTTIntegrationConfig& ttt) {
  if (!ttt.enable) return {};
  ttt.validate(base.num_layers);
  const std::vector<int64_t> chosen = ttt.layer_indices(base.num_layers);
  return [base, ttt, chosen](int64_t i) {
    nn::TransformerConfig lc = base;
    const bool is_ttt = std::find(chosen.begin(), chosen.end(), i) != chosen.end();
    if (is_ttt && ttt.attention_context) lc.context = ttt.attention_context;
    if (!is_ttt && ttt.non_ttt_attention_context) lc.context = ttt.non_ttt_attention_context;
    return lc;
  };
}

namespace {
// The inner TTT layer config (hybrid block: the model's width and heads; adapter: one head of width
// adapter_rank); errors name the config field.
ttt::TTTConfig inner_config(const TTTIntegrationConfig& t, int64_t width, int64_t heads, int64_t layer,
                            const char* what) {
  ttt::TTTConfig tc;
  tc.hidden_size = width;
  tc.num_attention_heads = heads;
  tc.mini_batch_size = t.mini_batch_size;
  tc.ttt_layer_type = name(t.type);
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

void add_hybrid(nn::TransformerLayerImpl& layer, const TTTIntegrationConfig& t, const std::string& norm, int64_t i) {
  const nn::TransformerConfig& c = layer.cfg;
  const ttt::TTTConfig tc = inner_config(t, c.d_model, t.num_heads > 0 ? t.num_heads : c.num_heads, i, "hybrid");
  auto h = std::make_shared<HybridTTTImpl>(norm, c.d_model, tc, t.initial_gating_alpha, t.placement);
  layer.register_module("ttt", h);
  layer.add(h);
}

void add_adapters(nn::TransformerLayerImpl& layer, const TTTIntegrationConfig& t, int64_t i) {
  const ttt::TTTConfig tc = inner_config(t, t.adapter_rank, 1, i, "adapter of width adapter_rank");
  for (size_t j = 0; j < t.adapter_targets.size(); ++j) {
    const std::string& target = t.adapter_targets[j];
    nn::Linear lin{nullptr};
    try {
      lin = layer.linear(target);
    } catch (const Error& e) {
      fail("ttt.adapter_targets (layer ", i, "): ", e.what());
    }
    MT_CHECK(!lin->addon, "ttt.adapter_targets: '", target, "' listed twice");
    auto a = std::make_shared<TTTAdapterImpl>(lin->in_features(), lin->out_features(), tc, t.adapter_scale,
                                              static_cast<int64_t>(j), target);
    layer.attach(target, "ttt_adapter", a);
  }
}

void add_inplace(nn::TransformerLayerImpl& layer, const TTTIntegrationConfig& t, int64_t i) {
  const nn::TransformerConfig& c = layer.cfg;
  MT_CHECK(layer.gating, "ttt.variant inplace: layer ", i, " needs a gated FFN with one weight set (gating '", c.gating,
           "', weights_per_step ", c.weights_per_step, ")");
  ttt::InPlaceConfig ic;
  ic.dim = c.d_model;
  ic.hidden = layer.gating->linear_out->weight.size(1);
  ic.chunk_size = t.inplace_chunk_size;
  ic.lr = t.inplace_lr;
  ic.use_proj = t.inplace_use_proj;
  ic.conv_kernel = t.inplace_conv_kernel;
  ic.conv_lookahead = t.inplace_lookahead;
  // Tests only: pitfalls.md row 9 (a setting parsed and never forwarded to the computation).
  ic.delta_clip_fro_norm = pitfall::on(9) ? 0.0 : t.inplace_delta_clip_fro_norm;
  ic.activation = c.gating;
  try {
    ic.validate();
  } catch (const Error& e) {
    fail("ttt (inplace, layer ", i, "): ", e.what());
  }
  layer.add(std::make_shared<InPlaceTTTImpl>(ic, *layer.gating, t.inplace_target));
}
}  // namespace

void install_ttt(nn::StreamingTransformerImpl& tr, const TTTIntegrationConfig& t, const std::string& norm) {
  if (!t.enable) return;
  t.validate(tr.cfg.num_layers);
  for (int64_t i : t.layer_indices(tr.cfg.num_layers)) {
    nn::TransformerLayerImpl& layer = *tr.layer_ptrs.at(static_cast<size_t>(i));
    switch (t.variant) {
      case TTTVariant::kHybrid: add_hybrid(layer, t, norm, i); break;
      case TTTVariant::kAdapter: add_adapters(layer, t, i); break;
      case TTTVariant::kInPlace: add_inplace(layer, t, i); break;
    }
  }
}

void init_ttt(const nn::TransformerLayerImpl& layer, uint64_t seed) {
  for (nn::AddonBase* a : layer.addons())
    if (dynamic_cast<TTTUnit*>(a)) a->init(seed);
}

nn::ProbeFn probe_collector(const nn::StreamingTransformerImpl& t, std::vector<LayerProbes>& out) {
  out.assign(t.layer_ptrs.size(), {});
  return [&t, &out](int64_t layer, int64_t slot, const nn::TensorMap& v) {
    const nn::AddonBase* who = t.layer_ptrs.at(static_cast<size_t>(layer))->addons().at(static_cast<size_t>(slot));
    LayerProbes& p = out.at(static_cast<size_t>(layer));
    if (dynamic_cast<const HybridTTTImpl*>(who)) {
      p.hybrid = probes_from(v);
    } else if (const auto* a = dynamic_cast<const TTTAdapterImpl*>(who)) {
      if (p.adapters.size() <= static_cast<size_t>(a->index)) p.adapters.resize(a->index + 1);
      p.adapters[a->index] = probes_from(v);
    } else if (dynamic_cast<const InPlaceTTTImpl*>(who)) {
      p.inplace_dw_norm = v.at("dw_norm");
      p.inplace_updates = v.at("updates").item<int64_t>();
    }
  };
}

namespace {
// The layer's add-ons of type T, in slot order.
template <class T>
std::vector<const T*> addons_of(const nn::TransformerLayerImpl& layer) {
  std::vector<const T*> out;
  for (const auto* a : layer.addons())
    if (const auto* t = dynamic_cast<const T*>(a)) out.push_back(t);
  return out;
}

// The inner states of the layer state's slots of kind S, in slot order.
template <class S>
std::vector<decltype(S::s)*> states_of(const nn::LayerState& s) {
  std::vector<decltype(S::s)*> out;
  for (size_t i = 0; i < s.size(); ++i)
    if (auto* st = s.as<S>(static_cast<int64_t>(i))) out.push_back(&st->s);
  return out;
}

template <class P>
P first_or_null(const std::vector<P>& v) {
  return v.empty() ? nullptr : v.front();
}
}  // namespace

const HybridTTTImpl* hybrid_of(const nn::TransformerLayerImpl& layer) {
  return first_or_null(addons_of<HybridTTTImpl>(layer));
}
std::vector<const TTTAdapterImpl*> adapters_of(const nn::TransformerLayerImpl& layer) {
  return addons_of<TTTAdapterImpl>(layer);
}
const InPlaceTTTImpl* inplace_of(const nn::TransformerLayerImpl& layer) {
  return first_or_null(addons_of<InPlaceTTTImpl>(layer));
}
bool has_ttt(const nn::TransformerLayerImpl& layer) { return !addons_of<TTTUnit>(layer).empty(); }

ttt::TTTState* hybrid_state(const nn::LayerState& s) { return first_or_null(states_of<HybridState>(s)); }
std::vector<ttt::TTTState*> adapter_states(const nn::LayerState& s) { return states_of<AdapterState>(s); }
ttt::InPlaceState* inplace_state(const nn::LayerState& s) { return first_or_null(states_of<InPlaceStreamState>(s)); }

ScopedTTTOff::ScopedTTTOff(nn::StreamingTransformerImpl& t) {
  for (const auto& layer : t.layer_ptrs)
    for (nn::AddonBase* a : layer->addons())
      if (auto* u = dynamic_cast<TTTUnit*>(a)) {
        u->set_off(true);
        units_.push_back(u);
      }
}

ScopedTTTOff::~ScopedTTTOff() {
  for (TTTUnit* u : units_) u->set_off(false);
}

}  // namespace mt::lm
