#pragma once
// Streaming generation as the reference's LMGen (moshi/models/lm.py): user audio codes go in one
// step at a time; text and Moshi audio tokens come out realigned (undelayed), max_delay steps late.
// The model is shared and immutable; everything that changes lives in LMGenState.
#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

#include "lm/lm_model.h"

namespace mt::lm {

struct SamplingConfig {
  bool use_sampling = true;  // false: greedy (argmax) for text and audio
  double temp = 0.8;         // audio
  double temp_text = 0.7;
  int64_t top_k = 250;  // audio; 0 = no top-k
  int64_t top_k_text = 25;
  uint64_t seed = 42;  // text draws, and audio draws too unless audio_seed is set (as Kyutai's LMGen: one generator)
  // A generator of its own for the audio draws (Kyutai's Rust server seeds text and audio apart).
  std::optional<uint64_t> audio_seed;
  // Added to the log-odds of the text padding token before the draw (Kyutai's Rust server multiplies
  // its probability by e^pad_mult): > 0 keeps the model quiet more, < 0 makes it speak more.
  double pad_mult = 0;
  // Kyutai's Rust server's text repetition penalty: the logits of tokens among the last
  // `repetition_context` non-padding text tokens are divided by the penalty (>= 0) or multiplied by
  // it (< 0). Off when the penalty is 1 or the context 0.
  double repetition_penalty = 1.0;
  int64_t repetition_context = 0;
  bool penalizes() const { return repetition_penalty != 1.0 && repetition_context > 0; }
  void validate() const;  // throws mt::Error naming the bad knob
};

struct LMGenState {
  int64_t batch = 0;
  at::Tensor cache;    // [B, K, max_delay + 2] tokens (-2: not generated yet)
  at::Tensor offsets;  // [B] long
  int64_t offset_cpu = 0;
  TransformerState main;        // KV caches of the temporal transformer
  TransformerState dep;         // depformer state, reset every frame
  at::Generator gen;            // sampling randomness, seeded
  at::Tensor last_text_logits;  // [B, text_card_out] of the latest step (for probes and tests)
  // Per-slot sampling (a server's conversations): empty = the LMGen's config and `gen` for the whole
  // batch; else one config and generators per slot (LMGen::set_sampling).
  std::vector<SamplingConfig> slots;
  std::vector<at::Generator> text_gens, audio_gens;
  // Text logit shaping, per slot: [B, 1] penalty and pad log-odds shift; [B, C] the latest non-padding
  // text tokens (-1: none yet) with C the longest repetition context. Undefined when off.
  at::Tensor penalty, pad_shift, history, history_window;
};

// Draws from softmax(logits / temp) restricted to the top k, by the exponential race (argmax of
// p / Exp(1)) as the reference does; greedy when !use_sampling or temp <= 0. logits [..., N] -> [...].
at::Tensor sample_token(const at::Tensor& logits, bool use_sampling, double temp, int64_t top_k, at::Generator& gen);

class LMGen {
 public:
  LMGen(LMModel model, SamplingConfig sampling);
  LMGenState make_state(int64_t batch) const;
  // user_codes: [B, n_q - dep_q, 1] (extra rows ignored). Returns [B, 1 + dep_q, 1] or nothing during
  // the first max_delay steps; slots still within their first max_delay steps read -2.
  std::optional<at::Tensor> step(LMGenState& st, const at::Tensor& user_codes) const;
  // Resets every slot (mask undefined) or those where mask [B] is true. A masked reset leaves the
  // other slots' output untouched: the reset slots read -2 for their first max_delay steps.
  void reset(LMGenState& st, const at::Tensor& mask = {}) const;
  // Slot `slot` samples with `s` from its next step on (generators seeded anew); the first call turns
  // the state to per-slot sampling, every other slot keeping the LMGen's config with fresh generators.
  void set_sampling(LMGenState& st, int64_t slot, const SamplingConfig& s) const;
  const LMModel& model() const { return model_; }
  const SamplingConfig& sampling() const { return sampling_; }

 private:
  LMModel model_;
  SamplingConfig sampling_;
  void shape_text_logits(LMGenState& st, at::Tensor& logits) const;
  at::Tensor sample_text(LMGenState& st, const at::Tensor& logits) const;
  at::Tensor sample_audio(LMGenState& st, const at::Tensor& logits) const;
  void remember_text(LMGenState& st, const at::Tensor& text) const;
  void refresh_shaping(LMGenState& st) const;
  at::Tensor delays_;   // [K] long
  at::Tensor initial_;  // [1, K, 1]
  int64_t max_delay_;
};

}  // namespace mt::lm

namespace mt::lm {

struct GenerationResult {
  at::Tensor tokens;            // [B, 1 + dep_q, S'] on the CPU
  std::vector<double> step_ms;  // wall time of every step
};

// Runs `steps` LMGen steps feeding user_codes[:, :, t] (token 0 on every user stream when undefined).
// on_step(t, ms) is called after each step (for progress display).
GenerationResult generate(const LMGen& gen, LMGenState& st, int64_t steps, const at::Tensor& user_codes,
                          const std::function<void(int64_t, double)>& on_step = {});

}  // namespace mt::lm
