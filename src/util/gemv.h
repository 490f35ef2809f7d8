#pragma once
// Matrix-vector product for batch-1 streaming steps on the CPU: y = W x with W [out, in] row-major.
//
// A streaming step reads every weight matrix once for a single input row, so it is bound by memory
// bandwidth. libtorch's at::linear hands a 1-row input to the BLAS, whose path for this layout reached
// 5-9 GB/s here (a 32000 x 512 text head: 6 GB/s) against 17 GB/s of plain memory reads. This kernel
// streams the rows with AVX2 FMA over 4 rows at a time and splits the rows over the intra-op threads.
#include <ATen/ATen.h>

namespace mt::util {

// True when fast_gemv can take (x, w): CPU float32, w 2-D contiguous, x one row of w.size(1) values
// (any leading shape of product 1), no autograd, and the CPU has AVX2 and FMA.
bool fast_gemv_applies(const at::Tensor& x, const at::Tensor& w);

// x [..., in] with one row in total, w [out, in]: returns [..., out]. Caller checks fast_gemv_applies.
at::Tensor fast_gemv(const at::Tensor& x, const at::Tensor& w);

// at::linear(x, w) (no bias), through fast_gemv where it applies.
at::Tensor linear_nobias(const at::Tensor& x, const at::Tensor& w);

}  // namespace mt::util
