// The hybrid TTT block (lm/ttt_addons.h) and the TTT stream states.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "lm/ttt_addons.h"
#include "util/error.h"
#include "util/pitfall_switch.h"

namespace mt::lm {

template <>
void StateOf<ttt::TTTState>::write(const std::string& p, nn::TensorMap& out) const {
  out[p + "position"] = nn::long_tensor(s.position);
  out[p + "fresh"] = nn::long_tensor(std::vector<int64_t>(s.fresh.begin(), s.fresh.end()));
  // Inner layer l's weights and gradient sum as W<l+1>b / G<l+1>b.
  for (size_t l = 0; l < s.W.size(); ++l) {
    const std::string i = std::to_string(l + 1);
    if (s.W[l].defined()) out[p + "W" + i + "b"] = nn::saved(s.W[l]);
    if (s.G[l].defined()) out[p + "G" + i + "b"] = nn::saved(s.G[l]);
  }
  if (s.conv_tail.defined()) out[p + "conv_tail"] = nn::saved(s.conv_tail);
}

template <>
void StateOf<ttt::TTTState>::read(const std::string& p, const nn::TensorMap& in, const at::Device& dev) {
  s.position = nn::long_vector(nn::need(in, p, "position"));
  const auto fresh = nn::long_vector(nn::need(in, p, "fresh"));
  s.fresh.assign(fresh.begin(), fresh.end());
  MT_CHECK(static_cast<int64_t>(s.position.size()) == s.batch, "checkpoint: TTT state '", p, "' has ",
           s.position.size(), " slots, the run has ", s.batch);
  auto opt = [&](const std::string& k) {
    auto it = in.find(p + k);
    return it == in.end() ? at::Tensor() : it->second.to(dev).clone();
  };
  s.W.clear();
  s.G.clear();
  for (size_t l = 1; in.count(p + "W" + std::to_string(l) + "b"); ++l) {
    s.W.push_back(opt("W" + std::to_string(l) + "b"));
    s.G.push_back(opt("G" + std::to_string(l) + "b"));
    MT_CHECK(s.G.back().defined(), "checkpoint: TTT state '", p, "' has W", l, "b without G", l, "b");
  }
  s.conv_tail = opt("conv_tail");
}

nn::TensorMap probe_map(const ttt::TTTProbes& p) {
  return {{"l0", p.l0},
          {"lprev", p.lprev},
          {"lafter", p.lafter},
          {"w_delta_norm", p.w_delta_norm},
          {"w_delta_norm_per_layer", p.w_delta_norm_per_layer}};
}

ttt::TTTProbes probes_from(const nn::TensorMap& m) {
  auto get = [&](const char* k) {
    auto it = m.find(k);
    return it == m.end() ? at::Tensor() : it->second;
  };
  ttt::TTTProbes p;
  p.l0 = get("l0");
  p.lprev = get("lprev");
  p.lafter = get("lafter");
  p.w_delta_norm = get("w_delta_norm");
  p.w_delta_norm_per_layer = get("w_delta_norm_per_layer");
  return p;
}

HybridTTTImpl::HybridTTTImpl(const std::string& norm_kind, int64_t dim, const ttt::TTTConfig& cfg, double alpha,
                             TTTPlacement where)
    : alpha_init(alpha), placement(where) {
  norm = register_module("norm", nn::Norm(norm_kind, dim));
  gating_alpha = register_parameter("gating_alpha", at::full({dim}, alpha_init));
  layer = std::make_shared<ttt::TTTLayer>(ttt::TTTLayer::init(cfg, 0));
  auto holder = register_module("layer", std::make_shared<torch::nn::Module>("TTTLayer"));
  for (const auto& [name, t] : layer->named_parameters()) nn::register_param_tree(*holder, name, t);
}

void HybridTTTImpl::init(uint64_t seed) {
  at::NoGradGuard ng;
  ttt::TTTLayer fresh = ttt::TTTLayer::init(layer->config(), seed);
  for (const auto& [name, t] : fresh.named_parameters()) layer->param(name).copy_(t);
  gating_alpha.fill_(alpha_init);
  if (norm->alpha.defined()) norm->alpha.fill_(1.0);
  if (norm->weight.defined()) norm->weight.fill_(1.0);
  if (norm->bias.defined()) norm->bias.zero_();
}

std::unique_ptr<nn::StreamState> HybridTTTImpl::make_state(int64_t batch) const {
  return std::make_unique<HybridState>(batch);
}

at::Tensor HybridTTTImpl::block(const at::Tensor& h, const nn::StepContext& c) const {
  auto& st = static_cast<HybridState&>(c.slot_state(slot)).s;
  // Tests only: pitfalls.md row 8 (the gate α clamped hard, which zeroes its gradient outside [-3, 3]).
  const at::Tensor a = pitfall::on(8) ? gating_alpha.clamp(-3.0, 3.0) : gating_alpha;
  ttt::TTTProbes p;
  at::Tensor y = at::tanh(a) * layer->forward(norm->forward(h), st, c.probe ? &p : nullptr);
  if (c.probe) c.report(slot, probe_map(p));
  return y;
}

at::Tensor HybridTTTImpl::before_attention(const at::Tensor& x, const nn::StepContext& c) const {
  return placement == TTTPlacement::kBeforeAttention ? x + block(x, c) : x;
}

at::Tensor HybridTTTImpl::after_attention(const at::Tensor& x, const at::Tensor& h, const nn::StepContext& c) const {
  switch (placement) {
    case TTTPlacement::kAfterAttention: return h + block(h, c);
    case TTTPlacement::kParallel: return h + block(x, c);
    case TTTPlacement::kBeforeAttention: return h;
  }
  return h;
}

double HybridTTTImpl::gate() const {
  return at::tanh(gating_alpha.detach().to(at::kDouble)).abs().mean().item<double>();
}

void HybridTTTImpl::set_off(bool off) {
  at::NoGradGuard ng;
  if (off && !saved_alpha_.defined()) {
    saved_alpha_ = gating_alpha.detach().clone();
    gating_alpha.detach().zero_();  // tanh(0) = 0: the block adds nothing
  } else if (!off && saved_alpha_.defined()) {
    gating_alpha.detach().copy_(saved_alpha_);
    saved_alpha_ = at::Tensor();
  }
}

}  // namespace mt::lm
