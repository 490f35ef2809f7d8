#include "mimi/conv.h"

#include <ATen/ATen.h>

#include "util/error.h"

namespace mt::mimi {

ConvParamsImpl::ConvParamsImpl(int64_t d0, int64_t d1, int64_t kernel, int64_t bias_size) {
  weight = register_parameter("weight", at::zeros({d0, d1, kernel}));
  if (bias_size > 0) bias = register_parameter("bias", at::zeros({bias_size}));
}

ConvWrapImpl::ConvWrapImpl(const std::string& name, int64_t d0, int64_t d1, int64_t kernel, int64_t bias_size) {
  inner = register_module(name, ConvParams(d0, d1, kernel, bias_size));
}

StreamingConv1dImpl::StreamingConv1dImpl(int64_t in_ch_, int64_t out_ch_, int64_t kernel_, int64_t stride_,
                                         int64_t dilation_, int64_t groups_, bool bias, std::string pad_mode_)
    : in_ch(in_ch_),
      out_ch(out_ch_),
      kernel(kernel_),
      stride(stride_),
      dilation(dilation_),
      groups(groups_),
      pad_mode(std::move(pad_mode_)) {
  MT_CHECK(pad_mode == "constant" || pad_mode == "replicate", "mimi conv: pad_mode '", pad_mode,
           "' (expected constant or replicate)");
  MT_CHECK(in_ch % groups == 0 && out_ch % groups == 0, "mimi conv: channels ", in_ch, "->", out_ch,
           " not divisible by groups ", groups);
  MT_CHECK(context() >= 0, "mimi conv: kernel ", kernel, " shorter than stride ", stride);
  conv = register_module("conv", ConvWrap("conv", out_ch, in_ch / groups, kernel, bias ? out_ch : 0));
}

at::Tensor StreamingConv1dImpl::forward(const at::Tensor& x) const {
  Conv1dState fresh;
  return step(x, fresh);
}

at::Tensor StreamingConv1dImpl::step(const at::Tensor& x, Conv1dState& st) const {
  MT_CHECK(x.dim() == 3 && x.size(1) == in_ch, "mimi conv: expected input [B, ", in_ch, ", T], got ",
           shape_str(x.sizes().vec()));
  MT_CHECK(x.size(2) % stride == 0, "mimi conv: input length ", x.size(2), " is not a multiple of the stride ", stride);
  if (x.size(2) == 0) return x.new_empty({x.size(0), out_ch, 0});
  const int64_t tp = context();
  at::Tensor in = x;
  if (tp > 0) {
    if (!st.previous.defined()) {
      st.previous = pad_mode == "replicate" ? x.narrow(2, 0, 1).expand({x.size(0), in_ch, tp})
                                            : at::zeros({x.size(0), in_ch, tp}, x.options());
    }
    for (int64_t b : st.fresh_slots) {
      at::Tensor slot = st.previous.select(0, b);
      if (pad_mode == "replicate")
        slot.copy_(x.select(0, b).narrow(1, 0, 1).expand({in_ch, tp}));
      else
        slot.zero_();
    }
    st.fresh_slots.clear();
    in = at::cat({st.previous, x}, 2);
    st.previous = in.narrow(2, in.size(2) - tp, tp);
  }
  const auto& p = conv->inner;
  return at::conv1d(in, p->weight, p->bias, at::IntArrayRef{stride}, at::IntArrayRef{0}, at::IntArrayRef{dilation},
                    groups);
}

StreamingConvTranspose1dImpl::StreamingConvTranspose1dImpl(int64_t in_ch_, int64_t out_ch_, int64_t kernel_,
                                                           int64_t stride_, int64_t groups_, bool bias)
    : in_ch(in_ch_), out_ch(out_ch_), kernel(kernel_), stride(stride_), groups(groups_) {
  MT_CHECK(kernel >= stride, "mimi convtr: kernel ", kernel, " shorter than stride ", stride);
  MT_CHECK(in_ch % groups == 0 && out_ch % groups == 0, "mimi convtr: channels ", in_ch, "->", out_ch,
           " not divisible by groups ", groups);
  convtr = register_module("convtr", ConvWrap("convtr", in_ch, out_ch / groups, kernel, bias ? out_ch : 0));
}

at::Tensor StreamingConvTranspose1dImpl::full(const at::Tensor& x) const {
  const auto& p = convtr->inner;
  // On the CPU, libtorch sends a transposed conv with few input frames and many channels (Mimi's first
  // decoder upsampling: 1024 -> 512 channels, kernel 16, 2 frames per streaming step) to its slow
  // reference kernel: 41 ms per call, half of a streaming decode step. As one matmul and an
  // overlap-add it takes 4 ms, and it is as fast or faster at every size the codec uses (whole signals
  // included). GPUs keep cuDNN's kernel.
  if (x.device().is_cpu() && groups == 1 && kernel % stride == 0) {
    const int64_t B = x.size(0), T = x.size(2), m = kernel / stride;
    at::Tensor z = at::matmul(x.transpose(1, 2), p->weight.reshape({in_ch, out_ch * kernel}));  // [B, T, C_out * K]
    z = z.view({B, T, out_ch, m, stride}).permute({0, 2, 3, 1, 4});                             // [B, C_out, m, T, s]
    at::Tensor y = at::zeros({B, out_ch, T + m - 1, stride}, z.options());
    for (int64_t j = 0; j < m; ++j) y.narrow(2, j, T).add_(z.select(2, j));
    y = y.view({B, out_ch, (T + m - 1) * stride});
    if (p->bias.defined()) y.add_(p->bias.view({1, -1, 1}));
    return y;
  }
  return at::conv_transpose1d(x, p->weight, p->bias, at::IntArrayRef{stride}, at::IntArrayRef{0}, at::IntArrayRef{0},
                              groups);
}

at::Tensor StreamingConvTranspose1dImpl::forward(const at::Tensor& x) const {
  MT_CHECK(x.dim() == 3 && x.size(1) == in_ch, "mimi convtr: expected input [B, ", in_ch, ", T], got ",
           shape_str(x.sizes().vec()));
  at::Tensor y = full(x);
  return y.narrow(2, 0, y.size(2) - (kernel - stride));
}

at::Tensor StreamingConvTranspose1dImpl::step(const at::Tensor& x, ConvTr1dState& st) const {
  MT_CHECK(x.dim() == 3 && x.size(1) == in_ch, "mimi convtr: expected input [B, ", in_ch, ", T], got ",
           shape_str(x.sizes().vec()));
  if (x.size(2) == 0) return x.new_empty({x.size(0), out_ch, 0});
  const auto& p = convtr->inner;
  at::Tensor y = full(x);
  const int64_t pt = kernel - stride;
  if (pt == 0) return y;
  if (st.partial.defined()) y = at::cat({y.narrow(2, 0, pt) + st.partial, y.narrow(2, pt, y.size(2) - pt)}, 2);
  at::Tensor tail = y.narrow(2, y.size(2) - pt, pt);
  st.partial = p->bias.defined() ? tail - p->bias.view({1, -1, 1}) : tail.clone();
  return y.narrow(2, 0, y.size(2) - pt);
}

}  // namespace mt::mimi
