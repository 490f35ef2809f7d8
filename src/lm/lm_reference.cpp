#include "lm/lm_reference.h"

namespace mt::lm {
void register_reference_kind() {}
}
