#pragma once
// SEANet encoder and decoder of Mimi (moshi/modules/seanet.py), causal, ELU activations, identity
// shortcuts (true_skip), no norm (weights folded). Module indices follow the reference's `model`
// Sequential so that "encoder.model.3.conv.conv.weight" is layer 3 here (shared/spec/moshi.md 2.2).
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include <vector>

#include "mimi/conv.h"

namespace mt::mimi {

struct SEANetConfig {
  int64_t channels = 1;
  int64_t dimension = 512;
  int64_t n_filters = 64;
  int64_t n_residual_layers = 1;
  std::vector<int64_t> ratios{8, 6, 5, 4};  // decoder order; the encoder runs them reversed
  int64_t kernel_size = 7;
  int64_t residual_kernel_size = 3;
  int64_t last_kernel_size = 3;
  int64_t dilation_base = 2;
  int64_t compress = 2;
  bool causal = true;
  bool true_skip = true;
  std::string pad_mode = "constant";
  std::string norm = "none";
  std::string activation = "ELU";
  int64_t hop_length() const;
};

// Per-stream state of an encoder or decoder: one buffer per conv, in module order.
struct SEANetState {
  std::vector<Conv1dState> convs;
  std::vector<ConvTr1dState> convtrs;
  void reset();
  void reset_slot(int64_t b);
};

// A parameterless list entry (ELU) keeps the reference's indices.
struct ELUImpl : torch::nn::Module {};
TORCH_MODULE(ELU);

struct ResBlockImpl : torch::nn::Module {
  ResBlockImpl(const SEANetConfig& c, int64_t dim, int64_t dilation);
  torch::nn::ModuleList block;  // 0 ELU, 1 conv dim->dim/compress, 2 ELU, 3 conv k1 back to dim
  StreamingConv1d c1{nullptr}, c2{nullptr};
};
TORCH_MODULE(ResBlock);

// The encoder and the decoder share one runner over their `model` list.
struct SEANetImpl : torch::nn::Module {
  SEANetImpl(const SEANetConfig& cfg, bool encoder);
  at::Tensor forward(const at::Tensor& x) const;                // whole signal
  at::Tensor step(const at::Tensor& x, SEANetState& st) const;  // a chunk, continuing `st`
  SEANetState make_state() const;
  SEANetConfig cfg;
  bool encoder;
  torch::nn::ModuleList model;

 private:
  enum class Kind { conv, convtr, res, elu };
  struct Entry {
    Kind kind;
    StreamingConv1d conv{nullptr};
    StreamingConvTranspose1d convtr{nullptr};
    ResBlock res{nullptr};
  };
  std::vector<Entry> entries_;
  int64_t n_convs_ = 0, n_convtrs_ = 0;
  at::Tensor run(const at::Tensor& x, SEANetState* st) const;
};
TORCH_MODULE(SEANet);

}  // namespace mt::mimi
