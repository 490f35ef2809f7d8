#pragma once
// check-reference runner for lm cases (see shared/reference/README.md).
namespace mt::lm {
void register_reference_kind();
}
