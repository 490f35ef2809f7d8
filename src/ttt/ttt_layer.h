#pragma once
// TTT-Linear and TTT-MLP layers (Sun et al., "Learning to (Learn at Test Time)"), equal to the
// reference ttt-lm-pytorch `TTTLinear` / `TTTMLP` (see shared/spec/ttt.md section 1).
//
// Design:
//  - `TTTLayer` is an immutable layer object: a config and its parameters (autograd leaves, named as
//    the reference's state_dict). It holds no per-stream data.
//  - `TTTState` is the explicit per-stream state: inner weights per batch slot, the gradient sum of the
//    current (incomplete) mini-batch, the causal-conv tails (share_qk) and the position of every slot.
//  - `forward(x, state)` runs a chunk of any length starting from `state` and updates it; a fresh
//    state gives the reference's whole-sequence training forward (dual form for the full mini-batches,
//    the remainder as a shorter mini-batch). Chunks need not start on a mini-batch boundary: running a
//    sequence in chunks of any sizes gives the same outputs as running it whole.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mt::ttt {

// Field names as in the reference's TTTConfig.
struct TTTConfig {
  int64_t hidden_size = 768;
  int64_t num_attention_heads = 12;
  int64_t mini_batch_size = 16;
  std::string ttt_layer_type = "linear";  // "linear" | "mlp"
  double ttt_base_lr = 1.0;
  bool use_gate = false;
  bool share_qk = false;
  int64_t conv_kernel = 4;
  // Mini-batches per checkpointed group of the inner scan (0: the whole call is one group). Only the
  // inner state at group boundaries is kept for backward; groups are recomputed there. Unlike the
  // reference (where the value is the number of groups), any value >= 0 is valid; outputs and
  // gradients do not depend on it.
  int64_t scan_checkpoint_group_size = 0;
  double rope_theta = 10000.0;
  // Layers of the TTT-MLP inner model (not in the reference, which has 2): widths f -> 4f -> ... ->
  // 4f -> f with GELU between layers. 2 is exactly the reference TTT-MLP.
  int64_t ttt_mlp_layers = 2;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  bool is_mlp() const { return ttt_layer_type == "mlp"; }
  // Number of inner layers: 1 for TTT-Linear, ttt_mlp_layers for TTT-MLP.
  int64_t inner_layers() const { return is_mlp() ? ttt_mlp_layers : 1; }
  // Input and output width of inner layer l (0-based): f in and out at the ends, 4f between.
  int64_t inner_in(int64_t l) const { return l == 0 ? head_dim() : 4 * head_dim(); }
  int64_t inner_out(int64_t l) const { return l + 1 == inner_layers() ? head_dim() : 4 * head_dim(); }
  void validate() const;  // throws mt::Error on an inconsistent config
};

// Parses the TTTConfig fields from JSON text (unknown keys are ignored, missing ones keep defaults).
TTTConfig parse_config_json(const std::string& json_text);

// Per-stream state for batch size B. Inner tensors are float32 (float64 for a float64 layer) whatever
// the parameters' dtype. Weights and biases are stored "augmented", per inner layer l: the bias is the
// last row, so W[l] = [W_{l+1}; b_{l+1}] is [B, nh, d_in+1, d_out] (for TTT-Linear one layer, f -> f;
// for the 2-layer TTT-MLP [B, nh, f+1, 4f] and [B, nh, 4f+1, f]).
struct TTTState {
  int64_t batch = 0;
  std::vector<int64_t> position;  // tokens seen by every slot (RoPE and token factors use it mod K)
  std::vector<uint8_t> fresh;     // slot starts from the layer's learned init at its next forward
  std::vector<at::Tensor> W;      // per inner layer: weights at the start of the current mini-batch
  std::vector<at::Tensor> G;      // per inner layer: sum_j lr_j * grad_j over the mini-batch so far
  at::Tensor conv_tail;           // [B, C, conv_kernel-1]: last inputs of the shared-QK convs
  int64_t updates = 0;            // mini-batch updates committed since the state was made, summed
                                  // over slots (diagnostics; resets do not clear it)

  TTTState() = default;
  explicit TTTState(int64_t batch_size);
  // Every slot starts over from the layer's learned init (applied lazily at the next forward).
  void reset();
  void reset_slot(int64_t b);
  // Cuts the autograd history (truncated backprop through time across chunks); keeps the values.
  void detach();
  bool materialized() const { return !W.empty() && W[0].defined(); }
};

// Inner-loss probes (spec 5.1 item 3), per token and head, computed without changing outputs.
//   l0     = loss of token t with the learned initial weights theta_init,
//   lprev  = loss with the weights before token t's update (those used for token t-1; the mini-batch
//            start weights for the first token of a mini-batch),
//   lafter = loss with the weights after it (those that produced token t's output).
// loss(W; t) = 1/2 || LN(f_res(XK_t; W)) - (XV_t - XK_t) ||^2 (the inner objective).
struct TTTProbes {
  at::Tensor l0, lprev, lafter;       // [B, nh, L], float32
  at::Tensor w_delta_norm;            // [B]: || W_t - W_0 || after the chunk's last token, all inner
                                      // tensors of all heads (Frobenius), W_t including the pending
                                      // in-mini-batch update
  at::Tensor w_delta_norm_per_layer;  // [B, inner layers]: the same, per inner layer (weight + bias)
};

class TTTLayer {
 public:
  // Takes ownership of `params` after a strict check (see load()); they become autograd leaves.
  TTTLayer(TTTConfig cfg, const std::map<std::string, at::Tensor>& params);
  // New layer with the reference's initial values (spec 1.8), float32 on CPU unless told otherwise.
  static TTTLayer init(const TTTConfig& cfg, uint64_t seed, at::ScalarType dtype = at::kFloat,
                       at::Device device = at::kCPU);

  const TTTConfig& config() const { return cfg_; }
  // Reference names -> parameter tensors (requires_grad = true). Order is fixed.
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const { return params_; }
  const at::Tensor& param(const std::string& name) const;
  // Names and shapes a layer of this config has.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> expected_parameters(const TTTConfig& cfg);
  // Copies values into the existing parameters (in place, keeps dtype/device). Strict: a missing,
  // unexpected or mis-shaped tensor throws mt::Error naming it with expected and got shapes.
  void load(const std::map<std::string, at::Tensor>& tensors);
  void set_requires_grad(bool on);
  void to(at::ScalarType dtype);
  at::ScalarType dtype() const;
  at::Device device() const;

  TTTState init_state(int64_t batch) const { return TTTState(batch); }
  // y [B, L, C] for x [B, L, C] starting from `state` (updated). L >= 1. Differentiable w.r.t. x,
  // the parameters and the incoming state (unless detached).
  at::Tensor forward(const at::Tensor& x, TTTState& state, TTTProbes* probes = nullptr) const;
  // Whole sequence from a fresh state (the reference's training forward).
  at::Tensor forward(const at::Tensor& x) const;
  // Streaming: one token or a chunk; identical to forward (kept as the decoding entry point).
  at::Tensor step(const at::Tensor& x_chunk, TTTState& state, TTTProbes* probes = nullptr) const {
    return forward(x_chunk, state, probes);
  }

 private:
  struct Run;  // one forward over slots that share position mod K
  TTTConfig cfg_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::map<std::string, size_t> index_;
  at::Tensor run_uniform(const at::Tensor& x, TTTState& st, int64_t pos0, TTTProbes* probes) const;
  void materialize(TTTState& st, const at::Tensor& x) const;
  std::vector<at::Tensor> inner_init() const;
};

}  // namespace mt::ttt
