#include "train/loss.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace mt::train {

namespace {
// The CE ([B, N, T]) for logits [B, N, T, V], targets [B, N, T], mask [B, N, T]. `delayed`: some
// stream has a delay, so the logits of its last steps are NaN (undelayed tail).
at::Tensor masked_ce(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask, bool delayed) {
  at::Tensor t = at::where(mask, targets, at::zeros({}, targets.options()));
  // NaN logits would poison the sum (and their gradient): zero them. Without a delay every logit is
  // finite, and the pass over the logits (and its backward) is skipped.
  at::Tensor l = logits.to(at::kFloat);
  if (delayed) l = at::where(mask.unsqueeze(-1), l, at::zeros({}, l.options()));
  at::Tensor lp = at::log_softmax(l, -1);
  return -lp.gather(-1, t.unsqueeze(-1)).squeeze(-1);
}
}  // namespace

LossParts compute_loss(const lm::LMConfig& cfg, const lm::LMOutput& out, const at::Tensor& codes, const LossConfig& lc,
                       bool per_codebook) {
  MT_CHECK(codes.dim() == 3 && codes.size(1) == cfg.num_codebooks(), "loss: codes must be [B, ", cfg.num_codebooks(),
           ", T], got ", shape_str(codes.sizes().vec()));
  LossParts r;
  // Text.
  at::Tensor tt = codes.narrow(1, 0, 1);
  at::Tensor tw = out.text_mask.to(at::kFloat);
  at::Tensor is_pad = tt.eq(cfg.existing_text_end_padding_id);
  if (cfg.existing_text_padding_id) is_pad = is_pad | tt.eq(*cfg.existing_text_padding_id);
  tw = at::where(is_pad, tw * lc.text_padding_weight, tw);
  at::Tensor tce = masked_ce(out.text_logits, tt, out.text_mask, cfg.delays[0] > 0);
  r.text = (tce * tw).sum() / tw.sum();
  r.real_tokens = out.text_mask.sum().item<int64_t>();
  // Audio (Moshi's own codebooks; the user's streams are never targets).
  if (cfg.dep_q > 0) {
    at::Tensor at_ = codes.narrow(1, cfg.audio_offset(), cfg.dep_q);
    at::Tensor aw = out.mask.to(at::kFloat);
    if (lc.first_codebook_weight_multiplier != 1.0) {
      std::vector<double> m(static_cast<size_t>(cfg.dep_q), 1.0);
      m[0] = lc.first_codebook_weight_multiplier;
      aw = aw * at::tensor(m, aw.options()).view({1, -1, 1});
    }
    const bool delayed =
        std::any_of(cfg.delays.begin() + 1, cfg.delays.begin() + 1 + cfg.dep_q, [](int64_t d) { return d > 0; });
    at::Tensor ace = masked_ce(out.logits, at_, out.mask, delayed);
    r.audio = (ace * aw).sum() / aw.sum();
    r.real_tokens += out.mask.sum().item<int64_t>();
    r.total = r.text + r.audio;
    if (per_codebook) {
      const std::vector<int64_t> dims{0, 2};  // (a braced list is ambiguous for sum() on older libtorch)
      at::Tensor num = (ace * aw).detach().sum(at::IntArrayRef(dims)), den = aw.sum(at::IntArrayRef(dims));
      r.per_codebook.push_back(r.text.detach().item<double>());
      at::Tensor pc = (num / den).to(at::kDouble).cpu();
      for (int64_t k = 0; k < cfg.dep_q; ++k) r.per_codebook.push_back(pc[k].item<double>());
    }
  } else {
    r.audio = at::zeros({}, r.text.options());
    r.total = r.text;
    if (per_codebook) r.per_codebook.push_back(r.text.detach().item<double>());
  }
  return r;
}

}  // namespace mt::train
