#include "lm/lm_gen.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

#include <cmath>

#include "util/error.h"

namespace mt::lm {

at::Tensor sample_token(const at::Tensor& logits, bool use_sampling, double temp, int64_t top_k, at::Generator& gen) {
  if (!use_sampling || temp <= 0) return logits.argmax(-1);
  at::Tensor probs = at::softmax(logits.to(at::kFloat) / temp, -1);
  at::Tensor idx;
  if (top_k > 0 && top_k < probs.size(-1)) std::tie(probs, idx) = probs.topk(top_k, -1);
  // Exponential race: argmax(p / E) with E ~ Exp(1) draws index i with probability p_i / sum(p).
  at::Tensor e = at::empty_like(probs).exponential_(1.0, gen);
  at::Tensor pick = (probs / e).argmax(-1, /*keepdim=*/true);
  if (idx.defined()) pick = idx.gather(-1, pick);
  return pick.squeeze(-1);
}

void SamplingConfig::validate() const {
  MT_CHECK(temp >= 0 && temp_text >= 0, "sampling: temperatures must be >= 0, got audio ", temp, ", text ", temp_text);
  MT_CHECK(top_k >= 0 && top_k_text >= 0, "sampling: top-k must be >= 0, got audio ", top_k, ", text ", top_k_text);
  MT_CHECK(std::isfinite(pad_mult), "sampling: pad_mult must be finite, got ", pad_mult);
  MT_CHECK(repetition_penalty > 0 && std::isfinite(repetition_penalty),
           "sampling: repetition_penalty must be > 0, got ", repetition_penalty);
  MT_CHECK(repetition_context >= 0 && repetition_context <= 4096,
           "sampling: repetition_context must be in [0, 4096], got ", repetition_context);
}

namespace {
at::Generator seeded(const at::Device& dev, uint64_t seed) {
  // A generator of the model's device: sampling never leaves the device.
  at::Generator g =
      dev.is_cpu() ? at::detail::createCPUGenerator(seed) : at::globalContext().defaultGenerator(dev).clone();
  g.set_current_seed(seed);
  return g;
}
}  // namespace

LMGen::LMGen(LMModel model, SamplingConfig s) : model_(std::move(model)), sampling_(s) {
  sampling_.validate();
  const auto& c = model_->cfg;
  MT_CHECK(c.dep_q > 0, "streaming generation needs a depformer (dep_q > 0)");
  auto dev = model_->text_linear->weight.device();
  delays_ = at::tensor(c.delays, at::TensorOptions().dtype(at::kLong)).to(dev);
  initial_ = model_->initial_tokens();
  max_delay_ = c.max_delay();
}

LMGenState LMGen::make_state(int64_t batch) const {
  MT_CHECK(batch > 0, "batch must be > 0");
  const auto& c = model_->cfg;
  LMGenState st;
  st.batch = batch;
  auto lopt = at::TensorOptions().dtype(at::kLong).device(model_->text_linear->weight.device());
  st.cache = at::full({batch, c.num_codebooks(), max_delay_ + 2}, LMConfig::kUngenerated, lopt);
  st.offsets = at::zeros({batch}, lopt);
  st.main = model_->make_state(batch);
  st.dep = model_->make_depformer_state(batch);
  st.gen = seeded(model_->text_linear->weight.device(), sampling_.seed);
  if (sampling_.audio_seed || sampling_.penalizes() || sampling_.pad_mult != 0)
    for (int64_t b = 0; b < batch; ++b) set_sampling(st, b, sampling_);
  return st;
}

void LMGen::set_sampling(LMGenState& st, int64_t slot, const SamplingConfig& s) const {
  MT_CHECK(slot >= 0 && slot < st.batch, "LMGen: slot ", slot, " out of range [0, ", st.batch, ")");
  s.validate();
  const auto dev = model_->text_linear->weight.device();
  if (st.slots.empty()) {
    st.slots.assign(static_cast<size_t>(st.batch), sampling_);
    for (int64_t b = 0; b < st.batch; ++b) {
      st.text_gens.push_back(seeded(dev, sampling_.seed));
      st.audio_gens.push_back(sampling_.audio_seed ? seeded(dev, *sampling_.audio_seed) : st.text_gens.back());
    }
  }
  st.slots[slot] = s;
  st.text_gens[slot] = seeded(dev, s.seed);
  st.audio_gens[slot] = s.audio_seed ? seeded(dev, *s.audio_seed) : st.text_gens[slot];
  refresh_shaping(st);
}

// The per-slot tensors of the text logit shaping, rebuilt when a slot's config changes (never per step).
void LMGen::refresh_shaping(LMGenState& st) const {
  const auto dev = model_->text_linear->weight.device();
  std::vector<float> pen, shift;
  int64_t ctx = 0;
  bool any_shift = false;
  for (const auto& s : st.slots) {
    pen.push_back(s.penalizes() ? static_cast<float>(s.repetition_penalty) : 1.f);
    // p(PAD) * e^m after softmax(l / T) is l(PAD) + T m before it; greedy shifts the logit itself.
    shift.push_back(static_cast<float>(s.pad_mult * (s.use_sampling && s.temp_text > 0 ? s.temp_text : 1.0)));
    any_shift = any_shift || s.pad_mult != 0;
    if (s.penalizes()) ctx = std::max(ctx, s.repetition_context);
  }
  const auto fopt = at::TensorOptions().dtype(at::kFloat);
  st.pad_shift = any_shift ? at::tensor(shift, fopt).view({-1, 1}).to(dev) : at::Tensor();
  if (ctx == 0) {
    st.penalty = st.history = st.history_window = at::Tensor();
    return;
  }
  st.penalty = at::tensor(pen, fopt).view({-1, 1}).to(dev);
  // The window of each slot: its last repetition_context entries of the shared history.
  std::vector<uint8_t> window;
  for (const auto& s : st.slots)
    for (int64_t j = 0; j < ctx; ++j) window.push_back(s.penalizes() && j >= ctx - s.repetition_context);
  st.history_window = at::tensor(window, at::kByte).view({st.batch, ctx}).to(at::kBool).to(dev);
  if (!st.history.defined() || st.history.size(1) != ctx) {
    at::Tensor h = at::full({st.batch, ctx}, -1, at::TensorOptions().dtype(at::kLong).device(dev));
    if (st.history.defined()) {  // keep what the other slots remember
      const int64_t keep = std::min(ctx, st.history.size(1));
      h.narrow(1, ctx - keep, keep).copy_(st.history.narrow(1, st.history.size(1) - keep, keep));
    }
    st.history = h;
  }
}

void LMGen::shape_text_logits(LMGenState& st, at::Tensor& logits) const {
  const auto& c = model_->cfg;
  if (st.penalty.defined()) {
    at::Tensor valid = st.history_window & (st.history >= 0);
    at::Tensor seen = at::zeros(logits.sizes(), logits.options())
                          .scatter_add_(1, st.history.clamp_min(0), valid.to(logits.scalar_type())) > 0;
    at::Tensor penalized = at::where(logits >= 0, logits / st.penalty, logits * st.penalty);
    logits = at::where(seen, penalized, logits);
  }
  if (st.pad_shift.defined() && c.existing_text_padding_id) {
    const int64_t pad = *c.existing_text_padding_id;
    logits = logits.clone();
    logits.narrow(1, pad, 1).add_(st.pad_shift);
  }
}

at::Tensor LMGen::sample_text(LMGenState& st, const at::Tensor& logits) const {
  if (st.slots.empty())
    return sample_token(logits, sampling_.use_sampling, sampling_.temp_text, sampling_.top_k_text, st.gen);
  std::vector<at::Tensor> picks;
  for (int64_t b = 0; b < st.batch; ++b) {
    const auto& s = st.slots[b];
    picks.push_back(sample_token(logits.narrow(0, b, 1), s.use_sampling, s.temp_text, s.top_k_text, st.text_gens[b]));
  }
  return at::cat(picks, 0);
}

at::Tensor LMGen::sample_audio(LMGenState& st, const at::Tensor& logits) const {
  if (st.slots.empty()) return sample_token(logits, sampling_.use_sampling, sampling_.temp, sampling_.top_k, st.gen);
  std::vector<at::Tensor> picks;
  for (int64_t b = 0; b < st.batch; ++b) {
    const auto& s = st.slots[b];
    picks.push_back(sample_token(logits.narrow(0, b, 1), s.use_sampling, s.temp, s.top_k, st.audio_gens[b]));
  }
  return at::cat(picks, 0);
}

// The repetition history keeps the latest non-padding text tokens of every slot (device-side: no sync).
void LMGen::remember_text(LMGenState& st, const at::Tensor& text) const {
  if (!st.history.defined()) return;
  const auto& c = model_->cfg;
  at::Tensor t = text.view({-1, 1});
  at::Tensor special = (t == c.existing_text_end_padding_id) | (t == c.initial_text_token());
  if (c.existing_text_padding_id) special = special | (t == *c.existing_text_padding_id);
  at::Tensor shifted = at::cat({st.history.narrow(1, 1, st.history.size(1) - 1), t}, 1);
  st.history = at::where(special, st.history, shifted);
}

void LMGen::reset(LMGenState& st, const at::Tensor& mask) const {
  if (!mask.defined()) {
    st.offsets.zero_();
    st.cache.fill_(LMConfig::kUngenerated);
    st.main.reset();
    if (st.history.defined()) st.history.fill_(-1);
    st.offset_cpu = 0;
    return;
  }
  // offset_cpu stays: it only gates the whole batch's first max_delay steps, and the other slots'
  // output must go on; the reset slots read -2 until their own delays are filled.
  at::Tensor m = mask.to(st.offsets.device(), at::kBool);
  st.offsets.masked_fill_(m, 0);
  st.cache.masked_fill_(m.view({-1, 1, 1}), LMConfig::kUngenerated);
  st.main.reset(m);
  if (st.history.defined()) st.history.masked_fill_(m.view({-1, 1}), -1);
}

std::optional<at::Tensor> LMGen::step(LMGenState& st, const at::Tensor& user_codes_in) const {
  at::InferenceMode guard;
  const auto& c = model_->cfg;
  const int64_t B = st.batch, dq = c.dep_q, K = c.num_codebooks();
  const int64_t CT = st.cache.size(2);
  const int64_t needed = K - dq - 1;
  MT_CHECK(user_codes_in.dim() == 3 && user_codes_in.size(0) == B && user_codes_in.size(1) >= needed &&
               user_codes_in.size(2) == 1,
           "LMGen step: expected user codes [", B, ", ", needed, ", 1], got ", shape_str(user_codes_in.sizes().vec()));
  at::Tensor user = user_codes_in.narrow(1, 0, needed).to(st.cache.device(), at::kLong);
  // 1. The user streams are written at their delayed positions.
  if (needed > 0) {
    at::Tensor wpos = (st.offsets.view({-1, 1, 1}) + delays_.narrow(0, dq + 1, needed).view({1, -1, 1})).remainder(CT);
    st.cache.narrow(1, dq + 1, needed).scatter_(2, wpos, user);
  }
  // 2. Input column: the cache at the current offset, initial tokens while offset <= delay.
  at::Tensor is_init = st.offsets.view({-1, 1, 1}) <= delays_.view({1, -1, 1});
  at::Tensor pos = st.offsets.remainder(CT).view({-1, 1, 1}).expand({B, K, 1});
  at::Tensor input = at::where(is_init, initial_, st.cache.gather(2, pos));
  // 3. Temporal transformer, one step.
  auto [tout, text_logits] = model_->forward_text(input, &st.main);
  st.last_text_logits = text_logits.select(1, 0).select(1, 0);
  // 4. Text token, then the depformer over the dep_q codebooks.
  at::Tensor shaped = st.last_text_logits;
  shape_text_logits(st, shaped);
  at::Tensor text = sample_text(st, shaped);
  remember_text(st, text);
  st.dep.reset();
  std::vector<at::Tensor> audio;
  at::Tensor prev = text;
  for (int64_t cb = 0; cb < dq; ++cb) {
    at::Tensor logits = model_->depformer_step(cb, prev, tout, st.dep);
    prev = sample_audio(st, logits);
    audio.push_back(prev);
  }
  // 5. Advance and store what was generated.
  st.offsets.add_(1);
  st.offset_cpu += 1;
  at::Tensor wpos = st.offsets.remainder(CT).view({-1, 1, 1});
  st.cache.narrow(1, 0, 1).scatter_(2, wpos, text.view({-1, 1, 1}));
  st.cache.narrow(1, 1, dq).scatter_(2, wpos.expand({B, dq, 1}), at::stack(audio, 1).unsqueeze(-1));
  if (st.offset_cpu <= max_delay_) return std::nullopt;
  // 6. Realign: stream k is read delay_k steps after the oldest complete frame.
  at::Tensor gpos =
      (st.offsets.view({-1, 1, 1}) - max_delay_ + delays_.narrow(0, 0, dq + 1).view({1, -1, 1})).remainder(CT);
  at::Tensor out = st.cache.gather(2, gpos);
  at::Tensor not_ready = (st.offsets <= max_delay_).view({-1, 1, 1});
  return at::where(not_ready, at::full({}, LMConfig::kUngenerated, out.options()), out);
}

}  // namespace mt::lm

