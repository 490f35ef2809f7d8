#pragma once
// TTT-Linear's inner loop for one stream (one batch element and head) on the CPU, as plain loops over
// its [f+1, f] state: the dual form of spec 1.5 for one segment (the tokens of one mini-batch inside a
// call), with the LN-fused L2 gradient in closed form. It computes what detail::scan's general path
// computes with ~30 tensor ops per segment and head, without their dispatch (f = 64, a mini-batch of
// 16: each op is a few microseconds of bookkeeping around a few hundred nanoseconds of arithmetic).
// Forward only (with the inner-loss probes): the autograd path keeps the tensor ops.
#include <cstdint>

namespace mt::ttt::detail {

struct LinearStream {
  const float* xqa;  // [L, f+1] queries with a column of ones
  const float* xka;  // [L, f+1] keys with a column of ones
  const float* xv;   // [L, f]
  const float* lr;   // [L] per-token inner learning rate
  const float* tok;  // [L] token factor (shared by all streams)
  const float* lnw;  // [f] inner LayerNorm
  const float* lnb;  // [f]
  float* out;        // [L, f]: XQ + LN(f_res(XQ))
  float* W;          // [f+1, f] state (bias as the last row), advanced in place
  float* G;          // [f+1, f] gradient sum of the current mini-batch
  // Inner-loss probes (all null when not wanted): the previous token factor per token, the learned
  // initial weights, and the per-token losses written.
  const float* tokprev = nullptr;  // [L]
  const float* W0 = nullptr;       // [f+1, f]
  float* l0 = nullptr;             // [L]
  float* lprev = nullptr;          // [L]
  float* lafter = nullptr;         // [L]
};

// Tokens [t0, t0+m) of one mini-batch. g_live: G holds this mini-batch's sum so far (else it is zero
// and overwritten). commit: the segment ends the mini-batch (W takes the update, G restarts at zero).
// scratch: at least linear_segment_scratch(m, f) floats. Returns whether G is live afterwards.
bool linear_segment(const LinearStream& s, int64_t f, int64_t t0, int64_t m, bool commit, bool g_live, double eps,
                    float* scratch);

inline int64_t linear_segment_scratch(int64_t K, int64_t f) { return 3 * K * (f + 1) + K * K + 3 * f; }

}  // namespace mt::ttt::detail
