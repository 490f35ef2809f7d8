#pragma once
// Moshi's LMModel (moshi/models/lm.py): embeddings of the 1 + n_q streams, the temporal transformer,
// the text head, and the depformer that predicts dep_q audio codebooks per step.
// Member names mirror the reference's module tree, so each checkpoint tensor maps to one parameter.
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lm/config.h"
#include "lm/ttt_integration.h"
#include "nn/transformer.h"

namespace mt::io {
class SafeTensors;
}

namespace mt::lm {

// The LM is built from nn/'s modules (as Kyutai's lm.py from moshi/modules).
using nn::Linear;
using nn::LinearImpl;
using nn::Norm;
using nn::NormImpl;
using nn::ScaledEmbedding;
using nn::ScaledEmbeddingImpl;
using nn::StreamingTransformer;
using nn::TransformerState;

struct LMOutput {
  at::Tensor logits;       // [B, dep_q, T, card]; meaningless where mask is false
  at::Tensor mask;         // [B, dep_q, T] bool
  at::Tensor text_logits;  // [B, 1, T, text_card_out]
  at::Tensor text_mask;    // [B, 1, T] bool
};

struct LMModelImpl : torch::nn::Module {
  // Parameters are allocated, not initialised: follow with load() or init_weights().
  // LoRA (moshi-finetune's) goes on every Linear whose module path contains one of lora.targets
  // (every Linear of the model when empty), TTT adapters included only if named explicitly.
  explicit LMModelImpl(const LMConfig& cfg, const TTTIntegrationConfig& ttt = {}, const LoRAConfig& lora = {});

  // Training/scoring forward on codes [B, 1 + n_q, T] (text first), aligned with codes like the reference.
  // probes: per temporal layer, the TTT diagnostics of this pass. ttt_states: TTT states to start from
  // and update (persistent states across consecutive training chunks of one file; detach() between
  // chunks, reset slots at a file boundary); fresh states when null. Attention always starts afresh.
  LMOutput forward(const at::Tensor& codes, std::vector<LayerProbes>* probes = nullptr,
                   std::vector<nn::LayerState>* ttt_states = nullptr) const;
  // The same outputs with the temporal transformer run in streaming mode from `state` (chunks of
  // state.max_chunk steps; KV caches and TTT states carried and updated): scoring as a conversation
  // is heard. Equal to forward() from a fresh state.
  // probes: per layer, per-token probes concatenated over the chunks; norms after the last chunk.
  LMOutput forward_streaming(const at::Tensor& codes, TransformerState& state,
                             std::vector<LayerProbes>* probes = nullptr) const;

  // Temporal part on an already delayed sequence [B, K, S]: (transformer_out [B, S, dim],
  // text_logits [B, 1, S, text_card_out]). With a state, runs in streaming mode after what it has seen.
  std::pair<at::Tensor, at::Tensor> forward_text(const at::Tensor& seq, TransformerState* state = nullptr,
                                                 std::vector<LayerProbes>* probes = nullptr,
                                                 std::vector<nn::LayerState>* ttt_states = nullptr) const;
  // Depformer teacher-forced over all codebooks: seq [B, K, T] (delayed targets), out [B, T, dim] ->
  // logits [B, dep_q, T, card].
  at::Tensor forward_depformer_training(const at::Tensor& seq, const at::Tensor& transformer_out) const;
  // One depformer step (codebook cb) in streaming mode: prev [B] (text token for cb 0, else audio token
  // cb-1), transformer_out [B, 1, dim] -> logits [B, card].
  at::Tensor depformer_step(int64_t cb, const at::Tensor& prev, const at::Tensor& transformer_out,
                            TransformerState& dep_state) const;

  at::Tensor initial_tokens() const;  // [1, K, 1]: text_card for text, card for audio
  TransformerState make_state(int64_t batch, int64_t max_chunk = 1) const {
    return transformer->make_state(batch, max_chunk);
  }
  // The depformer restarts every frame and sees at most dep_q steps.
  TransformerState make_depformer_state(int64_t batch) const { return depformer->make_state(batch, 1, cfg.dep_q); }

