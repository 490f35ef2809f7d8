#pragma once
// TTT in a Moshi LM, in one place: which layers get which add-on (from the `ttt:` config), the TTT
// layers' attention windows, the probes a pass collects, typed access to the add-ons and their states,
// and the no-TTT control.
#include <functional>
#include <vector>

#include "lm/ttt_addons.h"
#include "lm/ttt_config.h"
#include "nn/transformer.h"

namespace mt::lm {

// Reference initial values of every TTT tensor of the layer (hybrid block, adapters, In-Place target),
// from the layer's seed.
void init_ttt(const nn::TransformerLayerImpl& layer, uint64_t seed);

// The config of each temporal layer: the chosen TTT layers take ttt.attention_context, the others
// ttt.non_ttt_attention_context, when set.
std::function<nn::TransformerConfig(int64_t)> layer_configs(const nn::TransformerConfig& base,
                                                            const TTTIntegrationConfig& ttt);
// Puts the configured add-on into every chosen layer (validating the config once, errors naming the
// field and the layer). `norm` is the model's norm kind (the hybrid block's own norm).
void install_ttt(nn::StreamingTransformerImpl& t, const TTTIntegrationConfig& ttt, const std::string& norm);

// Diagnostics of one layer's TTT (filled when probes are requested).
struct LayerProbes {
  ttt::TTTProbes hybrid;
  std::vector<ttt::TTTProbes> adapters;  // by adapter index
  at::Tensor inplace_dw_norm;            // [B] ‖W_t − W_0‖ of the In-Place fast weight after the call
  int64_t inplace_updates = 0;           // chunk updates applied so far (slot 0)
};
// A probe callback that fills `out` (one entry per layer of `t`, cleared now) from the add-ons' reports.
nn::ProbeFn probe_collector(const nn::StreamingTransformerImpl& t, std::vector<LayerProbes>& out);

// The layer's add-ons of each kind (none: nullptr / empty).
const HybridTTTImpl* hybrid_of(const nn::TransformerLayerImpl& layer);
std::vector<const TTTAdapterImpl*> adapters_of(const nn::TransformerLayerImpl& layer);
const InPlaceTTTImpl* inplace_of(const nn::TransformerLayerImpl& layer);
bool has_ttt(const nn::TransformerLayerImpl& layer);

// The states of one layer's TTT add-ons, by kind (none: nullptr / empty).
ttt::TTTState* hybrid_state(const nn::LayerState& s);
std::vector<ttt::TTTState*> adapter_states(const nn::LayerState& s);
ttt::InPlaceState* inplace_state(const nn::LayerState& s);

// Every TTT unit of a transformer contributes nothing while this lives (gates, adapter scales and
// In-Place lr at 0: the `no-ttt` control of eval long-context); restored when it goes.
class ScopedTTTOff {
 public:
  explicit ScopedTTTOff(nn::StreamingTransformerImpl& t);
  ~ScopedTTTOff();
  ScopedTTTOff(const ScopedTTTOff&) = delete;
  ScopedTTTOff& operator=(const ScopedTTTOff&) = delete;

 private:
  std::vector<TTTUnit*> units_;
};

}  // namespace mt::lm
