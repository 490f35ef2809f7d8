#pragma once
// The inner loop of TTT (spec 1.4-1.6, 1.12-1.13): a scan over mini-batches of the dual form, for
// N = batch x heads independent streams, with its own backward.
//
// Why a custom autograd function: the inner loop is a long chain of tiny ops (K x f matrices). Run
// op by op over all heads, every op pays libtorch's dispatch plus an intra-op thread fork/join, which
// on a loaded 2-core machine costs milliseconds per op. Here the N streams are split into one chunk
// per thread inside a single at::parallel_for, so each thread runs its whole scan with serial ops.
// The backward recomputes the forward group by group (gradient checkpointing: only the inner state at
// group boundaries is kept) and differentiates each group with autograd inside the same per-thread
// chunks. The per-token inner gradient is written in closed form (LN-fused L2 backward, tanh-GELU
// derivative) as in the reference, so first-order autograd over it gives exact outer gradients.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mt::ttt::detail {

struct ScanSpec {
  int64_t layers = 1;       // inner layers: 1 = TTT-Linear, n >= 2 = TTT-MLP of n layers (GELU between)
  int64_t K = 16;           // mini-batch size
  int64_t s0 = 0;           // in-mini-batch index of the first token (> 0: accumulators are live)
  int64_t group_size = 0;   // segments per checkpoint group (0: one group)
  double eps = 1e-6;        // inner LayerNorm eps (reference: 1e-6, biased variance, eps in sqrt)
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
  at::Tensor out;       // [N, L, f]: XQ + LN(f_res(XQ; W_t))
  std::vector<at::Tensor> W, G;
};

// Probe inputs/outputs (no gradient).
struct ScanProbes {
  at::Tensor tokprev;   // [L]: token factor of the previous in-mini-batch index (0 for the first)
  std::vector<at::Tensor> W0;  // [N, ...] per inner layer: learned initial weights for l0
  at::Tensor l0, lprev, lafter;  // [N, L] outputs, filled by the scan
};

// Runs the scan; differentiable (custom backward) when grad mode is on and an input requires grad.
ScanOutputs scan(const ScanSpec& spec, const ScanInputs& in, ScanProbes* probes = nullptr);

// Number of chunks the N streams are split into (threads on CPU, 1 on CUDA).
int64_t num_chunks(int64_t N, const at::Tensor& like);

}  // namespace mt::ttt::detail
