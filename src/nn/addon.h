#pragma once
// The seam between the generic streaming transformer and what can be added to its layers (the TTT
// integrations of lm/: a hybrid block around attention, an In-Place FFN, adapters on named linears).
// A layer asks each of its add-ons at three points: before its attention (the attention's input),
// after it (the residual stream), and in place of its FFN; a linear asks its add-on for a term to add
// to W x. Every add-on keeps what a stream changes in its own StreamState, one slot of the layer's
// LayerState, and may report diagnostics through the step's probe callback.
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>

#include "nn/stream_state.h"

namespace mt::nn {

struct KVCache;

// Diagnostics of one call of one add-on: its layer, its slot in the layer, named tensors.
using ProbeFn = std::function<void(int64_t layer, int64_t slot, const TensorMap& values)>;

// What one layer call sees besides its input.
struct StepContext {
  at::Tensor offsets;              // [B] long: positions consumed per slot (zeros: whole sequence)
  int64_t offset_cpu = 0;          // host copy (all slots advance together where it is read)
  KVCache* cache = nullptr;        // null: a whole sequence from position 0
  LayerState* state = nullptr;     // this layer's add-on states (required when it has add-ons)
  at::Tensor input;                // the transformer's input (In-Place TTT's target source)
  int64_t layer = 0;               // index of the layer in its transformer
  const ProbeFn* probe = nullptr;  // null: no diagnostics wanted

  // Add-on slot `slot` of this layer's state; throws when the layer was run without its state.
  StreamState& slot_state(int64_t slot) const;
  void report(int64_t slot, const TensorMap& values) const {
    if (probe) (*probe)(layer, slot, values);
  }
};

// Something a layer carries besides its own attention and FFN. Modules hold parameters only.
class AddonBase : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  // The state of one stream batch of `batch` slots, and the name it is saved under.
  virtual std::unique_ptr<StreamState> make_state(int64_t batch) const = 0;
  virtual std::string state_name() const = 0;
  // A person's name for it in reports ("hybrid", "adapter self_attn.in_proj", "inplace").
  virtual std::string unit() const = 0;
  // Reference initial values of its own tensors, seeded.
  virtual void init(uint64_t seed) = 0;
  int64_t slot = -1;  // its state's slot in the layer's LayerState (set when attached)
};

class LayerAddon : public AddonBase {
 public:
  using AddonBase::AddonBase;
  // The attention's input (the residual stream x by default).
  virtual at::Tensor before_attention(const at::Tensor& x, const StepContext& c) const { return x; }
  // The residual stream after attention, h = a + attn(a), given the layer input x.
  virtual at::Tensor after_attention(const at::Tensor& x, const at::Tensor& h, const StepContext& c) const { return h; }
  // Whether ffn() takes the place of the layer's FFN on the normed residual n.
  virtual bool replaces_ffn() const { return false; }
  virtual at::Tensor ffn(const at::Tensor& n, const StepContext& c) const;
};

class LinearAddon : public AddonBase {
 public:
  using AddonBase::AddonBase;
  // The term added to the linear's output W x.
  virtual at::Tensor forward(const at::Tensor& x, const StepContext& c) const = 0;
};

}  // namespace mt::nn
