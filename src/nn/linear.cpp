#include "nn/linear.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "util/error.h"
#include "util/gemv.h"

namespace mt::lm {

void kaiming_uniform_fan_in(const at::Tensor& w, at::Generator& gen) {
  at::NoGradGuard ng;
  const double b = 1.0 / std::sqrt(static_cast<double>(w.size(-1)));
  at::Tensor t = at::empty(w.sizes(), at::TensorOptions().dtype(at::kFloat));
  t.uniform_(-b, b, gen);
  w.copy_(t);
}

void register_param_tree(torch::nn::Module& root, const std::string& dotted, const at::Tensor& t) {
  torch::nn::Module* m = &root;
  std::string rest = dotted;
  size_t dot;
  while ((dot = rest.find('.')) != std::string::npos) {
    std::string head = rest.substr(0, dot);
    rest = rest.substr(dot + 1);
    std::shared_ptr<torch::nn::Module> child;
    for (auto& kv : m->named_children())
      if (kv.key() == head) child = kv.value();
    if (!child) child = m->register_module(head, std::make_shared<torch::nn::Module>(head));
    m = child.get();
  }
  m->register_parameter(rest, t);
}

LinearImpl::LinearImpl(int64_t in, int64_t out) { weight = register_parameter("weight", at::empty({out, in})); }

at::Tensor LinearImpl::forward(const at::Tensor& x) const {
  MT_CHECK(!ttt_adapter, "a linear layer with a TTT adapter was run without the adapter's state");
  return forward(x, nullptr);
}

at::Tensor LinearImpl::forward(const at::Tensor& x, ttt::TTTState* st, ttt::TTTProbes* probes) const {
  at::Tensor y = util::linear_nobias(x, weight);  // batch-1 steps: a bandwidth-bound gemv (util/gemv.h)
  if (lora_A) y = y + lora_B->forward(lora_A->forward(x)) * lora_scaling;
  if (ttt_adapter) {
    MT_CHECK(st, "a linear layer with a TTT adapter was run without the adapter's state");
    y = y + ttt_adapter->forward(x, *st, probes);
  }
  return y;
}

void LinearImpl::enable_lora(int64_t rank, double scaling) {
  MT_CHECK(rank >= 1, "lora.rank must be >= 1");
  auto opt = weight.options();
  lora_A = register_module("lora_A", std::make_shared<LinearImpl>(in_features(), rank));
  lora_B = register_module("lora_B", std::make_shared<LinearImpl>(rank, out_features()));
  lora_A->weight.set_data(lora_A->weight.to(opt));
  lora_B->weight.set_data(lora_B->weight.to(opt));
  lora_scaling = scaling;
  init_lora(0);
}

void LinearImpl::init_lora(uint64_t seed) const {
  if (!lora_A) return;
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  kaiming_uniform_fan_in(lora_A->weight, gen);
  lora_B->weight.zero_();
}

void LinearImpl::enable_ttt_adapter(const ttt::TTTConfig& inner, double scale, int64_t slot) {
  ttt_adapter = register_module("ttt_adapter", std::make_shared<TTTAdapterImpl>(in_features(), out_features(), inner, scale));
  adapter_slot = slot;
}

void LinearImpl::init_ttt_adapter(uint64_t seed) const {
  if (ttt_adapter) ttt_adapter->init(seed);
}

TTTAdapterImpl::TTTAdapterImpl(int64_t in, int64_t out, const ttt::TTTConfig& inner, double s) : scale(s) {
  MT_CHECK(inner.num_attention_heads == 1 && inner.hidden_size >= 2, "TTT adapter: expects a one-head inner layer");
  down = register_module("down", std::make_shared<LinearImpl>(in, inner.hidden_size));
  up = register_module("up", std::make_shared<LinearImpl>(inner.hidden_size, out));
  layer = std::make_shared<ttt::TTTLayer>(ttt::TTTLayer::init(inner, 0));
  auto holder = register_module("layer", std::make_shared<torch::nn::Module>("TTTLayer"));
  for (const auto& [name, t] : layer->named_parameters()) register_param_tree(*holder, name, t);
  init(0);
}

void TTTAdapterImpl::init(uint64_t seed) const {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  kaiming_uniform_fan_in(down->weight, gen);
  up->weight.zero_();
  ttt::TTTLayer fresh = ttt::TTTLayer::init(layer->config(), seed + 1);
  for (const auto& [name, t] : fresh.named_parameters()) layer->param(name).copy_(t);
}

at::Tensor TTTAdapterImpl::forward(const at::Tensor& x, ttt::TTTState& st, ttt::TTTProbes* probes) const {
  at::Tensor z = util::linear_nobias(x, down->weight);
  return util::linear_nobias(layer->forward(z, st, probes), up->weight) * scale;
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
