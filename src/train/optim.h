#pragma once
// The optimisation step of moshi-finetune, per parameter group: AdamW (PyTorch's torch.optim.AdamW
// semantics, decoupled weight decay) with float32 master weights and float32 state for parameters
// held in a lower precision, PyTorch's OneCycleLR (cosine, div_factor 25, final_div_factor 1e4,
// two phases, cycle_momentum: beta1 cycles 0.95 -> 0.85 -> 0.95, overriding the configured beta1),
// and clip_grad_norm_ over every trainable parameter.
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mt::train {

struct ParamGroup {
  std::string name;                                        // "base", "ttt", "alpha", ...
  std::vector<std::pair<std::string, at::Tensor>> params;  // (checkpoint name, parameter) - the model's tensors
  double max_lr = 1e-4;                                    // the group's peak lr (OneCycle max_lr)
  double weight_decay = 0.1;
};

// fused: PyTorch's fused AdamW kernel (torch.optim.AdamW(fused=True)): one pass over each tensor
// instead of seven, the same formula, results within rounding of the single-tensor path. false: the
// single-tensor path op for op, bit-identical to torch.optim.AdamW(foreach=False).
enum class AdamWImpl { kFused, kSingleTensor };

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  AdamWImpl impl = AdamWImpl::kFused;
};

// PyTorch's OneCycleLR for one group: lr and (with cycle_momentum) beta1 at optimizer step `step`
// (0-based: the values the step-th optimizer.step() uses).
struct OneCycle {
  double max_lr = 1e-4;
  int64_t total_steps = 100;
  double pct_start = 0.3;
  double div_factor = 25.0, final_div_factor = 1e4;
  bool cycle_momentum = true;
  double base_momentum = 0.85, max_momentum = 0.95;
  double lr_at(int64_t step) const;
  double momentum_at(int64_t step) const;  // beta1
};

class AdamW {
 public:
  // Every parameter must have requires_grad; a name may appear in one group only.
  AdamW(std::vector<ParamGroup> groups, AdamWConfig cfg = {});
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Current hyper-parameters of group g (set by the schedule before each step).
  void set_lr(size_t g, double lr);
  void set_beta1(size_t g, double beta1);
  double lr(size_t g) const;
  double beta1(size_t g) const;
  // One AdamW step from each parameter's .grad() (any dtype; accumulated in float32 at least):
  //   p ← p·(1 − lr·wd);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²;
  //   p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)
  // computed on the float32 (or float64) master copy, then written back to the parameter's dtype.
  // Parameters without a gradient are skipped (as PyTorch does).
  void step();
  void zero_grad();
  int64_t steps_taken() const { return step_; }
  // Everything needed to continue bit-identically: step count, per-group lr/beta1, per-parameter
  // exp_avg, exp_avg_sq and master weights, named "<param name>.exp_avg" etc. plus "step".
  std::map<std::string, at::Tensor> state_dict() const;
  // Strict: throws mt::Error naming a missing, extra or mis-shaped entry.
  void load_state_dict(const std::map<std::string, at::Tensor>& state);

 private:
  std::vector<ParamGroup> groups_;
  AdamWConfig cfg_;
  std::vector<double> lr_, beta1_;
  int64_t step_ = 0;
  struct Slot {
    at::Tensor master, exp_avg, exp_avg_sq;  // master undefined when the parameter is fp32/fp64 itself
  };
  std::vector<std::vector<Slot>> slots_;
  void step_single_tensor(size_t g, int64_t t);
  bool step_fused(size_t g, int64_t t);  // false: the group does not fit the fused kernel
};

// Total 2-norm of the gradients (float64 accumulation, as one vector) before clipping; scales every
// gradient by max_norm / (norm + 1e-6) when the norm exceeds max_norm (torch.nn.utils.clip_grad_norm_).
// max_norm <= 0: no clipping, the norm is still returned. A non-finite norm is returned as is and the
// gradients are left untouched.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

// The same over parameter groups (an optimizer's), with each group's own norm in *group_norms: every
// gradient's norm is taken once and read back with one host sync.
double clip_grad_norm(const std::vector<std::vector<at::Tensor>>& groups, double max_norm,
                      std::vector<double>* group_norms);

// Gradient norm of a subset (for per-group monitoring); 0 when no gradient.
double grad_norm(const std::vector<at::Tensor>& params);

}  // namespace mt::train
