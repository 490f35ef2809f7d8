#pragma once
// Linear layers of the Moshi LM and the adapters that can sit on them:
//  - LoRA (moshi-finetune's LoRALinear): y = W x + scaling · B(A x), A [r, in] kaiming-uniform,
//    B [out, r] zero, tensors `<name>.lora_A.weight` / `<name>.lora_B.weight`.
//  - TTT adapter (Path B, "TTT as LoRA"): y = W x + scale · U(TTT(D x)), where D [r, in] is a
//    down-projection, TTT a one-head TTT-Linear (or -MLP) layer of width r whose inner weights are a
//    per-stream state, and U [out, r] a zero-initialised up-projection (so a new adapter changes
//    nothing). Tensors `<name>.ttt_adapter.{down,up}.weight` and `<name>.ttt_adapter.layer.*`.
//    Its parameter count is LoRA's of rank r plus the small r×r TTT layer (see adapter_parameters()).
#include <torch/nn/module.h>

#include <memory>

#include "ttt/ttt_layer.h"

namespace mt::lm {

struct TTTAdapterImpl;

// A parameter-holding module: Linear without bias, named "<prefix>.weight".
struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out);
  // Plain (and LoRA) forward; throws if a TTT adapter is attached (that needs its state).
  at::Tensor forward(const at::Tensor& x) const;
  // With a TTT adapter: its state (required) and optional probes.
  at::Tensor forward(const at::Tensor& x, ttt::TTTState* adapter_state, ttt::TTTProbes* probes = nullptr) const;
  void enable_lora(int64_t rank, double scaling);
  void enable_ttt_adapter(const ttt::TTTConfig& inner, double scale, int64_t slot);
  // Reference initial values of the LoRA / adapter tensors, seeded.
  void init_lora(uint64_t seed) const;
  void init_ttt_adapter(uint64_t seed) const;
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }

  at::Tensor weight;
  std::shared_ptr<LinearImpl> lora_A, lora_B;
  double lora_scaling = 0;
  std::shared_ptr<TTTAdapterImpl> ttt_adapter;
  int64_t adapter_slot = -1;  // index of this adapter's state in its layer's LayerTTTState::adapters
};
TORCH_MODULE(Linear);

struct TTTAdapterImpl : torch::nn::Module {
  TTTAdapterImpl(int64_t in, int64_t out, const ttt::TTTConfig& inner, double scale);
  at::Tensor forward(const at::Tensor& x, ttt::TTTState& st, ttt::TTTProbes* probes = nullptr) const;
  void init(uint64_t seed) const;
  std::shared_ptr<LinearImpl> down, up;
  std::shared_ptr<ttt::TTTLayer> layer;  // parameters registered under "layer."
  double scale;
};

// Parameters of a TTT adapter of width r on an in→out linear, and of a LoRA of rank r on it.
int64_t adapter_parameters(int64_t in, int64_t out, const ttt::TTTConfig& inner);
inline int64_t lora_parameters(int64_t in, int64_t out, int64_t rank) { return rank * (in + out); }

// Registers `t` under a dotted name ("q_proj.weight") in `root`, creating plain submodules on the way,
// so that parameters owned elsewhere appear in the module tree under their reference names.
void register_param_tree(torch::nn::Module& root, const std::string& dotted, const at::Tensor& t);

// PyTorch's kaiming_uniform_(a=√5) on a [out, in] weight: U(-1/√in, 1/√in).
void kaiming_uniform_fan_in(const at::Tensor& w, at::Generator& gen);

}  // namespace mt::lm
