// AdamW with float32 master weights, PyTorch's OneCycleLR and clip_grad_norm_ (see optim.h).
//
// The fused path is PyTorch's own fused kernel (torch.optim.AdamW(fused=True)). The single-tensor
// path mirrors torch.optim.AdamW(foreach=False) op for op - the same ATen kernels with the same
// scalar arguments - so an fp32 run reproduces PyTorch to the last bits wherever the inputs agree. Deliberate
// differences from PyTorch, all documented at their place:
//  - one step count t for every parameter (the optimizer's), where PyTorch counts per parameter; they
//    differ only for a parameter that had no gradient on some step;
//  - states are created eagerly (zeros) instead of on the first step, so state_dict() always has
//    every entry and a fresh optimizer's state loads into another fresh one;
//  - clip_grad_norm leaves the gradients alone when the norm is not finite (PyTorch scales them by
//    NaN / 0) and sums the per-parameter norms in float64 (PyTorch: in the gradient dtype).
#include "train/optim.h"

#include <ATen/core/grad_mode.h>

#include "util/error.h"

#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <set>

namespace mt::train {

namespace {

bool low_precision(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// OneCycleLR._annealing_cos, term for term (so the doubles agree with Python's bit for bit).
double cos_anneal(double start, double end, double pct) {
  double cos_out = std::cos(std::numbers::pi * pct) + 1.0;
  return end + (start - end) / 2.0 * cos_out;
}

// Which value OneCycleLR.get_lr computes at `step`: the two-phase schedule walk, with each phase's
// (start, end) pair given by the caller (lr or momentum).
double one_cycle_value(const OneCycle& s, int64_t step, double phase1_start, double phase1_end, double phase2_end,
                       const char* what) {
  MT_CHECK(s.total_steps > 0, "OneCycle: total_steps must be positive, got ", s.total_steps);
  MT_CHECK(s.pct_start >= 0.0 && s.pct_start <= 1.0, "OneCycle: pct_start must lie in [0, 1], got ", s.pct_start);
  // PyTorch raises past total_steps; step == total_steps is still computed (it extrapolates nothing:
  // the last phase simply runs to pct > 1).
  MT_CHECK(step >= 0 && step <= s.total_steps, "OneCycle: ", what, " asked for step ", step,
           " outside [0, total_steps=", s.total_steps, "]");
  struct Phase {
    double end_step, start, end;
  };
  // end_step as PyTorch computes it: float(pct_start * total_steps) - 1, and total_steps - 1.
  const Phase phases[2] = {
      {s.pct_start * static_cast<double>(s.total_steps) - 1.0, phase1_start, phase1_end},
      {static_cast<double>(s.total_steps - 1), phase1_end, phase2_end},
  };
  const double x = static_cast<double>(step);
  double start_step = 0.0;
  for (int i = 0; i < 2; ++i) {
    const Phase& p = phases[i];
    if (x <= p.end_step || i == 1) {
      // A phase of zero length (e.g. pct_start * total_steps == 1 at step 0) is a division by zero
      // in PyTorch too (ZeroDivisionError); refuse it rather than return NaN.
      MT_CHECK(p.end_step != start_step, "OneCycle: phase ", i + 1, " has zero length at step ", step,
               " (pct_start=", s.pct_start, ", total_steps=", s.total_steps,
               "); PyTorch's OneCycleLR divides by zero here too - change pct_start or total_steps");
      double pct = (x - start_step) / (p.end_step - start_step);
      return cos_anneal(p.start, p.end, pct);
    }
    start_step = p.end_step;
  }
  fail("OneCycle: unreachable");
}

// Every gradient's own 2-norm as a float64 tensor, skipping parameters without one. The per-tensor
// reduction runs in the gradient's precision but at least float32 (half-precision gradients are
// upcast inside the kernel, without a copy); the sum over parameters is done in float64.
std::vector<at::Tensor> grad_norms(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> norms;
  for (const auto& p : params) {
    if (!p.defined()) continue;
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    MT_CHECK(!g.is_sparse(), "clip_grad_norm: sparse gradients are not supported (shape ", shape_str(p.sizes().vec()),
             ")");
    auto dt = low_precision(g.scalar_type()) ? at::kFloat : g.scalar_type();
    norms.push_back(at::linalg_vector_norm(g, 2, at::OptionalIntArrayRef{}, false, dt).to(at::kDouble));
  }
  return norms;
}

// The 2-norm of a set of per-parameter norms, as a float64 tensor on the first one's device (no sync).
at::Tensor norm_of(std::vector<at::Tensor> norms, const at::TensorOptions& empty) {
  if (norms.empty()) return at::zeros({}, empty);
  for (auto& n : norms) n = n.to(norms[0].device());
  return at::linalg_vector_norm(at::stack(norms), 2);
}

}  // namespace

// ---- OneCycle ------------------------------------------------------------------------------------

double OneCycle::lr_at(int64_t step) const {
  MT_CHECK(div_factor > 0.0 && final_div_factor > 0.0, "OneCycle: div_factor (", div_factor, ") and final_div_factor (",
           final_div_factor, ") must be positive");
  const double initial_lr = max_lr / div_factor;
  const double min_lr = initial_lr / final_div_factor;
  return one_cycle_value(*this, step, initial_lr, max_lr, min_lr, "lr");
}

// Without cycle_momentum the schedule has no opinion on beta1: this returns NaN, which set_beta1
// rejects, so a caller that forgets to check cycle_momentum fails loudly instead of silently using
// a made-up momentum. Keep the configured AdamWConfig::beta1 in that case.
double OneCycle::momentum_at(int64_t step) const {
  if (!cycle_momentum) return std::numeric_limits<double>::quiet_NaN();
  return one_cycle_value(*this, step, max_momentum, base_momentum, max_momentum, "momentum");
}

// ---- AdamW ---------------------------------------------------------------------------------------

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWConfig cfg) : groups_(std::move(groups)), cfg_(cfg) {
  MT_CHECK(cfg_.beta1 >= 0.0 && cfg_.beta1 < 1.0, "AdamW: beta1 must lie in [0, 1), got ", cfg_.beta1);
  MT_CHECK(cfg_.beta2 >= 0.0 && cfg_.beta2 < 1.0, "AdamW: beta2 must lie in [0, 1), got ", cfg_.beta2);
  MT_CHECK(cfg_.eps >= 0.0, "AdamW: eps must be >= 0, got ", cfg_.eps);
  std::set<std::string> names;
  std::set<const void*> impls;  // the same tensor under two names would be stepped twice
  at::NoGradGuard no_grad;
  slots_.resize(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& grp = groups_[g];
    MT_CHECK(std::isfinite(grp.max_lr) && grp.max_lr >= 0.0, "AdamW: group ", g, " (", grp.name,
             "): max_lr must be finite and >= 0, got ", grp.max_lr);
    MT_CHECK(std::isfinite(grp.weight_decay) && grp.weight_decay >= 0.0, "AdamW: group ", g, " (", grp.name,
             "): weight_decay must be finite and >= 0, got ", grp.weight_decay);
    // Until a schedule sets them: the group's peak lr and the configured beta1.
    lr_.push_back(grp.max_lr);
    beta1_.push_back(cfg_.beta1);
    for (const auto& [name, p] : grp.params) {
      MT_CHECK(p.defined(), "AdamW: parameter '", name, "' (group ", grp.name, ") is undefined");
      MT_CHECK(p.requires_grad(), "AdamW: parameter '", name, "' (group ", grp.name, ") does not require grad");
      MT_CHECK(at::isFloatingType(p.scalar_type()), "AdamW: parameter '", name, "' has dtype ",
               c10::toString(p.scalar_type()), "; only floating-point parameters are supported");
      MT_CHECK(names.insert(name).second, "AdamW: parameter name '", name,
               "' appears more than once (a parameter may belong to one group only)");
      MT_CHECK(impls.insert(p.unsafeGetTensorImpl()).second, "AdamW: parameter '", name,
               "' is the same tensor as another parameter");
      Slot s;
      // States in float32 for half-precision parameters (with a float32 master copy that carries the
      // bits the parameter's dtype cannot), otherwise in the parameter's own dtype.
      if (low_precision(p.scalar_type())) s.master = p.detach().to(at::kFloat, false, true);
      const at::Tensor& like = s.master.defined() ? s.master : p;
      s.exp_avg = at::zeros_like(like.detach(), at::MemoryFormat::Contiguous);
      s.exp_avg_sq = at::zeros_like(like.detach(), at::MemoryFormat::Contiguous);
      slots_[g].push_back(std::move(s));
    }
  }
}

void AdamW::set_lr(size_t g, double lr) {
  MT_CHECK(g < groups_.size(), "AdamW::set_lr: group ", g, " out of range (", groups_.size(), " groups)");
  MT_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW::set_lr: group ", g, " (", groups_[g].name,
           "): lr must be finite and >= 0, got ", lr);
  lr_[g] = lr;
}

void AdamW::set_beta1(size_t g, double beta1) {
  MT_CHECK(g < groups_.size(), "AdamW::set_beta1: group ", g, " out of range (", groups_.size(), " groups)");
  MT_CHECK(beta1 >= 0.0 && beta1 < 1.0, "AdamW::set_beta1: group ", g, " (", groups_[g].name,
           "): beta1 must lie in [0, 1), got ", beta1);
  beta1_[g] = beta1;
}

double AdamW::lr(size_t g) const {
  MT_CHECK(g < groups_.size(), "AdamW::lr: group ", g, " out of range (", groups_.size(), " groups)");
  return lr_[g];
}

double AdamW::beta1(size_t g) const {
  MT_CHECK(g < groups_.size(), "AdamW::beta1: group ", g, " out of range (", groups_.size(), " groups)");
  return beta1_[g];
}

void AdamW::step() {
  // Check every gradient before touching anything, so that a bad one leaves no half-done step.
  for (const auto& grp : groups_) {
    for (const auto& [name, p] : grp.params) {
      const at::Tensor& gp = p.grad();
      if (!gp.defined()) continue;
      MT_CHECK(!gp.is_sparse(), "AdamW: parameter '", name, "' has a sparse gradient (unsupported)");
      MT_CHECK(gp.sizes() == p.sizes(), "AdamW: parameter '", name, "' has shape ", shape_str(p.sizes().vec()),
               " but its gradient ", shape_str(gp.sizes().vec()));
    }
  }
  at::NoGradGuard no_grad;
  // Until the first step the parameters are the source of truth: weights loaded into the model after
  // the optimizer was built (or a step-0 state loaded) must not be overwritten by a stale master.
  if (step_ == 0) {
    for (size_t g = 0; g < groups_.size(); ++g)
      for (size_t i = 0; i < slots_[g].size(); ++i)
        if (slots_[g][i].master.defined()) slots_[g][i].master.copy_(groups_[g].params[i].second.detach());
  }
  const int64_t t = ++step_;
  for (size_t g = 0; g < groups_.size(); ++g)
    if (cfg_.impl != AdamWImpl::kFused || !step_fused(g, t)) step_single_tensor(g, t);
}

void AdamW::step_single_tensor(size_t g, int64_t t) {
  const double beta2 = cfg_.beta2, eps = cfg_.eps;
  const double lr = lr_[g], beta1 = beta1_[g], wd = groups_[g].weight_decay;
  // Python floats in PyTorch: the step count enters as a float, the powers are taken in double.
  // beta1 is the *current* one (OneCycle changes it every step), as in PyTorch.
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(t));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(t));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);  // Python's ** 0.5
  for (size_t i = 0; i < slots_[g].size(); ++i) {
    const auto& [name, p] = groups_[g].params[i];
    Slot& s = slots_[g][i];
    const at::Tensor& gp = p.grad();
    if (!gp.defined()) continue;  // as PyTorch: no gradient, no update (not even weight decay)
    at::Tensor w = s.master.defined() ? s.master : p.detach();
    at::Tensor grad = gp.detach();
    if (grad.scalar_type() != w.scalar_type()) grad = grad.to(w.scalar_type());
    // The same op sequence as torch.optim.adam._single_tensor_adam with decoupled weight decay.
    if (wd != 0.0) w.mul_(1.0 - lr * wd);
    s.exp_avg.lerp_(grad, 1.0 - beta1);
    s.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1.0 - beta2);
    at::Tensor denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
    w.addcdiv_(s.exp_avg, denom, -step_size);
    if (s.master.defined()) p.detach().copy_(s.master);
  }
}

