#pragma once
// The streaming transformer of Moshi (moshi/modules/transformer.py): norms, RoPE, attention with a
// ring KV cache, gated FFN, layers. Modules hold parameters only (named as in Kyutai's checkpoints);
// every streaming state lives in an explicit State object.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <optional>
#include <string>
#include <vector>

#include "lm/config.h"
#include "nn/linear.h"
#include "lm/ttt_config.h"
#include "ttt/inplace.h"
#include "ttt/ttt_layer.h"

namespace mt::lm {

// layer_norm (weight, bias), layer_norm_f32, rms_norm, rms_norm_f32 (alpha [1,1,D]).
struct NormImpl : torch::nn::Module {
  NormImpl(const std::string& kind, int64_t dim);
  at::Tensor forward(const at::Tensor& x) const;
  std::string kind;
  double eps;
  at::Tensor weight, bias, alpha;
};
TORCH_MODULE(Norm);

struct LayerScaleImpl : torch::nn::Module {
  LayerScaleImpl(int64_t dim, double init);
  at::Tensor forward(const at::Tensor& x) const { return x * scale; }
  at::Tensor scale;
};
TORCH_MODULE(LayerScale);

// Gated FFN (ActivationGating): linear_in -> [gate | value] -> act(gate) * value -> linear_out.
struct LayerTTTState;
struct LayerProbes;
struct GatingImpl : torch::nn::Module {
  GatingImpl(const std::string& activation, int64_t dim, int64_t dim_feedforward);
  // st / probes: the layer's TTT state when its linears carry TTT adapters.
  at::Tensor forward(const at::Tensor& x, LayerTTTState* st = nullptr, LayerProbes* probes = nullptr) const;
  std::string activation;
  Linear linear_in{nullptr}, linear_out{nullptr};
};
TORCH_MODULE(Gating);

// Embedding whose id -1 maps to an exact zero vector; optional low-rank projection.
struct ScaledEmbeddingImpl : torch::nn::Module {
  ScaledEmbeddingImpl(int64_t num, int64_t dim, std::optional<int64_t> low_rank = std::nullopt);
  at::Tensor forward(const at::Tensor& ids) const;
  at::Tensor weight;
  Linear low_rank{nullptr};
};
TORCH_MODULE(ScaledEmbedding);

// Per-layer streaming attention state: ring buffer of rotated keys and values.
struct KVCache {
  at::Tensor k, v;          // [B, H, capacity, D]
  int64_t capacity = 0;
  void reset();
};

// The TTT part of one layer's per-stream state: whichever of the three integrations the layer has.
struct LayerTTTState {
  ttt::TTTState hybrid;                 // hybrid block (batch 0 when the layer has none)
  std::vector<ttt::TTTState> adapters;  // one per TTT adapter of the layer (LinearImpl::adapter_slot)
  ttt::InPlaceState inplace;            // In-Place FFN (batch 0 when none)
  bool empty() const { return hybrid.batch == 0 && adapters.empty() && inplace.batch() == 0; }
  // TTT updates applied through this state since it was made, summed over slots: hybrid and adapter
  // mini-batch updates, In-Place chunk updates.
  int64_t updates() const;
  void reset();
  void reset_slot(int64_t b);
  void detach();
};

// Diagnostics of one layer's TTT (filled when probes are requested).
struct LayerProbes {
  ttt::TTTProbes hybrid;
  std::vector<ttt::TTTProbes> adapters;
  at::Tensor inplace_dw_norm;  // [B] ‖W_t − W_0‖ of the In-Place fast weight after the call
  int64_t inplace_updates = 0; // chunk updates applied so far (slot 0)
};

struct TransformerState {
  int64_t batch = 0;
  at::Tensor offsets;       // [B] long: positions already consumed per batch slot
  int64_t offset_cpu = 0;   // host copy for weights-per-step indexing (all slots advance together there)
  int64_t max_chunk = 1;    // longest step() this state's KV ring was sized for
  std::vector<KVCache> layers;
  std::vector<LayerTTTState> ttt;  // per layer; empty for layers without TTT
  // Resets every slot (mask undefined) or the slots where mask is true: offsets, and TTT inner
  // states back to the layer's current learned initial weights.
  void reset(const at::Tensor& mask = {});
  // Cuts the autograd history of carried TTT states (training across chunks).
  void detach();
};

// Hybrid TTT block (Video-DiT style, Path A): h + tanh(gating_alpha) * TTT(norm(h)).
struct HybridTTTImpl : torch::nn::Module {
  HybridTTTImpl(const std::string& norm, int64_t dim, const ttt::TTTConfig& cfg, double alpha_init);
  at::Tensor forward(const at::Tensor& h, ttt::TTTState& st, ttt::TTTProbes* probes = nullptr) const;
  // Sets the reference's initial values (TTT layer init, alpha, norm), seeded.
  void init(uint64_t seed, double alpha_init) const;  // writes parameter values only
  Norm norm{nullptr};
  at::Tensor gating_alpha;  // [dim]
  std::shared_ptr<ttt::TTTLayer> layer;  // parameters registered under "layer."
};
TORCH_MODULE(HybridTTT);

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const TransformerConfig& cfg);
  // x: [B, T, D]. Whole-sequence when state is null (positions 0..T-1), else streaming.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& offsets, int64_t offset_cpu, KVCache* cache,
                     LayerTTTState* tst = nullptr, LayerProbes* probes = nullptr) const;
  TransformerConfig cfg;
  torch::nn::ModuleList in_projs, out_projs;
};
TORCH_MODULE(Attention);

