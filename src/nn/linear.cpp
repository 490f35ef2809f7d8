#include "nn/linear.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/DefaultDtype.h>

#include <cmath>

#include "util/error.h"
#include "util/gemv.h"
#include "util/gemv_q8.h"

namespace mt::nn {

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

namespace {
// y + s·B(A x), with B's product accumulated into y by the GEMM itself (addmm's beta = 1, alpha = s):
// no pass over y for the scale and the sum, forward or backward (the output head's y is [T, 32000]).
at::Tensor add_lora(const at::Tensor& y, const at::Tensor& x, const LinearImpl& a, const LinearImpl& b, double s) {
  const at::Tensor h = a.forward(x);
  const int64_t r = h.size(-1), out = y.size(-1);
  return at::addmm(y.reshape({-1, out}), h.reshape({-1, r}), b.weight.t(), 1.0, s).view(y.sizes());
}
}  // namespace

namespace {
// W x: batch-1 steps are a bandwidth-bound gemv (util/gemv.h, util/gemv_q8.h).
at::Tensor base_product(const at::Tensor& x, const LinearImpl& l) {
  return l.is_q8() ? util::linear_q8(x, l.weight, l.weight_scb) : util::linear_nobias(x, l.weight);
}
}  // namespace

at::Tensor LinearImpl::forward(const at::Tensor& x) const {
  MT_CHECK(!addon, "a linear layer with an add-on (", addon ? addon->unit() : "", ") was run without its state");
  at::Tensor y = base_product(x, *this);
  return lora_A ? add_lora(y, x, *lora_A, *lora_B, lora_scaling) : y;
}

at::Tensor LinearImpl::forward(const at::Tensor& x, const StepContext& c) const {
  if (!addon) return forward(x);
  at::Tensor y = base_product(x, *this);
  if (lora_A) y = add_lora(y, x, *lora_A, *lora_B, lora_scaling);
  return y + addon->forward(x, c);
}

void LinearImpl::enable_lora(int64_t rank, double scaling) {
  MT_CHECK(rank >= 1, "lora.rank must be >= 1");
  // Adapters are float: over a q8 weight they take the default dtype.
  auto opt = is_q8() ? weight.options().dtype(c10::get_default_dtype()) : weight.options();
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

void LinearImpl::attach(const std::string& name, std::shared_ptr<LinearAddon> a) {
  MT_CHECK(!addon, "linear layer: '", name, "' attached where '", addon ? addon->unit() : "", "' already is");
  addon = register_module(name, std::move(a));
}

void LinearImpl::make_q8() {
  if (is_q8()) return;
  at::NoGradGuard ng;
  weight.set_requires_grad(false);
  weight.set_data(at::zeros(weight.sizes(), weight.options().dtype(at::kChar)));
  weight_scb = register_parameter("weight_scb", at::zeros({weight.size(0)}, weight.options().dtype(at::kFloat)),
                                  /*requires_grad=*/false);
}

void LinearImpl::assign_q8_from(const at::Tensor& w) {
  MT_CHECK(is_q8(), "assign_q8_from: the linear is not q8");
  MT_CHECK(w.sizes() == weight.sizes(), "assign_q8_from: expected shape ", shape_str(weight.sizes().vec()), ", got ",
           shape_str(w.sizes().vec()));
  at::NoGradGuard ng;
  const util::Q8Weight q = util::quantize_q8(w);
  weight.copy_(q.cb);
  weight_scb.copy_(q.scb);
}

at::Tensor LinearImpl::float_weight(at::ScalarType dtype) const {
  return is_q8() ? util::dequantize_q8(weight, weight_scb, dtype) : weight.to(dtype);
}

void LinearImpl::to(torch::Dtype dtype, bool non_blocking) {
  if (!is_q8()) return torch::nn::Module::to(dtype, non_blocking);
  for (const auto& c : children()) c->to(dtype, non_blocking);
}

void LinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  if (!is_q8()) return torch::nn::Module::to(device, dtype, non_blocking);
  for (const auto& c : children()) c->to(device, dtype, non_blocking);
  weight.set_data(weight.to(device, non_blocking));
  weight_scb.set_data(weight_scb.to(device, non_blocking));
}

}  // namespace mt::nn
