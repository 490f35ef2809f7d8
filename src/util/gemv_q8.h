#pragma once
// Kyutai's q8 linears (interop.md section 6): a weight stored as int8 codes CB [out, in] and one float32
// scale SCB per output row, W ≈ CB · SCB / 127. This file holds the format's arithmetic (quantise,
// dequantise) and its products:
//  - a batch-1 streaming step (1..kMaxGemvRows input rows) reads CB directly with AVX2, one byte per
//    weight instead of four: the step is bound by weight bandwidth, so it runs up to ~4x faster than
//    the float32 gemv (util/gemv.h) it mirrors (rows split over the intra-op threads the same way);
//  - longer inputs go to libtorch's at::_weight_int8pack_mm (CPU, and CUDA where the build has its
//    kernel), else to a matmul with the dequantised weight.
#include <ATen/ATen.h>

#include "util/gemv.h"

namespace mt::util {

// One quantised matrix: cb int8 [out, in], scb float32 [out].
struct Q8Weight {
  at::Tensor cb, scb;
};

// Kyutai's export (bitsandbytes int8_vectorwise_quant on an fp16 copy of W): SCB_r = max_j |W_rj|,
// CB = round(W · 127 / SCB_r). A row of zeros gets SCB 0 and codes 0 (no division by zero).
Q8Weight quantize_q8(const at::Tensor& w);
// CB · SCB / 127 in `dtype`.
at::Tensor dequantize_q8(const at::Tensor& cb, const at::Tensor& scb, at::ScalarType dtype = at::kFloat);

// Throws naming `what` (a tensor name) unless cb is int8 [out, in] and scb float32 [out].
void check_q8(const at::Tensor& cb, const at::Tensor& scb, const std::string& what);

// True when fast_gemv_q8 can take (x, cb, scb): CPU float32 x, contiguous [..., in] with 1 to
// kMaxGemvRows rows in all, no autograd through x; cb int8 [out, in] and scb float32 [out], both
// contiguous; the CPU has AVX2 and FMA.
bool fast_gemv_q8_applies(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb);

// x [..., in] -> [..., out] = x · (CB · SCB / 127)ᵀ. Caller checks fast_gemv_q8_applies.
at::Tensor fast_gemv_q8(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb);

// fast_gemv_q8 takes an AVX-512 kernel where the CPU has one (fewer instructions per weight), else the
// AVX2 one. Off: the AVX2 kernel everywhere (tests check both); returns the previous setting.
bool allow_avx512_q8(bool on);

// The same product for any x (float32, bfloat16 or float16; any device): the kernel above where it
// applies, else at::_weight_int8pack_mm, else a matmul with the dequantised weight.
at::Tensor linear_q8(const at::Tensor& x, const at::Tensor& cb, const at::Tensor& scb);

}  // namespace mt::util
