#pragma once
// check-reference runner for "inplace" cases (In-Place TTT FFN; see shared/reference/README.md).
namespace mt::ttt {
void register_inplace_reference_kind();
}
