#pragma once
// The TTT inner loop for one stream (one batch element and head) on the CPU, as small matrix products
// over its inner state: the dual form of spec 1.5 for one segment (the tokens of one mini-batch inside
// a call), for TTT-Linear (one inner layer) and TTT-MLP (n >= 2 layers, tanh-GELU between them), every
// layer's gradient taken at the mini-batch start weights (spec 1.12), the LN-fused L2 gradient in
// closed form; and its hand-written backward. It computes what detail::scan's tensor path computes
// with ~30 (Linear) to ~100 (MLP) small ops per segment and head, without their dispatch (f = 64, a
// mini-batch of 16: each op is a few microseconds of bookkeeping around a few hundred nanoseconds of
// arithmetic), and replaces the autograd recomputation of the backward (~3x the forward's ops, each
// with its graph node).
#include <cstdint>
#include <vector>

namespace mt::ttt::detail {

// One stream's view of a scan call : inputs, outputs and the inner state, per inner layer
// l of widths d_l -> d_{l+1} (TTT-Linear: one layer f -> f; TTT-MLP: f -> 4f -> ... -> f).
struct ScanStream {
  const float* xqa = nullptr;  // [L, f+1] queries with a column of ones
  const float* xka = nullptr;  // [L, f+1] keys with a column of ones
  const float* xv = nullptr;   // [L, f]
  const float* lr = nullptr;   // [L] per-token inner learning rate
  const float* tok = nullptr;  // [L] token factor (shared by all streams)
  const float* lnw = nullptr;  // [f] inner LayerNorm
  const float* lnb = nullptr;  // [f]
  float* out = nullptr;        // [L, f]: XQ + LN(f_res(XQ)); nullptr: advance the state only
  std::vector<float*> W, G;    // per layer [d_l + 1, d_{l+1}] state (bias as the last row) and gradient sum,
                               // advanced in place
  // Inner-loss probes (null / empty when not wanted): the previous token factor per token, the learned
  // initial weights per layer, and the per-token losses written.
  const float* tokprev = nullptr;  // [L]
  std::vector<const float*> W0;
  float* l0 = nullptr;      // [L]
  float* lprev = nullptr;   // [L]
  float* lafter = nullptr;  // [L]
};

// Tokens [t0, t0+m) of one mini-batch; d: the widths d_0 = f, hidden widths, d_n = f. g_live: G holds
// this mini-batch's sums so far (else they are zero and overwritten). commit: the segment ends the
// mini-batch (W takes the update, G restarts at zero). scratch: scan_segment_scratch(m, d) floats.
// Returns whether G is live afterwards.
// keys (optional, scan_keys_scratch(m, d) floats): where the keys' blocks of the segment go, with what the
// backward needs of them, so that scan_segment_backward of the same segment and state can skip them.
bool scan_segment(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, bool commit, bool g_live,
                  double eps, float* scratch, float* keys = nullptr);
int64_t scan_segment_scratch(int64_t K, const std::vector<int64_t>& d);
int64_t scan_keys_scratch(int64_t K, const std::vector<int64_t>& d);

// Gradients of one stream, written by scan_segment_backward: the per-token rows of a segment are
// written by its backward alone (no initial values needed); dlnw and dlnb accumulate over segments (the
// caller zeroes them once per call).
struct ScanStreamGrads {
  const float* dout;  // [L, f] gradient of the outputs
  float* dxqa;        // [L, f+1]
  float* dxka;        // [L, f+1]
  float* dxv;         // [L, f]
  float* dlr;         // [L]
  float* dtok;        // [L]      this stream's share
  float* dlnw;        // [f]      (accumulated)
  float* dlnb;        // [f]      (accumulated)
  // Per layer: on entry the gradient w.r.t. the state (W, G) after the segment, on return w.r.t. the
  // state before it (dG: zero unless g_live, the sums being a zero constant then).
  std::vector<float*> dW, dG;
};

// Backward of scan_segment for the same arguments: s holds the state before the segment (s.W, s.G are
// read, not advanced; s.out and the probes are not used). Recomputes the segment's forward in scratch,
// except the keys' blocks when `keys` holds them (from scan_segment of the same segment and state).
void scan_segment_backward(const ScanStream& s, const ScanStreamGrads& g, const std::vector<int64_t>& d, int64_t t0,
                           int64_t m, bool commit, bool g_live, double eps, float* scratch, float* keys = nullptr);

}  // namespace mt::ttt::detail
