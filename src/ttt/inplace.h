#pragma once
// In-Place TTT (Feng et al., ByteDance Seed; official code ByteDance-Seed/In-Place-TTT, Qwen3MLP):
// a gated FFN whose down-projection W (`gating.linear_out.weight`, [D, H]) is a fast weight updated
// once per chunk of C tokens with a Hebbian write:
//   h   = act(x W_gateᵀ) ⊙ (x W_upᵀ)                         [T, H]
//   v   = conv_chunk(t) · P            (P = ttt_proj.weight, not transposed; identity if no proj)
//   W_i = W0 + lr · Σ_{j<i} v_jᵀ h_j    (chunk i never sees its own update)
//   y_i = h_i W_iᵀ
// conv_chunk is a depthwise Conv1d without bias (kernel 5, centred: padding 2 in the official code)
// applied inside each chunk with zeros at the chunk's edges, so it never mixes two chunks. The last
// (possibly zero-padded) chunk's update is never needed by the sequence that produced it.
//
// One implementation serves training (forward over a whole sequence, differentiable in x, t and every
// weight), streaming (step over any number of tokens through an explicit per-stream state) and
// scoring. The fast-weight sum always runs in float32 at least (float64 when the parameters are).
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <map>
#include <string>
#include <vector>

#include "nn/transformer.h"

namespace mt::ttt {

// How forward() evaluates Σ_{j<i} v_jᵀ h_j over a whole sequence. All three give the same values;
// they differ in memory and time (see bench/bench_inplace.cpp).
enum class InPlaceStrategy {
  // y_i = h_i W0ᵀ + lr · Σ_{j<i} (h_i h_jᵀ) v_j, one query chunk at a time: never forms a D×H update;
  // autograd keeps the C × iC score blocks (T²/2 floats per row). The default.
  kLinearAttention,
  // A running fast weight W ← W + lr v_iᵀ h_i over chunks: O(D·H) live in the forward, but autograd
  // keeps every W_i for the backward (n_chunks × D × H per row).
  kRunning,
  // The official training code's form: every chunk's D×H update at once, cumsum over chunks.
  // For comparison only (n_chunks × D × H per row, twice).
  kMaterialized,
};

const char* strategy_name(InPlaceStrategy s);             // linear_attention, running, materialized
InPlaceStrategy parse_strategy(const std::string& name);  // throws mt::Error for unknown names

struct InPlaceConfig {
  int64_t dim = 0;     // D: model width (input/output of the FFN, width of the target source t)
  int64_t hidden = 0;  // H: FFN hidden width
  int64_t chunk_size = 256;
  double lr = 1e-3;
  bool use_proj = true;  // target projection ttt_proj [D, D]
  int64_t conv_kernel = 5;
  // Tokens after the current one that the target conv sees; -1 = centred ((kernel-1)/2, the official
  // choice: padding 2 for kernel 5). The rest of the kernel looks back.
  int64_t conv_lookahead = -1;
  std::string activation = "silu";
  // Each chunk's update lr·Σ vᵀh is scaled down to this Frobenius norm when larger (0: off, the
  // official behaviour). Applied identically in forward() and step().
  double delta_clip_fro_norm = 0;
  InPlaceStrategy strategy = InPlaceStrategy::kLinearAttention;

  int64_t lookahead() const { return conv_lookahead < 0 ? (conv_kernel - 1) / 2 : conv_lookahead; }
  // Throws mt::Error naming the field for bad values.
  void validate() const;
  // From a reference case's config.json: dim, hidden, chunk, lr, use_proj, activation (optional
  // conv_kernel, conv_lookahead). Missing or mistyped fields throw mt::Error naming them.
  static InPlaceConfig from_json_file(const std::string& path);
};

// Per-stream decoding state. Slots (batch rows) are independent: each has its own fast-weight sum and
// its own position inside its current chunk, so a slot reset at a file boundary starts that slot's
// chunking afresh while the others go on.
//
// The state holds ΔW = W_i - W0 (the persistent sum of applied updates), not W_i itself: outputs are
// h W0ᵀ + h ΔWᵀ, so when training over consecutive segments of one file (detach() between them) W0
// still gets its gradient from every token, and a reset is a zero fill.
struct InPlaceState {
  at::Tensor dw;             // [B, D, H] Σ of applied chunk updates lr·vᵀh per slot (float32/64)
  at::Tensor h_buf;          // [B, C, H] gated activations of each slot's incomplete chunk (same dtype)
  at::Tensor t_buf;          // [B, C, D] target sources of each slot's incomplete chunk (same dtype)
  std::vector<int64_t> pos;  // per slot: tokens of the current chunk already buffered (0..C-1)
  at::Tensor w0;             // the module's W0 ([D, H], shares its storage), for w_final()
  int64_t tokens = 0;        // tokens consumed since the state was made (diagnostics)
  int64_t updates = 0;       // chunk updates applied since the state was made, summed over slots
                             // (diagnostics; resets do not clear it)

