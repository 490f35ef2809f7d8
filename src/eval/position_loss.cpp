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
