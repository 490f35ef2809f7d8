// moshi-ttt demo: the built-in default job. Trains a tiny local-attention Moshi and the same model with
// a hybrid TTT layer on synthetic data with long-range recurrences, then reports (plots + summary) how
// the held-out loss differs where only memory beyond the attention window can help. See
// src/train/demo.h. Streaming generation with a tiny model is `moshi-ttt generate`.
#include "app/demo.h"
#include "tools/commands.h"

namespace mt::cli {

void add_demo(CLI::App& app) {
  auto o = std::make_shared<app::DemoOptions>();
  auto* sub = app.add_subcommand(
      "demo",
      "built-in default: does TTT remember beyond the attention window? (trains two tiny models, ~minutes on CPU)");
  sub->add_option("--run-dir", o->run_dir, "output folder (data, runs, report/)")->capture_default_str();
  sub->add_option("--steps", o->steps, "training steps per model")->capture_default_str();
  sub->add_option("--window", o->window, "attention window (frames) of both models")->capture_default_str();
  sub->add_option("--ttt-type", o->ttt_type, "inner model of the TTT layer: linear or mlp")->capture_default_str();
  sub->add_option("--lr", o->lr, "peak learning rate (OneCycle)")->capture_default_str();
  sub->add_option("--ttt-layer", o->ttt_layer, "layer (0 or 1) that gets the TTT block")->capture_default_str();
  sub->add_option("--ttt-base-lr", o->ttt_base_lr, "inner base lr of the TTT layer (0: 1 for linear, 0.1 for mlp)");
  sub->add_option("--mini-batch", o->mini_batch, "TTT mini-batch (frames)")->capture_default_str();
  sub->add_option("--pattern", o->pattern, "synthetic data: repeat, lexicon or motifs")->capture_default_str();
  sub->add_option("--ttt-placement", o->placement, "hybrid block: after_attention, parallel or before_attention")
      ->capture_default_str();
  sub->add_option("--batch", o->batch, "training sequences per step")->capture_default_str();
  sub->add_option("--ttt-gate", o->ttt_gate, "initial gating alpha of the TTT block")->capture_default_str();
  sub->add_option("--ttt-heads", o->ttt_heads, "heads of the TTT layer")->capture_default_str();
  sub->add_flag("--share-qk,!--no-share-qk", o->share_qk,
                "TTT layer with a shared Q/K projection and causal convolutions")
      ->capture_default_str();
  sub->add_option("--ttt-lr-multiplier", o->ttt_lr_multiplier, "learning-rate multiplier of the TTT weights")
      ->capture_default_str();
  sub->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  sub->add_option("--threads", o->threads, "intra-op threads (default: libtorch's)");
  sub->add_flag("--quiet", o->quiet, "no progress lines");
  set_handler(sub, [o]() {
    app::run_demo(*o);
    return 0;
  });
}

}  // namespace mt::cli