  int64_t batch() const { return static_cast<int64_t>(pos.size()); }
  // Every slot back to W0 with an empty chunk.
  void reset();
  // The slots where mask (bool [B], any device) is true.
  void reset(const at::Tensor& mask);
  void reset_slot(int64_t b);
  // Cuts the autograd history (between consecutive training segments of the same stream).
  void detach();
  // The current fast weight W0 + ΔW of slot b ([D, H], accumulation dtype): every completed chunk's
  // update applied, the incomplete chunk not.
  at::Tensor w_final(int64_t b = 0) const;
};

// The gated FFN's two weights, named as Moshi's `gating` (linear_in [2H, D]: rows 0..H-1 gate,
// H..2H-1 up; linear_out [D, H]).
struct InPlaceGatingImpl : torch::nn::Module {
  InPlaceGatingImpl(int64_t dim, int64_t hidden);
  nn::Linear linear_in{nullptr}, linear_out{nullptr};
};
TORCH_MODULE(InPlaceGating);

struct InPlaceFFNImpl : torch::nn::Module {
  explicit InPlaceFFNImpl(InPlaceConfig cfg);

  // Whole sequence from W0: x, t [B, T, D] (any T; the last chunk is zero-padded) -> y [B, T, D].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t) const;
  // The gated activations h = act(gate x) ⊙ (up x): [.., H].
  at::Tensor hidden_act(const at::Tensor& x) const;
  // Targets v = conv_chunk(t) · P for whole chunks: t [N, C, D] -> [N, C, D] in the accumulation dtype.
  at::Tensor targets(const at::Tensor& t_chunks) const;
  at::Tensor streaming_targets(const at::Tensor& t_chunks) const;

  // A fresh state for `batch` streams (ΔW = 0 for every slot), on W0's device.
  InPlaceState make_state(int64_t batch) const;
  // Streaming: x, t [B, S, D] for any S >= 1 (one token, part of a chunk, several chunks) -> y [B, S, D].
  // Outputs use the slot's current fast weight; a slot's weight is updated as soon as its chunk
  // completes (inside this call if it does). Concatenated steps equal forward() over the concatenation.
  // When every slot is at the same position (the usual case), a step that completes chunks runs the
  // same memory-lean sequence form as forward() over the buffered chunk plus the new tokens, so
  // training through step() over long segments stays cheap; slots at different positions (after a
  // per-slot reset) go chunk boundary by chunk boundary.
  at::Tensor step(const at::Tensor& x, const at::Tensor& t, InPlaceState& state) const;

  // dtype the fast-weight sum runs in: float32, or float64 for float64 parameters.
  at::ScalarType acc_dtype() const;

  // Reference init: gating ~ N(0, std²); target conv zero (official); projection zero with a
  // N(0, diag_std²) diagonal (official; diag_std 0 gives an all-zero projection, which together with
  // the zero conv is a fixed point of training: neither gets a gradient).
  void init_weights(uint64_t seed, double std = 0.02, double diag_std = 0.02);
  // Strict load: every name of names() must be present with its exact shape and nothing else; a
  // missing, extra or mis-shaped tensor throws mt::Error naming it (expected and got shape).
  void load(const std::map<std::string, at::Tensor>& tensors);
  void load_file(const std::string& safetensors_path);
  std::vector<std::string> names() const;  // parameter names, e.g. "ttt_conv.weight"

  InPlaceConfig cfg;
  nn::Activation act;  // cfg.activation, parsed once
  InPlaceGating gating{nullptr};
  at::Tensor conv_weight;  // ttt_conv.weight [D, 1, k]
  at::Tensor proj_weight;  // ttt_proj.weight [D, D] (undefined without use_proj)

 private:
  // The TTT part of the output, h_i (ΔW0 + Σ_{j<i} lr v_jᵀ h_j)ᵀ, of a sequence starting at a chunk
  // boundary: h [B, L, H] (acc dtype), v_scaled [B, >= (n-1)·C, D] = lr · targets, dw0 optional.
  at::Tensor ttt_part(const at::Tensor& h, const at::Tensor& v_scaled, const at::Tensor& dw0) const;
  // lr-scaled targets of whole chunks v [B, n·C, D] with their activations h [B, >= n·C, H]: each
  // chunk's v scaled so that its update vᵀh has Frobenius norm <= delta_clip_fro_norm.
  at::Tensor clip_updates(const at::Tensor& v, const at::Tensor& h) const;
  at::Tensor step_uniform(const at::Tensor& h, const at::Tensor& t, InPlaceState& st) const;
  at::Tensor step_segments(const at::Tensor& h, const at::Tensor& t, InPlaceState& st) const;
};
TORCH_MODULE(InPlaceFFN);

}  // namespace mt::ttt
