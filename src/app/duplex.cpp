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
      dec_(codec_->make_state(batch)),
      frames_(static_cast<size_t>(batch), 0) {}

std::optional<DuplexFrame> Duplex::step(const at::Tensor& pcm) {
  MT_CHECK(pcm.dim() == 3 && pcm.size(0) == lm_.batch && pcm.size(1) == 1 && pcm.size(2) == frame_size(),
           "duplex step: expected user audio [", lm_.batch, ", 1, ", frame_size(), "], got ",
           shape_str(pcm.sizes().vec()));
  at::Tensor user = codec_->encode_step(pcm.to(device_), enc_).narrow(1, 0, user_q_);  // [B, user_q, 1]
  std::optional<at::Tensor> out = gen_.step(lm_, user);
  for (auto& f : frames_) ++f;
  if (!out) return std::nullopt;
  const int64_t dep_q = gen_.model()->cfg.dep_q, max_delay = gen_.model()->cfg.max_delay();
  DuplexFrame frame;
  bool all_ready = true;
  for (int64_t b = 0; b < lm_.batch; ++b) {
    const int64_t f = frames_[static_cast<size_t>(b)];
    frame.ready.push_back(f > max_delay);
    all_ready = all_ready && f > max_delay;
    // A slot's decoder starts at its first real tokens, as a fresh stream's does: what it decoded
    // while waiting was filler.
    if (f == max_delay + 1) dec_.reset_slot(b);
  }
  // Slots still filling their delays read -2 (not generated): token 0 stands in, its audio is dropped.
  at::Tensor tokens = all_ready ? *out : out->clamp_min(0);
  frame.audio = codec_->decode_step(tokens.narrow(1, 1, dep_q), dec_);
  frame.text = tokens.select(1, 0).reshape({lm_.batch});
  if (!all_ready) {
    at::Tensor live =
        at::tensor(std::vector<uint8_t>(frame.ready.begin(), frame.ready.end()), at::kByte).to(at::kBool).to(device_);
    frame.audio = frame.audio * live.view({-1, 1, 1}).to(frame.audio.scalar_type());
  }
  return frame;
}

void Duplex::reset() {
  gen_.reset(lm_);
  enc_.reset();
  dec_.reset();
  std::fill(frames_.begin(), frames_.end(), 0);
}

void Duplex::start(int64_t slot, const lm::SamplingConfig& s) {
  MT_CHECK(slot >= 0 && slot < lm_.batch, "duplex: slot ", slot, " out of range [0, ", lm_.batch, ")");
  at::Tensor mask = at::zeros({lm_.batch}, at::kBool);
  mask[slot].fill_(true);
  gen_.reset(lm_, mask);
  gen_.set_sampling(lm_, slot, s);
  enc_.reset_slot(slot);
  dec_.reset_slot(slot);
  frames_[static_cast<size_t>(slot)] = 0;
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
