#include "reference/check_reference.h"
#include "reference/inplace_case.h"
#include "reference/lm_case.h"
#include "reference/mimi_case.h"
#include "reference/train_case.h"
#include "reference/ttt_case.h"

namespace mt::ref {

void register_builtin_kinds() {
  register_lm_case();
  register_ttt_case();
  register_inplace_case();
  register_train_case();
  register_mimi_case();
}

}  // namespace mt::ref