// The group's tensors in one call of PyTorch's fused kernel (CPU and CUDA): it reads each of weight,
// gradient and both moments once and writes three, where the single-tensor path makes seven passes.
bool AdamW::step_fused(size_t g, int64_t t) {
  std::vector<at::Tensor> ws, grads, m, v, steps;
  std::vector<size_t> idx;
  at::Tensor step;  // the kernel reads the step count from a tensor on the weights' device
  for (size_t i = 0; i < slots_[g].size(); ++i) {
    const at::Tensor& p = groups_[g].params[i].second;
    Slot& s = slots_[g][i];
    if (!p.grad().defined()) continue;
    at::Tensor w = s.master.defined() ? s.master : p.detach();
    if (!ws.empty() && (w.device() != ws[0].device() || w.scalar_type() != ws[0].scalar_type())) return false;
    if (!w.is_contiguous() || w.scalar_type() == at::kDouble) return false;
    at::Tensor grad = p.grad().detach();
    if (grad.scalar_type() != w.scalar_type()) grad = grad.to(w.scalar_type());
    if (!step.defined()) step = at::full({}, static_cast<double>(t), w.options().dtype(at::kFloat));
    ws.push_back(w);
    grads.push_back(grad.contiguous());
    m.push_back(s.exp_avg);
    v.push_back(s.exp_avg_sq);
    steps.push_back(step);
    idx.push_back(i);
  }
  if (ws.empty()) return true;
  at::_fused_adamw_(ws, grads, m, v, {}, steps, lr_[g], beta1_[g], cfg_.beta2, groups_[g].weight_decay, cfg_.eps,
                    /*amsgrad=*/false, /*maximize=*/false);
  for (size_t i : idx)
    if (slots_[g][i].master.defined()) groups_[g].params[i].second.detach().copy_(slots_[g][i].master);
  return true;
}

