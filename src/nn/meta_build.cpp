#include "nn/meta_build.h"

#include <c10/util/Exception.h>

namespace mt::nn {

namespace {

at::Tensor meta_empty(c10::SymIntArrayRef size, std::optional<at::ScalarType> dtype, std::optional<at::Layout> layout,
                      std::optional<at::Device>, std::optional<bool>, std::optional<at::MemoryFormat> format) {
  return at::empty_symint(size, at::TensorOptions().dtype(dtype).layout(layout).device(at::kMeta), format);
}

at::Tensor meta_empty_strided(c10::SymIntArrayRef size, c10::SymIntArrayRef stride, std::optional<at::ScalarType> dtype,
                              std::optional<at::Layout> layout, std::optional<at::Device>, std::optional<bool>) {
  return at::empty_strided_symint(size, stride, at::TensorOptions().dtype(dtype).layout(layout).device(at::kMeta));
}

struct QuietWarnings : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

}  // namespace

MetaCpuTensors::MetaCpuTensors() : lib_(torch::Library::IMPL, "aten", c10::DispatchKey::CPU, __FILE__, __LINE__) {
  QuietWarnings quiet;  // "Overriding a previously registered kernel" is the intent here
  c10::WarningUtils::WarningHandlerGuard guard(&quiet);
  lib_.impl("empty.memory_format", TORCH_FN(meta_empty));
  lib_.impl("empty_strided", TORCH_FN(meta_empty_strided));
}

}  // namespace mt::nn
