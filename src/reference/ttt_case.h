#pragma once
// check-reference runner for ttt cases (see shared/reference/README.md).
namespace mt::ttt {
void register_reference_kind();
}
