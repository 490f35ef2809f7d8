#pragma once
// Paired-likelihood benchmarks (sWUGGY, sBLIMP, sStoryCloze, tStoryCloze; shared/spec/eval.md 2.3):
// every audio file is encoded with Mimi (cached on disk), placed in one audio stream of the LM's input,
// scored by the LM in one causal pass, and reduced to one number (higher = more probable); the official
// rule then compares the two members of each pair (eval/zr_score.h).
//
// Scoring choices, all selectable and all named in the output:
//   placement  "moshi": the clip's codebooks in Moshi's stream (streams 1..A), the user stream absent (-1);
//              "user": the clip in the user stream, Moshi's absent (needs a depformer that predicts the
//              user stream, dep_q == n_q; the released checkpoints do not have one).
//   text       "pad": the text stream all PAD (silence in the inner monologue); "none": absent (-1, textless).
//   reduction  "mean" (per-token mean log-prob over the scored audio tokens, TWIST/slamkit/SpiritLM; the
//              default), "sum" (ZR2021 baselines), "semantic" (codebook 0 only, mean), "weighted"
//              (semantic x100 : acoustic x1, the training weights). Every reduction is computed from the
//              same pass; the summary gives the accuracy under each.
// Text-stream log-probs never enter an audio score. Files are batched by right-padding with the absent
// token and masking every position the unpadded pass would not score, so batching changes nothing.
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "lm/lm_model.h"

namespace mt::eval {

// Encodes mono audio files (stereo is averaged) with a Mimi codec; the codes are cached under
// cache_dir/<codec hash>/<audio hash>.safetensors, so a second run does not encode again.
struct CodecSpec {
  std::string weights;    // Mimi .safetensors
  std::string config;     // its config JSON ("" = the released model)
  std::string cache_dir;  // "" = no cache
  std::string device = "cpu";
  int64_t num_codebooks = 8;
  bool quiet = false;
};

class CodesCache {
 public:
  explicit CodesCache(CodecSpec spec);
  ~CodesCache();
  CodesCache(const CodesCache&) = delete;
  CodesCache& operator=(const CodesCache&) = delete;
  // Codes [num_codebooks, F] int64 on the CPU; F = ceil(seconds * 12.5). Errors name the file.
  at::Tensor codes(const std::string& audio_path);
  int64_t encoded() const { return encoded_; }
  int64_t cached() const { return cached_; }
  double audio_seconds() const { return audio_seconds_; }  // encoded now
  double encode_seconds() const { return encode_seconds_; }

 private:
  struct Impl;
  CodecSpec spec_;
  std::string dir_;
  Impl* impl_ = nullptr;  // the codec, loaded on the first miss
  int64_t encoded_ = 0, cached_ = 0;
  double audio_seconds_ = 0, encode_seconds_ = 0;
};

inline constexpr std::array<const char*, 4> kReductions = {"mean", "sum", "semantic", "weighted"};

struct ScoringOptions {
  std::string placement = "moshi";
  std::string text = "pad";
  int64_t batch = 8;   // files per forward pass
  bool quiet = false;  // else a progress line on stderr
};

// The number of audio codebooks a clip needs under these options (the codec must give that many).
int64_t clip_codebooks(const lm::LMConfig& cfg, const std::string& placement);

// One row per clip: the score under each reduction (kReductions order), and the tokens scored.
struct ClipScore {
  std::array<double, 4> score{};
  int64_t frames = 0, tokens = 0;
};

// Scores clips (codes [A, F_i], A = clip_codebooks) with the LM, in batches. Deterministic.
std::vector<ClipScore> score_clips(const lm::LMModelImpl& m, const std::vector<at::Tensor>& clips,
                                   const ScoringOptions& o);

// The LM's input for one clip under these options: [1 + n_q, F].
at::Tensor place_clip(const lm::LMConfig& cfg, const at::Tensor& clip, const ScoringOptions& o);

}  // namespace mt::eval
