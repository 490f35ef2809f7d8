// In-Place TTT of a layer's gated FFN (lm/ttt_addons.h).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "lm/ttt_addons.h"
#include "util/error.h"

namespace mt::lm {

template <>
void StateOf<ttt::InPlaceState>::write(const std::string& p, nn::TensorMap& out) const {
  out[p + "dw"] = nn::saved(s.dw);
  out[p + "h_buf"] = nn::saved(s.h_buf);
  out[p + "t_buf"] = nn::saved(s.t_buf);
  out[p + "pos"] = nn::long_tensor(s.pos);
  out[p + "tokens"] = nn::long_tensor({s.tokens});
}

template <>
void StateOf<ttt::InPlaceState>::read(const std::string& p, const nn::TensorMap& in, const at::Device& dev) {
  s.dw = nn::need(in, p, "dw").to(dev).clone();
  s.h_buf = nn::need(in, p, "h_buf").to(dev).clone();
  s.t_buf = nn::need(in, p, "t_buf").to(dev).clone();
  s.pos = nn::long_vector(nn::need(in, p, "pos"));
  s.tokens = nn::long_vector(nn::need(in, p, "tokens")).at(0);
}

InPlaceTTTImpl::InPlaceTTTImpl(const ttt::InPlaceConfig& cfg, nn::GatingImpl& gating, InPlaceTarget t) : target(t) {
  ffn_ = std::make_shared<ttt::InPlaceFFNImpl>(cfg);
  // The FFN runs on the layer's own gating weights (its own copies are emptied); its target tensors
  // live under gating, where checkpoints name them.
  {
    at::NoGradGuard ng;
    ffn_->gating->linear_in->weight.set_data(at::empty({0}));
    ffn_->gating->linear_out->weight.set_data(at::empty({0}));
  }
  ffn_->gating->linear_in->weight = gating.linear_in->weight;
  ffn_->gating->linear_out->weight = gating.linear_out->weight;
  nn::register_param_tree(gating, "ttt_conv.weight", ffn_->conv_weight);
  if (ffn_->proj_weight.defined()) nn::register_param_tree(gating, "ttt_proj.weight", ffn_->proj_weight);
}

std::unique_ptr<nn::StreamState> InPlaceTTTImpl::make_state(int64_t batch) const {
  return std::make_unique<InPlaceStreamState>(ffn_->make_state(batch));
}

at::Tensor InPlaceTTTImpl::ffn(const at::Tensor& n, const nn::StepContext& c) const {
  auto& st = static_cast<InPlaceStreamState&>(c.slot_state(slot)).s;
  const at::Tensor& t = target == InPlaceTarget::kEmbeddings ? c.input : n;
  MT_CHECK(t.defined(), "In-Place TTT layer run without its target source (the transformer input)");
  at::Tensor y = ffn_->step(n, t, st);
  if (c.probe)
    c.report(slot, {{"dw_norm", st.dw.flatten(1).norm(2, {1})},
                    {"updates", nn::long_tensor({st.tokens / ffn_->cfg.chunk_size})}});
  return y;
}

void InPlaceTTTImpl::init(uint64_t seed) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  ffn_->conv_weight.zero_();
  if (ffn_->proj_weight.defined()) {
    at::Tensor p = at::zeros(ffn_->proj_weight.sizes(), at::kFloat);
    p.diagonal().normal_(0, 0.02, gen);  // official: zero with a N(0, 0.02²) diagonal
    ffn_->proj_weight.copy_(p);
  }
}

void InPlaceTTTImpl::set_off(bool off) {
  if (off && ffn_->cfg.lr != 0) {
    saved_lr_ = ffn_->cfg.lr;
    ffn_->cfg.lr = 0;
  } else if (!off && ffn_->cfg.lr == 0) {
    ffn_->cfg.lr = saved_lr_;
  }
}

}  // namespace mt::lm
