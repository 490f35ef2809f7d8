// The TTT adapter on a linear (lm/ttt_addons.h).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "lm/ttt_addons.h"
#include "util/error.h"
#include "util/gemv.h"

namespace mt::lm {

TTTAdapterImpl::TTTAdapterImpl(int64_t in, int64_t out, const ttt::TTTConfig& inner, double s, int64_t i,
                               std::string where)
    : scale(s), index(i), target(std::move(where)) {
  MT_CHECK(inner.num_attention_heads == 1 && inner.hidden_size >= 2, "TTT adapter: expects a one-head inner layer");
  down = register_module("down", std::make_shared<nn::LinearImpl>(in, inner.hidden_size));
  up = register_module("up", std::make_shared<nn::LinearImpl>(inner.hidden_size, out));
  layer = std::make_shared<ttt::TTTLayer>(ttt::TTTLayer::init(inner, 0));
  auto holder = register_module("layer", std::make_shared<torch::nn::Module>("TTTLayer"));
  for (const auto& [name, t] : layer->named_parameters()) nn::register_param_tree(*holder, name, t);
  init_from(0);
}

// The layer's seed, spread over its adapters (adapter j draws from seed·31 + j + 1).
void TTTAdapterImpl::init(uint64_t seed) { init_from(seed * 31 + static_cast<uint64_t>(index) + 1); }

void TTTAdapterImpl::init_from(uint64_t seed) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  nn::kaiming_uniform_fan_in(down->weight, gen);
  up->weight.zero_();
  ttt::TTTLayer fresh = ttt::TTTLayer::init(layer->config(), seed + 1);
  for (const auto& [name, t] : fresh.named_parameters()) layer->param(name).copy_(t);
}

std::unique_ptr<nn::StreamState> TTTAdapterImpl::make_state(int64_t batch) const {
  return std::make_unique<AdapterState>(batch);
}

at::Tensor TTTAdapterImpl::forward(const at::Tensor& x, const nn::StepContext& c) const {
  auto& st = static_cast<AdapterState&>(c.slot_state(slot)).s;
  at::Tensor z = util::linear_nobias(x, down->weight);
  ttt::TTTProbes p;
  at::Tensor y = util::linear_nobias(layer->forward(z, st, c.probe ? &p : nullptr), up->weight) * scale;
  if (c.probe) c.report(slot, probe_map(p));
  return y;
}

void TTTAdapterImpl::set_off(bool off) {
  if (off && scale != 0) {
    saved_scale_ = scale;
    scale = 0;
  } else if (!off && scale == 0) {
    scale = saved_scale_;
  }
}

int64_t adapter_parameters(int64_t in, int64_t out, const ttt::TTTConfig& inner) {
  int64_t n = inner.hidden_size * (in + out);
  for (const auto& [name, shape] : ttt::TTTLayer::expected_parameters(inner)) {
    int64_t k = 1;
    for (auto d : shape) k *= d;
    n += k;
  }
  return n;
}

}  // namespace mt::lm
