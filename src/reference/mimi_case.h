#pragma once
// check-reference runner for mimi cases, and the code-comparison rule it uses (also for tests).
#include <ATen/ATen.h>

#include "mimi/mimi.h"

namespace mt::mimi {

// Codes compared by match rate, and exactly where no near-tie exists: along the residual path of the
// reference codes `want`, starting from `latent` (ours), a mismatch is "clear" when the reference's
// centroid is farther than our best by more than tie_rel relative to the distance scale.
struct CodeCheck {
  int64_t total = 0, matches = 0, clear_mismatches = 0;
};
CodeCheck check_codes(const Mimi& m, const at::Tensor& latent, const at::Tensor& got, const at::Tensor& want,
                      double tie_rel);

}  // namespace mt::mimi

namespace mt::ref {
// Registers the "mimi" kind of reference case with check-reference.
void register_mimi_case();
}  // namespace mt::ref
