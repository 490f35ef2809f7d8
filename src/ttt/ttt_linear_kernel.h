#pragma once
// TTT-Linear's inner loop for one stream (one batch element and head) on the CPU, as plain loops over
// its [f+1, f] state: the dual form of spec 1.5 for one segment (the tokens of one mini-batch inside a
// call), with the LN-fused L2 gradient in closed form. It computes what detail::scan's general path
// computes with ~30 tensor ops per segment and head, without their dispatch (f = 64, a mini-batch of
// 16: each op is a few microseconds of bookkeeping around a few hundred nanoseconds of arithmetic).
// Forward only (with the inner-loss probes): the autograd path keeps the tensor ops.
#include <cstdint>
#include <vector>

namespace mt::ttt::detail {

// One stream's view of a scan call (both kernels): inputs, outputs and the inner state, per inner layer
// l of widths d_l -> d_{l+1} (TTT-Linear: one layer f -> f).
struct ScanStream {
  const float* xqa;  // [L, f+1] queries with a column of ones
  const float* xka;  // [L, f+1] keys with a column of ones
  const float* xv;   // [L, f]
  const float* lr;   // [L] per-token inner learning rate
  const float* tok;  // [L] token factor (shared by all streams)
  const float* lnw;  // [f] inner LayerNorm
  const float* lnb;  // [f]
  float* out;        // [L, f]: XQ + LN(f_res(XQ))
  std::vector<float*> W, G;  // per layer [d_l + 1, d_{l+1}] state (bias as the last row) and gradient sum,
                             // advanced in place
  // Inner-loss probes (null / empty when not wanted): the previous token factor per token, the learned
  // initial weights per layer, and the per-token losses written.
  const float* tokprev = nullptr;  // [L]
  std::vector<const float*> W0;
  float* l0 = nullptr;      // [L]
  float* lprev = nullptr;   // [L]
  float* lafter = nullptr;  // [L]
};

// Tokens [t0, t0+m) of one mini-batch. g_live: G holds this mini-batch's sum so far (else it is zero
// and overwritten). commit: the segment ends the mini-batch (W takes the update, G restarts at zero).
// scratch: at least linear_segment_scratch(m, f) floats. Returns whether G is live afterwards.
bool linear_segment(const ScanStream& s, int64_t f, int64_t t0, int64_t m, bool commit, bool g_live, double eps,
                    float* scratch);

inline int64_t linear_segment_scratch(int64_t K, int64_t f) { return 3 * K * (f + 1) + K * K + 3 * f; }

}  // namespace mt::ttt::detail
