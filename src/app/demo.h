#pragma once
// The built-in default job (`moshi-ttt demo`): does TTT help where attention cannot see? On a synthetic
// token dataset whose motifs recur far beyond the attention window (train/synthetic.h), train a tiny
// Moshi with local attention and the same model with a hybrid TTT layer, from scratch on the CPU, then
// score held-out files and report the loss by position, on the frames only memory can predict.
#include <string>

namespace mt::app {

struct DemoOptions {
  std::string run_dir = "runs/demo";
  int64_t steps = 1500;  // optimizer steps per model (the recall sets in after ~500-900)
  int64_t window = 8;    // attention context (frames) of both models
  std::string ttt_type = "linear";
  double lr = 3e-3;
  int64_t ttt_layer = 0;    // which of the two layers gets the TTT block
  double ttt_base_lr = 0;   // inner base lr (0: the paper's, 1 for linear, 0.1 for mlp)
  int64_t mini_batch = 16;  // TTT mini-batch (frames)
  // ttt-lm-pytorch's shared Q/K projection with causal convolutions: the convolutions let a key hold
  // the previous frames, which is what a recall needs (without, tiny Moshi did not learn it, see README).
  bool share_qk = true;
  double ttt_lr_multiplier = 5;  // ttt.weight_lr_multiplier (10 and 20 did not learn in 800 steps)
  // Synthetic data: repeat (shared/spec/demo.md's task: random frames, then the same again), lexicon
  // (a per-file token permutation) or motifs (cued motifs that recur).
  std::string pattern = "repeat";
  double ttt_gate = 0.1;               // initial gating alpha of the TTT block (output scaled by tanh(alpha))
  int64_t ttt_heads = 0;               // TTT heads (0: the model's)
  int64_t batch = 8;                   // training sequences per step
  std::string placement = "parallel";  // ttt.placement of the hybrid block
  int threads = 0;
  std::string device = "cpu";
  bool quiet = false;
};

struct DemoResult {
  double baseline_recall = 0, ttt_recall = 0;  // mean CE (nats) on the recall frames of held-out files
  double baseline_other = 0, ttt_other = 0;    // mean CE on every other scored frame
  std::string report_dir;
};

DemoResult run_demo(const DemoOptions& opt);

}  // namespace mt::app
