#pragma once
// Linear layers (no bias, as every linear of Moshi) and what can sit on them:
//  - LoRA (moshi-finetune's LoRALinear): y = W x + scaling · B(A x), A [r, in] kaiming-uniform,
//    B [out, r] zero, tensors `<name>.lora_A.weight` / `<name>.lora_B.weight`;
//  - one LinearAddon (nn/addon.h) with a per-stream state, whose term is added to W x (lm/'s TTT
//    adapter), registered under the name it is attached with.
#include <torch/nn/module.h>

#include <memory>
#include <string>

#include "nn/addon.h"

namespace mt::nn {

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out);
  // Plain (and LoRA) forward; throws if an add-on is attached (that needs its state).
  at::Tensor forward(const at::Tensor& x) const;
  // With the step context that holds the add-on's state (when there is an add-on).
  at::Tensor forward(const at::Tensor& x, const StepContext& c) const;
  void enable_lora(int64_t rank, double scaling);
  // Registers `addon` under `name` (its tensors become `<linear>.<name>.*`); one add-on per linear.
  void attach(const std::string& name, std::shared_ptr<LinearAddon> addon);
  // Reference initial values of the LoRA tensors, seeded.
  void init_lora(uint64_t seed) const;
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }

  // Switches to the q8 format: `weight` becomes int8 zeros (same device), `weight_scb` float32 zeros
  // [out] is registered. For a whole model, before its weights are loaded.
  void make_q8();
  bool is_q8() const { return weight_scb.defined(); }
  // Sets the q8 tensors from a float weight by Kyutai's rule (util::quantize_q8).
  void assign_q8_from(const at::Tensor& w);
  // The weight as `dtype` floats (dequantised when q8).
  at::Tensor float_weight(at::ScalarType dtype) const;

  // A dtype change leaves a q8 linear's int8 codes and float32 scales as they are (only LoRA and
  // add-ons follow it): the format fixes those dtypes.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;

  at::Tensor weight;      // weight [out, in] (int8 when q8)
  at::Tensor weight_scb;  // q8 only: float32 [out], W ≈ weight · weight_scb / 127 per row
  std::shared_ptr<LinearImpl> lora_A, lora_B;
  double lora_scaling = 0;
  std::shared_ptr<LinearAddon> addon;
};
TORCH_MODULE(Linear);

inline int64_t lora_parameters(int64_t in, int64_t out, int64_t rank) { return rank * (in + out); }

// Registers `t` under a dotted name ("q_proj.weight") in `root`, creating plain submodules on the way,
// so that parameters owned elsewhere appear in the module tree under their reference names.
void register_param_tree(torch::nn::Module& root, const std::string& dotted, const at::Tensor& t);

// PyTorch's kaiming_uniform_(a=√5) on a [out, in] weight: U(-1/√in, 1/√in).
void kaiming_uniform_fan_in(const at::Tensor& w, at::Generator& gen);

}  // namespace mt::nn
