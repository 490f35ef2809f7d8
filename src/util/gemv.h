#pragma once
// Matrix-vector products for streaming steps on the CPU: y = W x with W [out, in] row-major, for one
// input row (a batch-1 LM step) or up to kMaxGemvRows (small batches, Mimi's 2 steps per frame).
//
// A streaming step reads every weight matrix once for a single input row, so it is bound by memory
// bandwidth. libtorch's at::linear hands a 1-row input to the BLAS, whose path for this layout reached
// 5-9 GB/s here (a 32000 x 512 text head: 6 GB/s) against 17 GB/s of plain memory reads. This kernel
// streams the weight rows once with AVX2 FMA, dotting each with every input row, and splits the
// weight rows over the intra-op threads.
#include <ATen/ATen.h>

namespace mt::util {

inline constexpr int64_t kMaxGemvRows = 4;

// bf16 weights (a 7B streamed in Kyutai's dtype) are widened to float32 in registers (a 16-bit shift)
// and accumulated in float32: half the bytes of float32 weights, so half the step's floor.
//
// True when fast_gemv can take (x, w): CPU, float32 w with float32 x or bf16 w with float32 or bf16 x, w 2-D
// contiguous, x contiguous [..., in] with 1 to kMaxGemvRows rows in all, no autograd, and the CPU has AVX2 and FMA.
bool fast_gemv_applies(const at::Tensor& x, const at::Tensor& w);

// x [..., in] with 1..kMaxGemvRows rows in total, w [out, in]: returns [..., out] in x's dtype (bf16
// rows: the float32 sum rounded once). Caller checks fast_gemv_applies.
at::Tensor fast_gemv(const at::Tensor& x, const at::Tensor& w);

// at::linear(x, w) (no bias), through fast_gemv where it applies.
at::Tensor linear_nobias(const at::Tensor& x, const at::Tensor& w);

}  // namespace mt::util