#include <chrono>

namespace mt::lm {

GenerationResult generate(const LMGen& gen, LMGenState& st, int64_t steps, const at::Tensor& user_codes,
                          const std::function<void(int64_t, double)>& on_step) {
  const auto& c = gen.model()->cfg;
  const int64_t needed = c.n_q - c.dep_q;
  auto dev = gen.model()->text_linear->weight.device();
  at::Tensor user = user_codes;
  if (!user.defined()) user = at::zeros({st.batch, needed, steps}, at::TensorOptions().dtype(at::kLong).device(dev));
  MT_CHECK(user.dim() == 3 && user.size(0) == st.batch && user.size(1) >= needed && user.size(2) >= steps,
           "user codes: expected [", st.batch, ", ", needed, ", >= ", steps, "], got ", shape_str(user.sizes().vec()));
  user = user.to(dev);
  GenerationResult r;
  r.step_ms.reserve(static_cast<size_t>(steps));
  // One preallocated host buffer: a long stream allocates nothing per step (a tensor per frame would
  // cost a few hundred bytes of bookkeeping each, RSS growing with the conversation).
  at::Tensor out = at::empty({st.batch, 1 + c.dep_q, steps}, at::kLong);
  int64_t n = 0;
  for (int64_t t = 0; t < steps; ++t) {
    auto t0 = std::chrono::steady_clock::now();
    auto y = gen.step(st, user.narrow(2, t, 1));
    if (y) out.narrow(2, n++, 1).copy_(*y);  // the copy to host is the step's one sync point
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    r.step_ms.push_back(ms);
    if (on_step) on_step(t, ms);
  }
  r.tokens = out.narrow(2, 0, n);
  return r;
}

}  // namespace mt::lm
