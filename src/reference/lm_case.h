#pragma once
// check-reference runner for lm cases (see shared/reference/README.md).
namespace mt::ref {
// Registers the "lm" kind of reference case with check-reference.
void register_lm_case();
}  // namespace mt::ref
