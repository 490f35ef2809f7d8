#pragma once
// The streaming transformer of Moshi (moshi/modules/transformer.py): norms, RoPE, attention with a
// ring KV cache, gated FFN, layers. Modules hold parameters only (named as in Kyutai's checkpoints);
// every streaming state lives in an explicit StreamState. Layers take add-ons (nn/addon.h) and know
// nothing of what they are.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "nn/addon.h"
#include "nn/linear.h"
#include "nn/transformer_config.h"

namespace mt::nn {

enum class NormKind { kLayerNorm, kLayerNormF32, kRmsNorm, kRmsNormF32 };
NormKind parse_norm(const std::string& name);  // layer_norm, layer_norm_f32, rms_norm, rms_norm_f32

enum class Activation { kSilu, kGelu, kRelu, kSigmoid, kTanh, kLeakyRelu, kElu, kMish, kSoftsign, kIdentity };
Activation parse_activation(const std::string& name);  // throws naming an unknown one
at::Tensor activation(Activation a, const at::Tensor& x);

enum class PositionalEmbedding { kNone, kSin, kRope, kSinRope };
PositionalEmbedding parse_positional_embedding(const std::string& name);

// layer_norm (weight, bias), layer_norm_f32, rms_norm, rms_norm_f32 (alpha [1,1,D]).
struct NormImpl : torch::nn::Module {
  NormImpl(const std::string& kind, int64_t dim);
  at::Tensor forward(const at::Tensor& x) const;
  NormKind kind;
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
struct GatingImpl : torch::nn::Module {
  GatingImpl(const std::string& activation, int64_t dim, int64_t dim_feedforward);
  // c: the step context, needed when its linears carry add-ons.
  at::Tensor forward(const at::Tensor& x, const StepContext* c = nullptr) const;
  Activation activation;
  Linear linear_in{nullptr}, linear_out{nullptr};
};
TORCH_MODULE(Gating);

// Embedding whose id -1 maps to an exact zero vector; optional low-rank projection.
struct ScaledEmbeddingImpl : torch::nn::Module {
  static constexpr int64_t kZeroId = -1;  // Kyutai's zero token (LMConfig::kZeroToken)
  ScaledEmbeddingImpl(int64_t num, int64_t dim, std::optional<int64_t> low_rank = std::nullopt);
  at::Tensor forward(const at::Tensor& ids) const;
  at::Tensor weight;
  Linear low_rank{nullptr};
};
TORCH_MODULE(ScaledEmbedding);

// Per-layer streaming attention state: ring buffer of rotated keys and values. A slot's old entries
// are never read after its offset goes back to 0 (TransformerState::reset), so resets only zero them.
struct KVCache final : StreamState {
  at::Tensor k, v;  // [B, H, capacity, D]
  int64_t capacity = 0;
  void reset() override;
  void reset_slot(int64_t b) override;
  void write(const std::string& prefix, TensorMap& out) const override;
  void read(const std::string& prefix, const TensorMap& in, const at::Device& device) override;
};

// Everything a stream of `batch` slots changes in one transformer: positions, KV rings, add-on states.
struct TransformerState final : StreamState {
  int64_t batch = 0;
  at::Tensor offsets;      // [B] long: positions already consumed per batch slot
  int64_t offset_cpu = 0;  // host copy for weights-per-step indexing (all slots advance together there)
  int64_t max_chunk = 1;   // longest step() this state's KV ring was sized for
  std::vector<KVCache> layers;
  std::vector<LayerState> addons;  // per layer; empty for layers without add-ons
  // Resets every slot (mask undefined) or the slots where mask is true: offsets, and add-on states
  // back to their start (TTT: the layer's current learned initial weights).
  void reset(const at::Tensor& mask);
  void reset() override { reset(at::Tensor()); }
  void reset_slot(int64_t b) override;
  // Cuts the autograd history of carried add-on states (training across chunks).
  void detach() override;
  void write(const std::string& prefix, TensorMap& out) const override;
  void read(const std::string& prefix, const TensorMap& in, const at::Device& device) override;
  int64_t updates() const override;
};

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const TransformerConfig& cfg);
  // x: [B, T, D]. Whole-sequence when c.cache is null (positions 0..T-1), else streaming.
  at::Tensor forward(const at::Tensor& x, const StepContext& c) const;
  TransformerConfig cfg;
  PositionalEmbedding pos_emb;
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