void AdamW::zero_grad() {
  // set_to_none, PyTorch's default: the next step skips parameters that receive no gradient.
  for (auto& grp : groups_)
    for (auto& [name, p] : grp.params)
      if (p.grad().defined()) p.mutable_grad().reset();
}

// The tensors are the live state (no copies, which would double the optimizer's memory): save or
// clone them before the next step(). Before the first step the master is taken from the parameter,
// which step() will do too.
std::map<std::string, at::Tensor> AdamW::state_dict() const {
  std::map<std::string, at::Tensor> out;
  out["step"] = at::scalar_tensor(step_, at::kLong);
  for (size_t g = 0; g < groups_.size(); ++g) {
    out[str("group.", g, ".lr")] = at::scalar_tensor(lr_[g], at::kDouble);
    out[str("group.", g, ".beta1")] = at::scalar_tensor(beta1_[g], at::kDouble);
    for (size_t i = 0; i < slots_[g].size(); ++i) {
      const auto& [name, p] = groups_[g].params[i];
      const Slot& s = slots_[g][i];
      out[name + ".exp_avg"] = s.exp_avg;
      out[name + ".exp_avg_sq"] = s.exp_avg_sq;
      if (s.master.defined()) out[name + ".master"] = step_ == 0 ? p.detach().to(at::kFloat, false, true) : s.master;
    }
  }
  return out;
}

