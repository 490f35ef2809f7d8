#pragma once
// Mimi, Kyutai's streaming neural audio codec (moshi/models/compression.py), inference only:
//   encode: wav [B, 1, N] at 24 kHz -> SEANet encoder (25 Hz) -> encoder transformer -> stride-2
//           downsampling conv (12.5 Hz) -> split RVQ -> codes [B, K, N / 1920]
//   decode: codes -> RVQ decode -> depthwise stride-2 upsampling -> decoder transformer -> SEANet
//           decoder -> wav [B, 1, 1920 * T]
// The model is immutable; a MimiState holds everything a stream carries (conv buffers, transposed-conv
// tails, KV caches). Tensor names are those of Kyutai's Mimi checkpoint (shared/spec/moshi.md 2.8).
#include <torch/nn/module.h>
#include <nlohmann/json_fwd.hpp>

#include <map>
#include <string>

#include "mimi/conv.h"
#include "mimi/quantizer.h"
#include "mimi/seanet.h"
#include "nn/transformer.h"
#include "nn/transformer_config.h"

namespace mt::mimi {

struct MimiConfig {
  int64_t sample_rate = 24000;
  int64_t channels = 1;
  double frame_rate = 12.5;
  SEANetConfig seanet;
  QuantizerConfig quantizer;
  nn::TransformerConfig transformer;  // encoder and decoder transformers (d_model 512, 8 layers, ...)
  int64_t num_codebooks = 8;          // codebooks used by encode (Moshi: 8 of the 32 in the checkpoint)

  // The released model (moshi's _seanet_kwargs / _quantizer_kwargs / _transformer_kwargs).
  static MimiConfig released();
  // The reference's config dict (keys sample_rate, frame_rate, seanet, quantizer, transformer,
  // num_codebooks); missing keys keep the released values; unknown keys inside sections are errors.
  static MimiConfig from_json(const nlohmann::json& j, const std::string& source = "mimi config");
  static MimiConfig from_file(const std::string& path);
  nlohmann::json to_json() const;
  void validate() const;

  int64_t frame_size() const;       // samples per frame (1920)
  int64_t resample_stride() const;  // encoder frame rate / frame rate (2)
};

// Per-stream state (batch B): one per conversation; reset() starts the stream over.
struct MimiState {
  int64_t batch = 0;
  SEANetState enc, dec;
  nn::TransformerState enc_tr, dec_tr;
  Conv1dState down;
  ConvTr1dState up;
  void reset();
  // Slot b alone starts over (a new conversation in one slot of a server); the others go on.
  void reset_slot(int64_t b);
};

// Holders that give the reference's names: ProjectedTransformer (identity projections) and the
// frame-rate conversions.
struct ProjectedTransformerImpl : torch::nn::Module {
  explicit ProjectedTransformerImpl(const nn::TransformerConfig& c);
  nn::StreamingTransformer transformer{nullptr};
};
TORCH_MODULE(ProjectedTransformer);
struct DownsampleImpl : torch::nn::Module {
  DownsampleImpl(int64_t dim, int64_t stride);
  StreamingConv1d conv{nullptr};
};
TORCH_MODULE(Downsample);
struct UpsampleImpl : torch::nn::Module {
  UpsampleImpl(int64_t dim, int64_t stride);
  StreamingConvTranspose1d convtr{nullptr};
};
TORCH_MODULE(Upsample);

struct MimiImpl : torch::nn::Module {
  explicit MimiImpl(const MimiConfig& cfg);
  MimiConfig cfg;
  SEANet encoder{nullptr}, decoder{nullptr};
  ProjectedTransformer encoder_transformer{nullptr}, decoder_transformer{nullptr};
  Downsample downsample{nullptr};  // "downsample.conv.conv.conv.weight": causal, replicate padding
  Upsample upsample{nullptr};      // "upsample.convtr.convtr.convtr.weight": depthwise
  SplitRVQ quantizer{nullptr};

  // Whole signal. wav [B, 1, N] (right-padded with zeros to a multiple of the frame size).
  at::Tensor encode_latent(const at::Tensor& wav) const;    // [B, D, F] before quantization
  at::Tensor encode(const at::Tensor& wav) const;           // codes [B, num_codebooks, F] int64
  at::Tensor decode(const at::Tensor& codes) const;         // [B, 1, 1920 F]
  at::Tensor decode_latent(const at::Tensor& codes) const;  // quantized latent [B, D, F]
  // Throws naming `source` unless every code is in [0, bins) (one host sync: not for per-frame use).
  void check_code_range(const at::Tensor& codes, const std::string& source) const;

  // Streaming: wav chunks of k * frame_size samples -> k frames of codes; codes [B, K, k] -> k frames
  // of audio. Concatenated outputs equal the whole-signal ones (up to float rounding and near-tie codes).
  //
  // The transformers' KV rings: by default they hold `context` entries as in Kyutai's streaming Mimi
  // (RingKVCache), so with two 25 Hz steps per 80 ms frame the first step of each call sees one key
  // fewer than the whole-signal forward does; codes then match Kyutai's streaming codes (and differ
  // from the whole-signal ones in a few near-ties). exact = true sizes the rings so that streaming
  // equals the whole-signal forward.
  MimiState make_state(int64_t batch, int64_t max_frames_per_step = 1, bool exact = false) const;
  at::Tensor encode_step(const at::Tensor& wav_chunk, MimiState& st) const;
  at::Tensor encode_latent_step(const at::Tensor& wav_chunk, MimiState& st) const;  // before quantization
  at::Tensor decode_step(const at::Tensor& codes, MimiState& st) const;

  // Strict load: every tensor of the model must be present with its shape and nothing else may be
  // (the acoustic codebooks beyond the config's n_q excepted: none are allowed). Accepts the older
  // names (in_proj_weight, out_proj.weight, embed_sum / embed_avg, cluster_size, inited). Errors name
  // the source, the tensor, the expected and the got shape.
  void load(const std::map<std::string, at::Tensor>& tensors, const std::string& source);
  // Random weights (for timing and tests): normal(0, 1/sqrt(fan_in)) weights, random codebooks.
  void init_random(uint64_t seed);

 private:
  at::Tensor to_frame_rate(const at::Tensor& emb25, MimiState* st) const;
  at::Tensor to_encoder_rate(const at::Tensor& emb, MimiState* st) const;
};
TORCH_MODULE(Mimi);

// Loads a Mimi from a checkpoint (safetensors) and an optional config file (JSON; none = released).
Mimi load_mimi(const std::string& weights_path, const std::string& config_path = "");

}  // namespace mt::mimi