  // x: [B, T, D] -> [B, T, D]; c says where (whole sequence or streaming) and holds the add-on states.
  at::Tensor forward(const at::Tensor& x, const StepContext& c) const;

  // Add-ons. A LayerAddon registers its own tensors where its checkpoint names put them; the layer
  // keeps it for the hooks and gives it the next state slot.
  void add(std::shared_ptr<LayerAddon> addon);
  // Attaches a LinearAddon to the named linear (linear()) under `name`; its state takes the next slot.
  void attach(const std::string& target, const std::string& name, std::shared_ptr<LinearAddon> addon);
  // The single-weight-set linear a target names: self_attn.in_proj, self_attn.out_proj,
  // gating.linear_in, gating.linear_out, linear1, linear2; throws saying why one does not exist.
  Linear linear(const std::string& target) const;
  bool has_addons() const { return !by_slot_.empty(); }
  const std::vector<AddonBase*>& addons() const { return by_slot_; }
  const std::vector<std::shared_ptr<LayerAddon>>& layer_addons() const { return layer_addons_; }
  LayerState make_state(int64_t batch) const;

 private:
  at::Tensor ffn(const at::Tensor& n, const StepContext& c) const;
  std::vector<std::shared_ptr<LayerAddon>> layer_addons_;
  std::vector<AddonBase*> by_slot_;  // every add-on by state slot (owned by layer_addons_ or its linear)
  const LayerAddon* ffn_addon_ = nullptr;
};
TORCH_MODULE(TransformerLayer);

struct StreamingTransformerImpl : torch::nn::Module {
  // layer_config(i): the config of layer i when layers differ (their attention windows); cfg otherwise.
  explicit StreamingTransformerImpl(const TransformerConfig& cfg,
                                    const std::function<TransformerConfig(int64_t)>& layer_config = {});
  // Whole sequence starting at position 0. Layers with add-ons start from fresh states, or from and
  // into `states` when given (persistent states across training chunks).
  at::Tensor forward(const at::Tensor& x, std::vector<LayerState>* states = nullptr,
                     const ProbeFn* probe = nullptr) const;
  // Streaming: consumes x [B, T, D] after what the state has seen; updates the state.
  at::Tensor step(const at::Tensor& x, TransformerState& state, const ProbeFn* probe = nullptr) const;
  std::vector<LayerState> make_layer_states(int64_t batch) const;
  bool has_addons() const;
  // The KV ring holds window + max_chunk - 1 entries, where the window is the context (or
  // weights_per_step, or `window` when given): chunks of up to max_chunk steps then see exactly the
  // keys the whole-sequence forward sees. Throws if nothing bounds the cache.
  TransformerState make_state(int64_t batch, int64_t max_chunk = 1, std::optional<int64_t> window = std::nullopt) const;
  TransformerConfig cfg;
  torch::nn::ModuleList layers;
  std::vector<TransformerLayer> layer_ptrs;
  // Training memory: in forward() with gradients on, layers without add-ons keep only their input and
  // recompute their activations during the backward (gradient checkpointing). Same values and
  // gradients; layers with add-ons are not recomputed (a TTT scan has its own checkpointing).
  bool gradient_checkpointing = false;

 private:
  at::Tensor add_positional(const at::Tensor& x, const at::Tensor& offsets) const;
  PositionalEmbedding pos_emb_;
};
TORCH_MODULE(StreamingTransformer);

// Interleaved RoPE (pairs 2i, 2i+1), fp32 math; q, k: [B, H, T, D]; positions: [B, T] (long).
// yarn: optional YaRN scaling of the frequencies and the attention temperature (config.h).
void apply_rope(at::Tensor& q, at::Tensor& k, const at::Tensor& positions, double max_period,
                const RopeScaling* yarn = nullptr);
// Sinusoidal embedding [B, T, dim] (cos half then sin half) for positions [B, T].
at::Tensor sin_embedding(const at::Tensor& positions, int64_t dim, double max_period, at::ScalarType dtype);

}  // namespace mt::nn
