#pragma once
// The inner loop of TTT (spec 1.4-1.6, 1.12-1.13): a scan over mini-batches of the dual form, for
// N = batch x heads independent streams, with its own backward.
//
// Two paths compute it. On a CPU in float32 with AVX2 (the common case), the hand-written per-stream
// kernels of ttt_scan_kernel.h run the forward and the backward, the N streams split across threads by
// one at::parallel_for. Elsewhere (float64, CUDA, the pitfall switches of the tests), tensor ops over
// all N streams at once; there the backward recomputes the forward group by group and differentiates
// it with autograd. Both keep only the inner state at checkpoint-group boundaries (gradient
// checkpointing). The per-token inner gradient is written in closed form (LN-fused L2 backward,
// tanh-GELU derivative) as in the reference, so first-order autograd over it gives exact outer
// gradients, and the kernels' backward differentiates the same closed form by hand.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mt::ttt::detail {

struct ScanSpec {
  int64_t layers = 1;      // inner layers: 1 = TTT-Linear, n >= 2 = TTT-MLP of n layers (GELU between)
  int64_t K = 16;          // mini-batch size
  int64_t s0 = 0;          // in-mini-batch index of the first token (> 0: accumulators are live)
  int64_t group_size = 0;  // segments per checkpoint group (0: one group)
  double eps = 1e-6;       // inner LayerNorm eps (reference: 1e-6, biased variance, eps in sqrt)
};

// All tensors in the inner dtype (float32 or float64), contiguous.
struct ScanInputs {
  at::Tensor XQa, XKa;  // [N, L, f+1]: queries / keys with a column of ones (bias as a weight row)
  at::Tensor XV;        // [N, L, f]
  at::Tensor lr;        // [N, L]: base_lr * sigmoid(...) / f, per token
  at::Tensor tok;       // [L]: token factor max(1/i + learnable, 0) of every token's in-mini-batch index
  at::Tensor lnw, lnb;  // [N, 1, f]: inner LayerNorm
  // Per inner layer l: state W[l] [N, d_l+1, d_{l+1}] (bias as the last row) and gradient sum G[l] of
  // the same shape (zero when s0 == 0). d_0 = f, hidden widths 4f, last width f.
  std::vector<at::Tensor> W, G;
};

struct ScanOutputs {
  at::Tensor out;  // [N, L, f]: XQ + LN(f_res(XQ; W_t))
  std::vector<at::Tensor> W, G;
};

// Probe inputs/outputs (no gradient).
struct ScanProbes {
  at::Tensor tokprev;            // [L]: token factor of the previous in-mini-batch index (0 for the first)
  std::vector<at::Tensor> W0;    // [N, ...] per inner layer: learned initial weights for l0
  at::Tensor l0, lprev, lafter;  // [N, L] outputs, filled by the scan
};

// Runs the scan; differentiable (custom backward) when grad mode is on and an input requires grad.
ScanOutputs scan(const ScanSpec& spec, const ScanInputs& in, ScanProbes* probes = nullptr);

}  // namespace mt::ttt::detail
