#include "reference/check_reference.h"
#include "reference/lm_case.h"
#include "reference/mimi_case.h"
#include "reference/inplace_case.h"
#include "reference/train_case.h"
#include "reference/ttt_case.h"

namespace mt::eval {

void register_builtin_kinds() {
  lm::register_reference_kind();
  ttt::register_reference_kind();
  ttt::register_inplace_reference_kind();
  train::register_reference_kind();
  mimi::register_reference_kind();
}

}  // namespace mt::eval
