#pragma once
// Kyutai's released LM checkpoint layout (model.safetensors of kyutai/moshiko-pytorch-bf16, spec
// moshi.md 1.9): the parameters of a config under the release's names, the attention fused per layer
// (`self_attn.in_proj_weight`, `self_attn.out_proj.weight`; the depformer's per-step matrices stacked
// along dim 0), one dtype throughout, sorted by name (the order safetensors' own writer gives tensors
// of one dtype). load_lm splits the fused tensors again.
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "lm/config.h"

namespace mt::lm {

// The reference's initial value of the base-model parameter `name` (the rule LMModel::init_weights
// applies; defined beside it): norms 1 (their biases 0), layer scales, depformer layers uniform
// +-1/sqrt(fan_in), every other weight trunc-normal 1/sqrt(fan_in) clipped at 3 sigma. Fills the CPU
// tensor p, of any float dtype, in place. Fused attention names follow the rules of their slices.
void init_base_param(const std::string& name, at::Tensor p, at::Generator& gen, const LMConfig& cfg);

// Names, shapes and dtype of every tensor, from the config alone (no weights are allocated).
std::vector<io::TensorSpec> release_tensor_specs(const LMConfig& cfg, at::ScalarType dtype);

// Seeded random values for one of those tensors by the reference's initialisation rules
// (init_base_param), from a generator of its own seeded with (seed, name): each tensor is the same
// whatever the others. They are not the values LMModel::init_weights(seed) gives (one generator run
// through the whole model in module order).
at::Tensor random_release_tensor(const io::TensorSpec& spec, uint64_t seed, const LMConfig& cfg);

// Writes such a checkpoint with io::StreamingWriter: one tensor in memory at a time (a 7B in bf16 holds
// at most its largest tensor, 0.26 GB, in float32 and once cast), never the model. progress(done, total).
void write_random_release(const std::string& path, const LMConfig& cfg, at::ScalarType dtype, uint64_t seed,
                          const std::map<std::string, std::string>& metadata = {},
                          const std::function<void(size_t, size_t)>& progress = nullptr);

}  // namespace mt::lm
