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

namespace mt::lm {

// A parameter-holding module: Linear without bias, named "<prefix>.weight".
struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out);
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor weight;
};
TORCH_MODULE(Linear);

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
struct GatingImpl : torch::nn::Module {
  GatingImpl(const std::string& activation, int64_t dim, int64_t dim_feedforward);
  at::Tensor forward(const at::Tensor& x) const;
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

struct TransformerState {
  int64_t batch = 0;
  at::Tensor offsets;       // [B] long: positions already consumed per batch slot
  int64_t offset_cpu = 0;   // host copy for weights-per-step indexing (all slots advance together there)
  int64_t max_chunk = 1;    // longest step() this state's KV ring was sized for
  std::vector<KVCache> layers;
  // Resets every slot (mask undefined) or the slots where mask is true.
  void reset(const at::Tensor& mask = {});
};

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const TransformerConfig& cfg);
  // x: [B, T, D]. Whole-sequence when state is null (positions 0..T-1), else streaming.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& offsets, int64_t offset_cpu, KVCache* cache) const;
  TransformerConfig cfg;
  torch::nn::ModuleList in_projs, out_projs;
};
TORCH_MODULE(Attention);

struct TransformerLayerImpl : torch::nn::Module {
  TransformerLayerImpl(const TransformerConfig& cfg);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& offsets, int64_t offset_cpu, KVCache* cache) const;
  TransformerConfig cfg;
  Attention self_attn{nullptr};
  Norm norm1{nullptr}, norm2{nullptr};
  Linear linear1{nullptr}, linear2{nullptr};   // gating == none
  Gating gating{nullptr};                      // gated, one weight set
  torch::nn::ModuleList gating_list{nullptr};  // gated, weights per step (registered as "gating")
  LayerScale layer_scale_1{nullptr}, layer_scale_2{nullptr};
};
TORCH_MODULE(TransformerLayer);

struct StreamingTransformerImpl : torch::nn::Module {
  explicit StreamingTransformerImpl(const TransformerConfig& cfg);
  // Whole sequence starting at position 0.
  at::Tensor forward(const at::Tensor& x) const;
  // Streaming: consumes x [B, T, D] after what the state has seen; updates the state.
  at::Tensor step(const at::Tensor& x, TransformerState& state) const;
  // The KV ring holds window + max_chunk - 1 entries, where the window is the context (or
  // weights_per_step, or `window` when given): chunks of up to max_chunk steps then see exactly the
  // keys the whole-sequence forward sees. Throws if nothing bounds the cache.
  TransformerState make_state(int64_t batch, int64_t max_chunk = 1, std::optional<int64_t> window = std::nullopt) const;
  TransformerConfig cfg;
  torch::nn::ModuleList layers;
  std::vector<TransformerLayer> layer_ptrs;
 private:
  at::Tensor add_positional(const at::Tensor& x, const at::Tensor& offsets) const;
};
TORCH_MODULE(StreamingTransformer);

// Interleaved RoPE (pairs 2i, 2i+1), fp32 math; q, k: [B, H, T, D]; positions: [B, T] (long).
void apply_rope(at::Tensor& q, at::Tensor& k, const at::Tensor& positions, double max_period);
// Sinusoidal embedding [B, T, dim] (cos half then sin half) for positions [B, T].
at::Tensor sin_embedding(const at::Tensor& positions, int64_t dim, double max_period, at::ScalarType dtype);
at::Tensor activation(const std::string& name, const at::Tensor& x);

}  // namespace mt::lm