void AdamW::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  // Validate everything first so that a bad file leaves the optimizer untouched.
  std::set<std::string> expected;
  auto get = [&](const std::string& key) -> const at::Tensor& {
    expected.insert(key);
    auto it = state.find(key);
    MT_CHECK(it != state.end(), "AdamW::load_state_dict: missing entry '", key, "'");
    MT_CHECK(it->second.defined(), "AdamW::load_state_dict: entry '", key, "' is undefined");
    return it->second;
  };
  auto scalar = [&](const std::string& key) -> const at::Tensor& {
    const at::Tensor& t = get(key);
    MT_CHECK(t.numel() == 1, "AdamW::load_state_dict: entry '", key, "' must hold one value, got shape ",
             shape_str(t.sizes().vec()));
    return t;
  };
  auto like = [&](const std::string& key, const at::Tensor& ref) -> const at::Tensor& {
    const at::Tensor& t = get(key);
    MT_CHECK(t.sizes() == ref.sizes(), "AdamW::load_state_dict: entry '", key, "' has shape ",
             shape_str(t.sizes().vec()), ", expected ", shape_str(ref.sizes().vec()));
    MT_CHECK(at::isFloatingType(t.scalar_type()), "AdamW::load_state_dict: entry '", key, "' has dtype ",
             c10::toString(t.scalar_type()), ", expected a floating-point tensor");
    return t;
  };

  const at::Tensor& step_t = scalar("step");
  MT_CHECK(at::isIntegralType(step_t.scalar_type(), false), "AdamW::load_state_dict: entry 'step' has dtype ",
           c10::toString(step_t.scalar_type()), ", expected an integer");
  const int64_t step = step_t.item<int64_t>();
  MT_CHECK(step >= 0, "AdamW::load_state_dict: entry 'step' is negative (", step, ")");
  std::vector<double> lrs, beta1s;
  for (size_t g = 0; g < groups_.size(); ++g) {
    lrs.push_back(scalar(str("group.", g, ".lr")).item<double>());
    beta1s.push_back(scalar(str("group.", g, ".beta1")).item<double>());
    MT_CHECK(std::isfinite(lrs.back()) && lrs.back() >= 0.0, "AdamW::load_state_dict: entry 'group.", g, ".lr' is ",
             lrs.back());
    MT_CHECK(beta1s.back() >= 0.0 && beta1s.back() < 1.0, "AdamW::load_state_dict: entry 'group.", g, ".beta1' is ",
             beta1s.back(), ", outside [0, 1)");
  }
  std::vector<std::vector<std::array<at::Tensor, 3>>> src(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < slots_[g].size(); ++i) {
      const std::string& name = groups_[g].params[i].first;
      const Slot& s = slots_[g][i];
      src[g].push_back({like(name + ".exp_avg", s.exp_avg), like(name + ".exp_avg_sq", s.exp_avg_sq),
                        s.master.defined() ? like(name + ".master", s.master) : at::Tensor()});
    }
  }
  for (const auto& [key, t] : state)
    MT_CHECK(expected.count(key), "AdamW::load_state_dict: unexpected entry '", key,
             "' (no such parameter or field in this optimizer)");

  at::NoGradGuard no_grad;
  step_ = step;
  lr_ = lrs;
  beta1_ = beta1s;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i = 0; i < slots_[g].size(); ++i) {
      Slot& s = slots_[g][i];
      // copy_ converts dtype and device; the state keeps its own storage.
      s.exp_avg.copy_(src[g][i][0]);
      s.exp_avg_sq.copy_(src[g][i][1]);
      if (s.master.defined()) s.master.copy_(src[g][i][2]);
    }
  }
}

