#pragma once
// TTT-MLP's inner loop (n >= 2 inner layers, tanh-GELU between them) for one stream on the CPU, as
// plain loops: the dual form of spec 1.5 for one segment, every layer's gradient taken at the
// mini-batch start weights (spec 1.12), the LN-fused L2 gradient in closed form. What detail::scan's
// tensor path computes with ~100 small ops per segment and head. Forward only (with the inner-loss
// probes); the autograd path keeps the tensor ops.
#include <cstdint>
#include <vector>

#include "ttt/ttt_linear_kernel.h"  // ScanStream

namespace mt::ttt::detail {


// d: the widths d_0 = f, hidden widths, d_n = f. Same contract as linear_segment.
bool mlp_segment(const ScanStream& s, const std::vector<int64_t>& d, int64_t t0, int64_t m, bool commit, bool g_live,
                 double eps, float* scratch);
int64_t mlp_segment_scratch(int64_t K, const std::vector<int64_t>& d);

}  // namespace mt::ttt::detail
