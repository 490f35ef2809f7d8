#include "app/duplex.h"

#include <algorithm>

#include "util/error.h"

namespace mt::app {

namespace {
// The codec set up for the LM: as many codebooks as either stream needs, on the model's device.
mimi::Mimi fit_codec(mimi::Mimi codec, const lm::LMConfig& c, const at::Device& dev, const std::string& source) {
  MT_CHECK(codec->cfg.quantizer.bins == c.card, source, ": the codec has ", codec->cfg.quantizer.bins,
           " bins per codebook, the LM's card is ", c.card);
  const int64_t need_q = std::max(c.dep_q, c.n_q - c.dep_q);
  MT_CHECK(need_q <= codec->cfg.quantizer.n_q, source, ": the LM needs ", need_q, " codebooks, the codec has ",
           codec->cfg.quantizer.n_q);
  codec->cfg.num_codebooks = need_q;
  codec->to(dev);
  codec->quantizer->refresh();
  return codec;
}
}  // namespace

Duplex::Duplex(lm::LMModel model, mimi::Mimi codec, const lm::SamplingConfig& sampling, int64_t batch,
               const std::string& codec_source)
    : gen_(model, sampling),
      codec_(fit_codec(codec, model->cfg, model->parameters().front().device(), codec_source)),
      device_(model->parameters().front().device()),
      user_q_(model->cfg.n_q - model->cfg.dep_q),
      lm_(gen_.make_state(batch)),
      enc_(codec_->make_state(batch)),
      dec_(codec_->make_state(batch)) {}

std::optional<DuplexFrame> Duplex::step(const at::Tensor& pcm) {
  MT_CHECK(pcm.dim() == 3 && pcm.size(0) == lm_.batch && pcm.size(1) == 1 && pcm.size(2) == frame_size(),
           "duplex step: expected user audio [", lm_.batch, ", 1, ", frame_size(), "], got ",
           shape_str(pcm.sizes().vec()));
  at::Tensor user = codec_->encode_step(pcm.to(device_), enc_).narrow(1, 0, user_q_);  // [B, user_q, 1]
  std::optional<at::Tensor> out = gen_.step(lm_, user);
  if (!out) return std::nullopt;
  const int64_t dep_q = gen_.model()->cfg.dep_q;
  return DuplexFrame{codec_->decode_step(out->narrow(1, 1, dep_q), dec_), out->select(1, 0).reshape({lm_.batch})};
}

void Duplex::reset() {
  gen_.reset(lm_);
  enc_.reset();
  dec_.reset();
}

std::string text_of(const std::vector<int64_t>& ids, const lm::LMConfig& c, const text::Tokenizer* tokenizer) {
  const int64_t pad = c.existing_text_padding_id.value_or(-100), epad = c.existing_text_end_padding_id;
  std::vector<int> words;
  for (int64_t id : ids)
    if (id != pad && id != epad && id >= 0) words.push_back(static_cast<int>(id));
  if (tokenizer) return tokenizer->decode(words);
  std::string txt;
  for (size_t i = 0; i < words.size(); ++i) txt += (i ? " " : "") + std::to_string(words[i]);
  return txt;
}

}  // namespace mt::app
