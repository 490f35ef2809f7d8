#pragma once
// check-reference for train cases (shared/reference/README.md, train/): moshi-finetune's training steps
// replayed with train_step, the code path of `moshi-ttt train`.
namespace mt::train {
void register_reference_kind();
}
