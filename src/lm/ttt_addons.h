#pragma once
// The three ways TTT enters a Moshi layer, as add-ons over nn/addon.h:
//  - HybridTTT (Video-DiT style, "Path A"): x + tanh(gating_alpha) ⊙ TTT(norm(·)) around the layer's
//    attention, tensors `<layer>.ttt.{norm.*, gating_alpha, layer.*}`;
//  - TTTAdapter ("TTT as LoRA", Path B) on a named linear: W x + scale · U(TTT(D x)), where D [r, in]
//    is a down-projection, TTT a one-head TTT-Linear (or -MLP) of width r whose inner weights are a
//    per-stream state, and U [out, r] a zero-initialised up-projection (a new adapter changes nothing);
//    tensors `<linear>.ttt_adapter.{down,up}.weight` and `<linear>.ttt_adapter.layer.*`. Its parameter
//    count is LoRA's of rank r plus the small r×r TTT layer (adapter_parameters());
//  - InPlaceTTT: the gated FFN with its down-projection as a fast weight (ttt/inplace.h), on the
//    layer's own gating weights; its target tensors are `<layer>.gating.ttt_{conv,proj}.weight`.
// Each keeps its per-stream state in a StreamState of its own kind below.
#include <memory>
#include <string>

#include "lm/ttt_config.h"
#include "nn/addon.h"
#include "nn/transformer.h"
#include "ttt/inplace.h"
#include "ttt/ttt_layer.h"

namespace mt::lm {

// What reports and the no-TTT control ask of every TTT add-on, whatever its kind.
class TTTUnit {
 public:
  virtual ~TTTUnit() = default;
  // The strength of its path: mean |tanh α| (hybrid), scale (adapter), lr (In-Place).
  virtual double gate() const = 0;
  // off: the path contributes nothing (gate 0) until called again with false, which restores it.
  virtual void set_off(bool off) = 0;
};

// A per-stream state of ttt/ as a stream state: resets, detach and the update count are its own;
// write / read are defined per kind (TTT inner state: position, fresh, W<l>b, G<l>b, conv_tail;
// In-Place: dw, h_buf, t_buf, pos, tokens), under the names checkpoints have always used.
template <class S>
struct StateOf : nn::StreamState {
  explicit StateOf(S st) : s(std::move(st)) {}
  S s;
  void reset() override { s.reset(); }
  void reset_slot(int64_t b) override { s.reset_slot(b); }
  void detach() override { s.detach(); }
  void write(const std::string& prefix, nn::TensorMap& out) const override;
  void read(const std::string& prefix, const nn::TensorMap& in, const at::Device& device) override;
  int64_t updates() const override { return s.updates; }
};
template <>
void StateOf<ttt::TTTState>::write(const std::string& prefix, nn::TensorMap& out) const;
template <>
void StateOf<ttt::TTTState>::read(const std::string& prefix, const nn::TensorMap& in, const at::Device& device);
template <>
void StateOf<ttt::InPlaceState>::write(const std::string& prefix, nn::TensorMap& out) const;
template <>
void StateOf<ttt::InPlaceState>::read(const std::string& prefix, const nn::TensorMap& in, const at::Device& device);

// Distinct types for the hybrid block's and the adapters' inner states (typed access by kind).
struct HybridState final : StateOf<ttt::TTTState> {
  explicit HybridState(int64_t batch) : StateOf(ttt::TTTState(batch)) {}
};
struct AdapterState final : StateOf<ttt::TTTState> {
  explicit AdapterState(int64_t batch) : StateOf(ttt::TTTState(batch)) {}
};
using InPlaceStreamState = StateOf<ttt::InPlaceState>;

// Probes of a TTT inner layer as named tensors (l0, lprev, lafter, w_delta_norm,
// w_delta_norm_per_layer) and back.
nn::TensorMap probe_map(const ttt::TTTProbes& p);
ttt::TTTProbes probes_from(const nn::TensorMap& m);

struct HybridTTTImpl final : nn::LayerAddon, TTTUnit {
  HybridTTTImpl(const std::string& norm, int64_t dim, const ttt::TTTConfig& cfg, double alpha_init,
                TTTPlacement placement);
  at::Tensor before_attention(const at::Tensor& x, const nn::StepContext& c) const override;
  at::Tensor after_attention(const at::Tensor& x, const at::Tensor& h, const nn::StepContext& c) const override;
  std::unique_ptr<nn::StreamState> make_state(int64_t batch) const override;
  std::string state_name() const override { return "hybrid"; }
  std::string unit() const override { return "hybrid"; }
  // The reference's initial values (TTT layer init, alpha, norm), seeded.
  void init(uint64_t seed) override;
  double gate() const override;
  void set_off(bool off) override;
  // tanh(α) ⊙ TTT(norm(h)), through this stream's state.
  at::Tensor block(const at::Tensor& h, const nn::StepContext& c) const;

  nn::Norm norm{nullptr};
  at::Tensor gating_alpha;               // gating_alpha [dim]
  std::shared_ptr<ttt::TTTLayer> layer;  // layer.* (registered through a holder module)
  double alpha_init;
  TTTPlacement placement;

 private:
  at::Tensor saved_alpha_;  // while off
};

struct TTTAdapterImpl final : nn::LinearAddon, TTTUnit {
  TTTAdapterImpl(int64_t in, int64_t out, const ttt::TTTConfig& inner, double scale, int64_t index, std::string target);
  at::Tensor forward(const at::Tensor& x, const nn::StepContext& c) const override;
  std::unique_ptr<nn::StreamState> make_state(int64_t batch) const override;
  std::string state_name() const override { return "adapter" + std::to_string(index); }
  std::string unit() const override { return "adapter " + target; }
  void init(uint64_t seed) override;
  double gate() const override { return scale; }
  void set_off(bool off) override;

  std::shared_ptr<nn::LinearImpl> down, up;  // down.weight [r, in], up.weight [out, r]
  std::shared_ptr<ttt::TTTLayer> layer;      // layer.*
  double scale;
  int64_t index;       // among the layer's adapters (its state's name, its probes' place)
  std::string target;  // the linear it sits on ("self_attn.in_proj", ...)

 private:
  void init_from(uint64_t seed);  // the reference values drawn from exactly this seed
  double saved_scale_ = 0;
};

struct InPlaceTTTImpl final : nn::LayerAddon, TTTUnit {
  // Runs on `gating`'s weights (W_down = gating.linear_out.weight is the fast weight's start) and
  // registers its target tensors under it.
  InPlaceTTTImpl(const ttt::InPlaceConfig& cfg, nn::GatingImpl& gating, InPlaceTarget target);
  bool replaces_ffn() const override { return true; }
  at::Tensor ffn(const at::Tensor& n, const nn::StepContext& c) const override;
  std::unique_ptr<nn::StreamState> make_state(int64_t batch) const override;
  std::string state_name() const override { return "inplace"; }
  std::string unit() const override { return "inplace"; }
  // Official init: target conv zero, projection zero with a N(0, 0.02²) diagonal.
  void init(uint64_t seed) override;
  double gate() const override { return ffn_->cfg.lr; }
  void set_off(bool off) override;
  const ttt::InPlaceFFNImpl& inner() const { return *ffn_; }

  InPlaceTarget target;

 private:
  std::shared_ptr<ttt::InPlaceFFNImpl> ffn_;
  double saved_lr_ = 0;
};

// Parameters of a TTT adapter of width r on an in→out linear.
int64_t adapter_parameters(int64_t in, int64_t out, const ttt::TTTConfig& inner);

}  // namespace mt::lm
