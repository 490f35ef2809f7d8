#include "eval/position_loss.h"

#include <cmath>

namespace mt::eval {

at::Tensor masked_cross_entropy(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask) {
  at::Tensor safe = at::where(mask.unsqueeze(-1), logits, at::zeros({}, logits.options()));
  at::Tensor lp = at::log_softmax(safe.to(at::kFloat), -1);
  at::Tensor t = at::where(mask, targets, at::zeros({}, targets.options()));
  at::Tensor ce = -lp.gather(-1, t.unsqueeze(-1)).squeeze(-1);
  return at::where(mask, ce, at::full({}, NAN, ce.options()));
}

at::Tensor stream_cross_entropy(const lm::LMConfig& cfg, const lm::LMOutput& out, const at::Tensor& codes) {
  at::Tensor ce = masked_cross_entropy(out.text_logits, codes.narrow(1, 0, 1), out.text_mask);
  if (cfg.dep_q > 0)
    ce = at::cat({ce, masked_cross_entropy(out.logits, codes.narrow(1, cfg.audio_offset(), cfg.dep_q), out.mask)}, 1);
  return ce;
}

}  // namespace mt::eval

namespace mt::eval {

at::Tensor streaming_cross_entropy(
    const lm::LMModelImpl& m, const at::Tensor& codes, lm::TransformerState& st, bool want_probes,
    const std::function<void(int64_t, const std::vector<lm::LayerProbes>&)>& after_chunk) {
  const lm::LMConfig& cfg = m.cfg;
  const at::Tensor delayed = m.delayed_input(codes);  // [B, K, T+1]
  const int64_t B = codes.size(0), T = codes.size(2), S = 1 + cfg.dep_q;
  // ce in delayed coordinates: column s scores delayed[:, j, s + 1], predicted at step s.
  at::Tensor ce_d = at::full({B, S, T}, NAN, at::TensorOptions().dtype(at::kFloat));
  std::vector<lm::LayerProbes> probes;
  for (int64_t t = 0; t < T; t += st.max_chunk) {
    const int64_t c = std::min(st.max_chunk, T - t);
    auto [tout, text_logits] = m.forward_text(delayed.narrow(2, t, c), &st, want_probes ? &probes : nullptr);
    const at::Tensor targets = delayed.narrow(2, t + 1, c);  // [B, K, c]
    auto ce_of = [](const at::Tensor& logits, const at::Tensor& tg) {
      const at::Tensor mask = tg.ge(0) & tg.lt(logits.size(-1));  // -1 (absent) and initial tokens are not scored
      return masked_cross_entropy(logits, tg, mask);
    };
    ce_d.select(1, 0).narrow(1, t, c).copy_(ce_of(text_logits, targets.narrow(1, 0, 1)).select(1, 0).cpu());
    if (cfg.dep_q > 0) {
      const at::Tensor logits = m.forward_depformer_training(targets, tout);  // [B, dep_q, c, card]
      ce_d.narrow(1, 1, cfg.dep_q)
          .narrow(2, t, c)
          .copy_(ce_of(logits, targets.narrow(1, cfg.audio_offset(), cfg.dep_q)).cpu());
    }
    if (after_chunk) after_chunk(t + c, probes);
  }
  // Back to the codes' positions: stream j at position p was predicted at delayed column p + delay_j.
  at::Tensor ce = at::full({B, S, T}, NAN, ce_d.options());
  for (int64_t j = 0; j < S; ++j) {
    const int64_t d = cfg.delays.at(static_cast<size_t>(j));
    if (d < T) ce.select(1, j).narrow(1, 0, T - d).copy_(ce_d.select(1, j).narrow(1, d, T - d));
  }
  const at::Tensor absent = codes.narrow(1, 0, S).eq(lm::LMConfig::kZeroToken).cpu();
  return at::where(absent, at::full({}, NAN, ce.options()), ce);
}

}  // namespace mt::eval
