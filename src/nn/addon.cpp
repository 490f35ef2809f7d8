#include "nn/addon.h"

#include "util/error.h"

namespace mt::nn {

StreamState& StepContext::slot_state(int64_t slot) const {
  MT_CHECK(state, "layer ", layer, ": an add-on was run without its layer's state");
  return state->at(slot);
}

at::Tensor LayerAddon::ffn(const at::Tensor& n, const StepContext& c) const {
  fail("add-on '", unit(), "' does not replace the FFN");
}

}  // namespace mt::nn
