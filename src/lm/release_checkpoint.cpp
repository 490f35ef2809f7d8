#include "lm/release_checkpoint.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <map>
#include <regex>

#include "io/safetensors_writer.h"
#include "lm/lm_model.h"
#include "nn/meta_build.h"
#include "util/error.h"
#include "util/hash.h"

namespace mt::lm {

std::vector<io::TensorSpec> release_tensor_specs(const LMConfig& cfg, at::ScalarType dtype) {
  LMModel m{nullptr};
  {
    nn::MetaCpuTensors meta;  // names and shapes only: a 7B costs nothing to build
    m = LMModel(cfg);
  }
  // Our split per-step names -> the release's fused ones, rows stacked in step order.
  static const std::regex split_re(R"((.*self_attn\.)(in|out)_projs\.(\d+)\.weight)");
  std::map<std::string, io::TensorSpec> specs;
  for (const auto& kv : m->named_parameters()) {
    std::string name = kv.key();
    std::vector<int64_t> shape = kv.value().sizes().vec();
    std::smatch g;
    if (std::regex_match(name, g, split_re)) {
      name = g[1].str() + (g[2] == "in" ? "in_proj_weight" : "out_proj.weight");
      auto it = specs.find(name);
      if (it != specs.end()) {
        MT_CHECK(it->second.shape.size() == 2 && it->second.shape[1] == shape[1], "release layout: '", kv.key(), "' ",
                 shape_str(shape), " does not stack onto ", name, " ", shape_str(it->second.shape));
        it->second.shape[0] += shape[0];
        continue;
      }
    }
    specs[name] = io::TensorSpec{name, dtype, shape};
  }
  std::vector<io::TensorSpec> out;
  for (auto& kv : specs) out.push_back(std::move(kv.second));
  return out;  // std::map: sorted by name
}

at::Tensor random_release_tensor(const io::TensorSpec& spec, uint64_t seed, const LMConfig& cfg) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(hash::fnv_str(hash::fnv_u64(hash::kFnvOffset, seed), spec.name));
  // Generated in float32 and cast once: the same distribution in every dtype.
  at::Tensor t = at::empty(spec.shape, at::TensorOptions().dtype(at::kFloat));
  init_base_param(spec.name, t, gen, cfg);
  return t.to(spec.dtype);
}

void write_random_release(const std::string& path, const LMConfig& cfg, at::ScalarType dtype, uint64_t seed,
                          const std::map<std::string, std::string>& metadata,
                          const std::function<void(size_t, size_t)>& progress) {
  io::save_streaming(
      path, release_tensor_specs(cfg, dtype),
      [&](const io::TensorSpec& s, size_t) { return random_release_tensor(s, seed, cfg); }, metadata, progress);
}

}  // namespace mt::lm
