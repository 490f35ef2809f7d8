#pragma once
// check-reference runner for "inplace" cases (In-Place TTT FFN; see shared/reference/README.md).
namespace mt::ref {
// Registers the "inplace" kind of reference case with check-reference.
void register_inplace_case();
}  // namespace mt::ref
