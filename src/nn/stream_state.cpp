#include "nn/stream_state.h"

#include "util/error.h"

namespace mt::nn {

void LayerState::add(std::string name, std::unique_ptr<StreamState> s) {
  names_.push_back(std::move(name));
  slots_.push_back(std::move(s));
}

StreamState& LayerState::at(int64_t slot) const {
  MT_CHECK(slot >= 0 && static_cast<size_t>(slot) < slots_.size(), "layer state: add-on slot ", slot,
           " out of range (the layer's state has ", slots_.size(), "; was it made for this model?)");
  return *slots_[static_cast<size_t>(slot)];
}

void LayerState::reset() {
  for (auto& s : slots_) s->reset();
}

void LayerState::reset_slot(int64_t b) {
  for (auto& s : slots_) s->reset_slot(b);
}

void LayerState::detach() {
  for (auto& s : slots_) s->detach();
}

void LayerState::write(const std::string& prefix, TensorMap& out) const {
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i]->write(prefix + names_[i] + ".", out);
}

void LayerState::read(const std::string& prefix, const TensorMap& in, const at::Device& device) {
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i]->read(prefix + names_[i] + ".", in, device);
}

int64_t LayerState::updates() const {
  int64_t n = 0;
  for (const auto& s : slots_) n += s->updates();
  return n;
}

at::Tensor long_tensor(const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

std::vector<int64_t> long_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

const at::Tensor& need(const TensorMap& in, const std::string& prefix, const std::string& key) {
  auto it = in.find(prefix + key);
  MT_CHECK(it != in.end(), "checkpoint: missing stream state entry '", prefix + key, "'");
  return it->second;
}

at::Tensor saved(const at::Tensor& t) { return t.detach().to(at::kCPU).clone(at::MemoryFormat::Contiguous); }

}  // namespace mt::nn
