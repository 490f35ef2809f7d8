#pragma once
// Mimi's causal convolutions (moshi/modules/conv.py): StreamingConv1d and StreamingConvTranspose1d.
// Modules hold parameters only, nested as in Kyutai's checkpoints ("<name>.conv.conv.weight",
// "<name>.convtr.convtr.weight"); the streaming buffers live in explicit state objects.
//
// Semantics (shared/spec/moshi.md 2.3):
//  - Conv1d: a left context of K_eff - S samples (K_eff = (K-1)*dilation + 1) is kept between calls;
//    a fresh state holds zeros (pad_mode "constant") or copies of the first input sample ("replicate").
//    The whole-signal forward is one call on a fresh state. Input lengths are multiples of the stride.
//  - ConvTranspose1d: full transposed conv of each call; the last K - S outputs are incomplete. The
//    whole-signal forward drops them; streaming keeps them (minus the bias, so it is added once) and
//    adds them to the head of the next call's output.
#include <torch/nn/module.h>

#include <string>
#include <vector>

namespace mt::mimi {

struct ConvParamsImpl : torch::nn::Module {
  ConvParamsImpl(int64_t d0, int64_t d1, int64_t kernel, int64_t bias_size);  // bias_size 0: none
  at::Tensor weight, bias;                                                    // bias undefined when absent
};
TORCH_MODULE(ConvParams);

// One level of nesting: NormConv1d / NormConvTranspose1d hold the torch conv under the same name.
struct ConvWrapImpl : torch::nn::Module {
  ConvWrapImpl(const std::string& name, int64_t d0, int64_t d1, int64_t kernel, int64_t bias_size);
  ConvParams inner{nullptr};
};
TORCH_MODULE(ConvWrap);

struct Conv1dState {
  at::Tensor previous;  // [B, C_in, K_eff - S] (undefined before the first call)
  // Slots restarted since the last call: their left padding is written at the next call, because
  // replicate padding repeats that call's first sample, which is not known yet.
  std::vector<int64_t> fresh_slots;
  void reset() {
    previous = at::Tensor();
    fresh_slots.clear();
  }
  void reset_slot(int64_t b) {
    if (previous.defined()) fresh_slots.push_back(b);
  }
};

struct StreamingConv1dImpl : torch::nn::Module {
  StreamingConv1dImpl(int64_t in_ch, int64_t out_ch, int64_t kernel, int64_t stride = 1, int64_t dilation = 1,
                      int64_t groups = 1, bool bias = true, std::string pad_mode = "constant");
  // x [B, C_in, T] (T a multiple of the stride) -> [B, C_out, T / stride].
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor step(const at::Tensor& x, Conv1dState& st) const;
  int64_t in_ch, out_ch, kernel, stride, dilation, groups;
  std::string pad_mode;
  int64_t context() const { return (kernel - 1) * dilation + 1 - stride; }
  ConvWrap conv{nullptr};
};
TORCH_MODULE(StreamingConv1d);

struct ConvTr1dState {
  at::Tensor partial;  // [B, C_out, K - S]
  void reset() { partial = at::Tensor(); }
  // A zero tail is what a fresh stream adds to its first output.
  void reset_slot(int64_t b) {
    if (partial.defined()) partial.select(0, b).zero_();
  }
};

struct StreamingConvTranspose1dImpl : torch::nn::Module {
  StreamingConvTranspose1dImpl(int64_t in_ch, int64_t out_ch, int64_t kernel, int64_t stride = 1, int64_t groups = 1,
                               bool bias = true);
  // x [B, C_in, T] -> [B, C_out, T * stride].
  at::Tensor forward(const at::Tensor& x) const;
  at::Tensor step(const at::Tensor& x, ConvTr1dState& st) const;
  // The untrimmed transposed convolution: [B, C_out, (T - 1) * stride + kernel].
  at::Tensor full(const at::Tensor& x) const;
  int64_t in_ch, out_ch, kernel, stride, groups;
  ConvWrap convtr{nullptr};
};
TORCH_MODULE(StreamingConvTranspose1d);

}  // namespace mt::mimi