struct TransformerLayerImpl : torch::nn::Module {
  TransformerLayerImpl(const TransformerConfig& cfg);
  TransformerConfig cfg;
  Attention self_attn{nullptr};
  Norm norm1{nullptr}, norm2{nullptr};
  Linear linear1{nullptr}, linear2{nullptr};   // gating == none
  Gating gating{nullptr};                      // gated, one weight set
  torch::nn::ModuleList gating_list{nullptr};  // gated, weights per step (registered as "gating")
  LayerScale layer_scale_1{nullptr}, layer_scale_2{nullptr};
  HybridTTT ttt{nullptr};                      // hybrid TTT between attention and FFN
  // In-Place TTT of the gated FFN: shares `gating`'s weights (W_down = gating.linear_out.weight is the
  // fast weight's start); its target conv and projection are gating.ttt_conv.weight / ttt_proj.weight.
  std::shared_ptr<ttt::InPlaceFFNImpl> inplace;
  double initial_alpha = 0.1;                  // hybrid gate's initial value (init_ttt)
  enum class Placement { after_attention, parallel, before_attention };
  Placement ttt_placement = Placement::after_attention;  // hybrid: where TTT reads (ttt.placement)
  bool inplace_target_embeddings = true;       // target source: the transformer input, else the FFN input
  std::vector<Linear> adapted;                 // linears carrying TTT adapters, by adapter slot
  std::vector<std::string> adapted_names;      // their targets ("self_attn.in_proj", ...)
  // cache null: whole sequence from position 0. tst: this layer's TTT state (required when the layer
  // has TTT). x0: the transformer's input (In-Place target source "embeddings").
  at::Tensor forward(const at::Tensor& x, const at::Tensor& offsets, int64_t offset_cpu, KVCache* cache,
                     LayerTTTState* tst = nullptr, LayerProbes* probes = nullptr, const at::Tensor& x0 = {}) const;
  bool has_ttt() const { return ttt || inplace || !adapted.empty(); }
  LayerTTTState make_ttt_state(int64_t batch) const;
  // Reference initial values of every TTT tensor of the layer (hybrid block, adapters, In-Place target).
  void init_ttt(uint64_t seed) const;
};
TORCH_MODULE(TransformerLayer);

struct StreamingTransformerImpl : torch::nn::Module {
  // With an enabled hybrid TTT integration, the chosen layers get a TTT block and their own attention
  // window (attention_context); the others take non_ttt_attention_context when set.
  explicit StreamingTransformerImpl(const TransformerConfig& cfg, const TTTIntegrationConfig* ttt = nullptr);
  // Whole sequence starting at position 0. TTT layers start from fresh states, or from and into
  // `ttt_states` when given (persistent states across training chunks).
  at::Tensor forward(const at::Tensor& x, std::vector<LayerTTTState>* ttt_states = nullptr,
                     std::vector<LayerProbes>* probes = nullptr) const;
  // Streaming: consumes x [B, T, D] after what the state has seen; updates the state.
  at::Tensor step(const at::Tensor& x, TransformerState& state, std::vector<LayerProbes>* probes = nullptr) const;
  std::vector<LayerTTTState> make_ttt_states(int64_t batch) const;
  bool has_ttt() const;
  // The KV ring holds window + max_chunk - 1 entries, where the window is the context (or
  // weights_per_step, or `window` when given): chunks of up to max_chunk steps then see exactly the
  // keys the whole-sequence forward sees. Throws if nothing bounds the cache.
  TransformerState make_state(int64_t batch, int64_t max_chunk = 1, std::optional<int64_t> window = std::nullopt) const;
  TransformerConfig cfg;
  torch::nn::ModuleList layers;
  std::vector<TransformerLayer> layer_ptrs;
  // Training memory: in forward() with gradients on, layers without TTT keep only their input and
  // recompute their activations during the backward (gradient checkpointing). Same values and
  // gradients; TTT layers are not recomputed (their inner scan has its own checkpointing).
  bool gradient_checkpointing = false;
 private:
  at::Tensor add_positional(const at::Tensor& x, const at::Tensor& offsets) const;
};
TORCH_MODULE(StreamingTransformer);

// Interleaved RoPE (pairs 2i, 2i+1), fp32 math; q, k: [B, H, T, D]; positions: [B, T] (long).
// yarn: optional YaRN scaling of the frequencies and the attention temperature (config.h).
void apply_rope(at::Tensor& q, at::Tensor& k, const at::Tensor& positions, double max_period,
                const RopeScaling* yarn = nullptr);
// Sinusoidal embedding [B, T, dim] (cos half then sin half) for positions [B, T].
at::Tensor sin_embedding(const at::Tensor& positions, int64_t dim, double max_period, at::ScalarType dtype);
at::Tensor activation(const std::string& name, const at::Tensor& x);

}  // namespace mt::lm
