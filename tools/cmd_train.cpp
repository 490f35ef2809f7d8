// moshi-ttt train --config train.yaml [--set field=value ...] [--resume]: fine-tune a Moshi with any
// TTT integration (see src/train/trainer.h).
#include <cstdio>

#include "tools/commands.h"
#include "util/error.h"
#include "train/trainer.h"

namespace mt::cli {

void add_train(CLI::App& app) {
  struct Opts {
    std::string config, resume_from;
    std::vector<std::string> sets;
    bool resume = false, quiet = false;
    int64_t stop_at = -1;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("train", "fine-tune a Moshi LM (with TTT / LoRA) on a token dataset");
  sub->add_option("--config", o->config, "training YAML (moshi-finetune's fields + model, ttt:, lora:)")->required();
  sub->add_option("--set", o->sets, "override a field, e.g. --set optim.lr=1e-4 --set max_steps=100");
  sub->add_flag("--resume", o->resume, "continue from the newest checkpoint in run_dir");
  sub->add_option("--resume-from", o->resume_from, "continue from this checkpoint folder");
  sub->add_option("--stop-at-step", o->stop_at, "checkpoint and stop after this many steps (continue with --resume)");
  sub->add_flag("--quiet", o->quiet, "no progress lines");
  set_handler(sub, [o]() {
    train::TrainConfig cfg = train::TrainConfig::load(o->config, o->sets);
    train::TrainOptions opt;
    opt.resume = o->resume || !o->resume_from.empty();
    opt.resume_from = o->resume_from;
    opt.stop_at_step = o->stop_at;
    opt.quiet = o->quiet;
    train::TrainSummary s = train::run_training(cfg, opt);
    std::printf("trained %lld steps: loss %.4f%s, %.0f frames/s%s; run dir %s (metrics.jsonl, loss.png, checkpoints/)\n",
                (long long)s.steps_done, s.last_loss,
                s.last_eval_loss >= 0 ? str(", eval loss ", s.last_eval_loss).c_str() : "", s.tokens_per_s,
                s.skipped_steps ? str(", ", s.skipped_steps, " steps skipped (non-finite)").c_str() : "", s.run_dir.c_str());
    return 0;
  });
}

}  // namespace mt::cli
