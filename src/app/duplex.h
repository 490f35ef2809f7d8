#pragma once
// The full-duplex conversation loop: every 80 ms of the user's audio goes through Mimi's encoder into
// the LM (LMGen), and Moshi's tokens come back out through Mimi's decoder. One object holds one batch
// of conversations (a slot each) over a shared, immutable model and codec; TTT states persist over a
// whole conversation. `generate --user` runs it over a file; a server runs it over sockets.
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "lm/lm_gen.h"
#include "mimi/mimi.h"
#include "text/tokenizer.h"

namespace mt::app {

// Moshi's output for one 80 ms frame.
struct DuplexFrame {
  at::Tensor audio;  // [B, 1, frame_size] PCM at the codec's rate
  at::Tensor text;   // [B] text token ids (padding included), on the model's device
  // Per slot: whether it carries output. A slot restarted by start() has none for its first
  // max_delay frames (its rows then hold silence and token 0).
  std::vector<bool> ready;
};

class Duplex {
 public:
  // Checks that the codec fits the LM (bins, codebooks; errors name `codec_source`) and sets it up
  // on the model's device.
  Duplex(lm::LMModel model, mimi::Mimi codec, const lm::SamplingConfig& sampling, int64_t batch,
         const std::string& codec_source);
  // pcm: [B, 1, frame_size()] of the user's audio. Nothing comes out during the LM's first
  // max_delay frames.
  std::optional<DuplexFrame> step(const at::Tensor& pcm);
  // Every conversation starts over (KV rings, TTT states, codec states, delays).
  void reset();
  // Slot `slot` alone starts a new conversation sampled with `s` (seeds included); the others go on
  // undisturbed. Its first max_delay frames carry no output, as a fresh stream's.
  void start(int64_t slot, const lm::SamplingConfig& s);
  int64_t batch() const { return lm_.batch; }
  // Frames a slot has taken since its start (or the last reset).
  int64_t frames(int64_t slot) const { return frames_.at(static_cast<size_t>(slot)); }
  // The LM's streaming state (for tests and TTT diagnostics of a conversation).
  const lm::LMGenState& lm_state() const { return lm_; }
  int64_t frame_size() const { return codec_->cfg.frame_size(); }
  int64_t sample_rate() const { return codec_->cfg.sample_rate; }
  at::Device device() const { return device_; }
  const lm::LMModel& model() const { return gen_.model(); }

 private:
  lm::LMGen gen_;
  mimi::Mimi codec_;
  at::Device device_;
  int64_t user_q_;  // codebooks of the user's stream the LM reads
  lm::LMGenState lm_;
  mimi::MimiState enc_, dec_;
  std::vector<int64_t> frames_;  // per slot, host-side: when its output starts needs no sync
};

// Text token ids of a conversation as words (with a tokenizer) or ids, padding dropped.
std::string text_of(const std::vector<int64_t>& ids, const lm::LMConfig& c, const text::Tokenizer* tokenizer);

}  // namespace mt::app
