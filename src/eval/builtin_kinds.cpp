#include "eval/check_reference.h"
#include "lm/lm_reference.h"
#include "mimi/mimi_reference.h"
#include "ttt/inplace_reference.h"
#include "train/train_reference.h"
#include "ttt/ttt_reference.h"

namespace mt::eval {

void register_builtin_kinds() {
  lm::register_reference_kind();
  ttt::register_reference_kind();
  ttt::register_inplace_reference_kind();
  train::register_reference_kind();
  mimi::register_reference_kind();
}

}  // namespace mt::eval