// ---- gradient norms ------------------------------------------------------------------------------

namespace {
// PyTorch multiplies by min(coef, 1) unconditionally; multiplying by 1 changes nothing, so skip it.
void scale_grads(const std::vector<at::Tensor>& params, double norm, double max_norm) {
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return;
  for (const auto& p : params)
    if (p.defined() && p.grad().defined()) p.grad().mul_(coef);
}
}  // namespace

double clip_grad_norm(const std::vector<std::vector<at::Tensor>>& groups, double max_norm,
                      std::vector<double>* group_norms) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> per_group;  // float64, each on its group's first gradient's device
  for (const auto& g : groups) per_group.push_back(norm_of(grad_norms(g), at::TensorOptions().dtype(at::kDouble)));
  if (per_group.empty()) return 0.0;
  for (auto& n : per_group) n = n.to(per_group[0].device());
  const at::Tensor host = at::stack(per_group).cpu();  // the step's one host sync
  const double* h = host.const_data_ptr<double>();
  if (group_norms) group_norms->clear();
  double total = 0.0;
  for (size_t g = 0; g < groups.size(); ++g) {
    total = std::hypot(total, h[g]);  // one group: exactly its norm (hypot(0, x) == |x|)
    if (group_norms) group_norms->push_back(h[g]);
  }
  if (!std::isfinite(total) || max_norm <= 0.0) return total;
  for (const auto& g : groups) scale_grads(g, total, max_norm);
  return total;
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  return clip_grad_norm(std::vector<std::vector<at::Tensor>>{params}, max_norm, nullptr);
}

double grad_norm(const std::vector<at::Tensor>& params) {
  return clip_grad_norm(std::vector<std::vector<at::Tensor>>{params}, 0.0, nullptr);
}

}  // namespace mt::train