  // Reference initialisation (trunc-normal 1/sqrt(fan_in) for embeddings, heads and main layers;
  // PyTorch's default uniform for the depformer layers), seeded.
  void init_weights(uint64_t seed);
  // Reference initial values of the tensors TTT and LoRA add (also part of init_weights).
  void init_added(uint64_t seed, bool ttt, bool lora);
  // Strict load: every parameter must be found (reference name, or the fused in_proj_weight /
  // out_proj.weight names split per step), shapes must match, no tensor may be left over. The one
  // exception: a file with none of the TTT tensors (a base checkpoint), or none of the LoRA tensors,
  // leaves that group at its initial values; the number of such tensors is returned. A file with some
  // but not all of a group is an error naming a missing one.
  int64_t load(const io::SafeTensors& file);
  int64_t load(const std::map<std::string, at::Tensor>& tensors, const std::string& source);
  // Loads an adapter file (moshi-finetune's lora.safetensors, or our trainable tensors: LoRA, TTT,
  // embeddings) over the current weights: every tensor must name a parameter with its shape, and every
  // TTT / LoRA parameter of the model must be in the file. Returns the number of tensors loaded.
  int64_t load_overlay(const std::map<std::string, at::Tensor>& tensors, const std::string& source);
  int64_t load_overlay(const std::string& safetensors_path);
  // Turns every Linear of the LM (not LoRA or TTT ones) into Kyutai's q8 format (constructor, when
  // cfg.quantize): int8 `weight` + float32 `weight_scb`, loaded or drawn afterwards.
  void make_q8();
  // The q8 linears by module path (`all`: every linear make_q8 converts, q8 or not yet).
  std::vector<std::pair<std::string, LinearImpl*>> q8_linears(bool all = false) const;
  // name -> parameter, in the reference's (split) names.
  std::vector<std::pair<std::string, at::Tensor>> state_dict() const;
  int64_t num_parameters() const;

  LMConfig cfg;
  TTTIntegrationConfig ttt_cfg;
  LoRAConfig lora_cfg;
  torch::nn::ModuleList emb;
  ScaledEmbedding text_emb{nullptr};
  Linear text_linear{nullptr};
  StreamingTransformer transformer{nullptr};
  Norm out_norm{nullptr};
  torch::nn::ModuleList depformer_in{nullptr};
  torch::nn::ModuleList depformer_emb{nullptr};
  ScaledEmbedding depformer_text_emb{nullptr};
  StreamingTransformer depformer{nullptr};
  torch::nn::ModuleList depformer_norms{nullptr};  // only when depformer_norm is set
  torch::nn::ModuleList linears{nullptr};

  // codes [B, K, T] -> the delayed input [B, K, T+1] with the initial column first (position s of it
  // feeds the step that predicts position s+1).
  at::Tensor delayed_input(const at::Tensor& codes) const;

 private:
  int64_t depformer_in_index(int64_t cb) const;
  LMOutput finish(const at::Tensor& codes, const at::Tensor& delayed, const at::Tensor& tout,
                  const at::Tensor& text_logits) const;
  at::Tensor depformer_token_emb(int64_t cb, const at::Tensor& tokens) const;
  at::Tensor depformer_head(int64_t cb, const at::Tensor& x) const;
};
TORCH_MODULE(LMModel);

// Builds a model from a config and a checkpoint (safetensors), strictly; dtype as in the file unless given.
// device: where the weights go (default: the CPU). Another device gets them from the memory-mapped file
// directly: a 7B loads onto its GPU with no host copy of its weights.
LMModel load_lm(const LMConfig& cfg, const std::string& weights_path, std::optional<at::ScalarType> dtype = at::kFloat,
                const TTTIntegrationConfig& ttt = {}, int64_t* initialised_ttt_tensors = nullptr,
                const LoRAConfig& lora = {}, const std::string& lora_path = "",
                std::optional<at::Device> device = std::nullopt);

// A float model's tensors in Kyutai's q8 format (`moshi-ttt quantize`): every Linear that make_q8
// converts becomes `<name>.weight` int8 + `<name>.weight_scb` float32 (util::quantize_q8); the rest
// (embeddings, norms, TTT and LoRA tensors) as they are.
std::vector<std::pair<std::string, at::Tensor>> quantized_state_dict(const LMModelImpl& m);
// The same written to `path` one tensor at a time (the float model plus one quantised linear in
// memory), with what it holds.
struct Q8FileStats {
  int64_t linears = 0, code_bytes = 0, float_bytes = 0;
};
Q8FileStats save_quantized(const LMModelImpl& m, const std::string& path,
                           const std::map<std::string, std::string>& metadata = {});

// True for parameters that a TTT integration adds (absent from base Moshi checkpoints): hybrid blocks
// (".ttt."), TTT adapters (".ttt_adapter."), In-Place targets (".ttt_conv.", ".ttt_proj.").
bool is_ttt_param(const std::string& name);
// True for LoRA tensors (".lora_A." / ".lora_B.").
bool is_lora_param(const std::string& name);

// The LM config implied by a checkpoint's tensor names and shapes, where it can be read off
// (dims, layers, cards, streams); fields it cannot see (delays, heads, ...) are left at defaults.
// Returns false if the file does not look like a Moshi LM.
bool infer_config(const io::SafeTensors& file, LMConfig& out, std::vector<std::string>* notes = nullptr);

}  // namespace mt::lm
