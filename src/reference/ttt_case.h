#pragma once
// check-reference runner for ttt cases (see shared/reference/README.md).
namespace mt::ref {
// Registers the "ttt" kind of reference case with check-reference.
void register_ttt_case();
}  // namespace mt::ref
