#pragma once
// check-reference for train cases (shared/reference/README.md, train/): moshi-finetune's training steps
// replayed with train_step, the code path of `moshi-ttt train`.
namespace mt::ref {
// Registers the "train" kind of reference case with check-reference.
void register_train_case();
}  // namespace mt::ref
