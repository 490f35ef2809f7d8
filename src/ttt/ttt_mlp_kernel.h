#pragma once
// TTT-MLP's inner loop (n >= 2 inner layers, tanh-GELU between them) for one stream on the CPU, as
// plain loops: the dual form of spec 1.5 for one segment, every layer's gradient taken at the
// mini-batch start weights (spec 1.12), the LN-fused L2 gradient in closed form. What detail::scan's
// tensor path computes with ~100 small ops per segment and head. Forward only (with the inner-loss
// probes); the autograd path keeps the tensor ops.
#include <cstdint>
#include <vector>

namespace mt::ttt::detail {

struct MlpStream {
  const float* xqa;  // [L, f+1] queries with a column of ones
  const float* xka;  // [L, f+1] keys with a column of ones
  const float* xv;   // [L, f]
  const float* lr;   // [L]
  const float* tok;  // [L]
  const float* lnw;  // [f]
  const float* lnb;  // [f]
  float* out;        // [L, f]
  std::vector<float*> W, G;  // per inner layer l: [d_l + 1, d_{l+1}] (bias as the last row)
  // Probes (null / empty when not wanted).
  const float* tokprev = nullptr;
  std::vector<const float*> W0;
  float* l0 = nullptr;
  float* lprev = nullptr;
  float* lafter = nullptr;
};

// d: the widths d_0 = f, hidden widths, d_n = f. Same contract as linear_segment.
bool mlp_segment(const MlpStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, bool commit, bool g_live,
                 double eps, float* scratch);
int64_t mlp_segment_scratch(int64_t K, const std::vector<int64_t>& d);

}  // namespace mt::ttt::detail
