#pragma once
// One interface for every kind of per-stream memory of a streaming module: a KV ring, a TTT inner
// state, an adapter's, an In-Place fast weight. Modules are immutable and shareable; whatever a
// stream changes lives in one of these, so a conversation, a training file or a batch slot can be
// reset, cut from its autograd history, or saved and restored without knowing what is inside.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mt::nn {

using TensorMap = std::map<std::string, at::Tensor>;

class StreamState {
 public:
  virtual ~StreamState() = default;
  // Every batch slot back to where a new stream starts.
  virtual void reset() = 0;
  // Slot b alone (a file boundary in training, a new conversation in one slot of a server).
  virtual void reset_slot(int64_t b) = 0;
  // Cuts the autograd history and keeps the values (training across consecutive chunks of a file).
  virtual void detach() {}
  // Checkpoints: write() puts copies of the state's tensors under `prefix` (CPU, contiguous: the map
  // stays as written while the stream moves on);
  // read() restores them onto `device`, throwing mt::Error that names a missing or mis-shaped entry.
  virtual void write(const std::string& prefix, TensorMap& out) const = 0;
  virtual void read(const std::string& prefix, const TensorMap& in, const at::Device& device) = 0;
  // Learning updates applied through this state since it was made, summed over slots (TTT mini-batch
  // or chunk updates; 0 for memories that only store).
  virtual int64_t updates() const { return 0; }
};

// The states of one transformer layer's add-ons, one slot per add-on (LayerAddon or LinearAddon),
// each saved under its add-on's name.
class LayerState final : public StreamState {
 public:
  void add(std::string name, std::unique_ptr<StreamState> s);
  bool empty() const { return slots_.empty(); }
  size_t size() const { return slots_.size(); }
  StreamState& at(int64_t slot) const;
  const std::string& name(int64_t slot) const { return names_.at(static_cast<size_t>(slot)); }
  // The slot's state as its concrete type (nullptr when it is another kind).
  template <class S>
  S* as(int64_t slot) const {
    return slot >= 0 && static_cast<size_t>(slot) < slots_.size() ? dynamic_cast<S*>(slots_[slot].get()) : nullptr;
  }

  void reset() override;
  void reset_slot(int64_t b) override;
  void detach() override;
  void write(const std::string& prefix, TensorMap& out) const override;
  void read(const std::string& prefix, const TensorMap& in, const at::Device& device) override;
  int64_t updates() const override;

 private:
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<StreamState>> slots_;
};

// Checkpoint helpers shared by the state kinds.
at::Tensor long_tensor(const std::vector<int64_t>& v);
std::vector<int64_t> long_vector(const at::Tensor& t);
// The entry `prefix + key` of a checkpoint map; throws naming it when absent.
const at::Tensor& need(const TensorMap& in, const std::string& prefix, const std::string& key);
// A state tensor as a checkpoint entry: a detached, contiguous copy on the CPU.
at::Tensor saved(const at::Tensor& t);

}  // namespace mt::nn
