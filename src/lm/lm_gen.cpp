#include "lm/lm_gen.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>

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

LMGen::LMGen(LMModel model, SamplingConfig s) : model_(std::move(model)), sampling_(s) {
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
  // A generator of the model's device, seeded: sampling never leaves the device.
  auto dev = model_->text_linear->weight.device();
  st.gen =
      dev.is_cpu() ? at::detail::createCPUGenerator(sampling_.seed) : at::globalContext().defaultGenerator(dev).clone();
  st.gen.set_current_seed(sampling_.seed);
  return st;
}

void LMGen::reset(LMGenState& st, const at::Tensor& mask) const {
  if (!mask.defined()) {
    st.offsets.zero_();
    st.cache.fill_(LMConfig::kUngenerated);
    st.main.reset();
  } else {
    at::Tensor m = mask.to(st.offsets.device(), at::kBool);
    st.offsets.masked_fill_(m, 0);
    st.cache.masked_fill_(m.view({-1, 1, 1}), LMConfig::kUngenerated);
    st.main.reset(m);
  }
  st.offset_cpu = 0;
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
  at::Tensor text =
      sample_token(st.last_text_logits, sampling_.use_sampling, sampling_.temp_text, sampling_.top_k_text, st.gen);
  st.dep.reset();
  std::vector<at::Tensor> audio;
  at::Tensor prev = text;
  for (int64_t cb = 0; cb < dq; ++cb) {
    at::Tensor logits = model_->depformer_step(cb, prev, tout, st.dep);
    prev = sample_token(logits, sampling_.use_sampling, sampling_.temp, sampling_.top_k, st.gen);
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
