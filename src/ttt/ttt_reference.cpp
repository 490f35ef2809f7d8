#include "ttt/ttt_reference.h"

namespace mt::ttt {
void register_reference_kind() {}
}
