// moshi-ttt train --config train.yaml [--set field=value ...] [--resume]: fine-tune a Moshi with any
// TTT integration (see src/train/trainer.h).
#include <csignal>
#include <cstdio>

#include "dist/launch.h"
#include "tools/commands.h"
#include "train/memory_plan.h"
#include "train/run_folder.h"
#include "train/trainer.h"
#include "util/error.h"

namespace mt::cli {

void add_train(CLI::App& app) {
  struct Opts {
    std::string config, resume_from;
    std::vector<std::string> sets;
    bool resume = false, quiet = false, dry_run = false;
    int64_t stop_at = -1, nproc = 1;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("train", "fine-tune a Moshi LM (with TTT / LoRA) on a token dataset");
  sub->add_option("--config", o->config, "training YAML (moshi-finetune's fields + model, ttt:, lora:)")->required();
  sub->add_option("--set", o->sets, "override a field, e.g. --set optim.lr=1e-4 --set max_steps=100");
  sub->add_flag("--resume", o->resume, "continue from the newest checkpoint in run_dir");
  sub->add_option("--resume-from", o->resume_from, "continue from this checkpoint folder");
  sub->add_option("--stop-at-step", o->stop_at, "checkpoint and stop after this many steps (continue with --resume)");
  sub->add_flag("--quiet", o->quiet, "no progress lines");
  sub->add_flag("--dry-run", o->dry_run,
                "print the per-rank memory plan (weights, gradients, optimizer, TTT state, activations) for "
                "this config and --nproc / WORLD_SIZE, without building the model; then stop");
  sub->add_option("--nproc", o->nproc,
                  "data parallel: run N ranks on this machine (batch_size is per rank); for several machines, or "
                  "GPUs: torchrun --nproc-per-node N --no-python moshi-ttt train ...")
      ->capture_default_str();
  set_handler(sub, [o]() {
    train::TrainConfig cfg = train::TrainConfig::load(o->config, o->sets);  // config errors before any rank starts
    dist::Launch dist = dist::launch_from_env();
    if (o->dry_run) {
      const int64_t world = o->nproc > 1 ? o->nproc : dist.world_size;
      if (dist.rank == 0) std::printf("%s\n", train::format_plan(train::plan_memory(cfg, world)).c_str());
      return 0;
    }
    if (o->nproc > 1) {
      MT_CHECK(!dist.active(), "--nproc ", o->nproc, " with RANK/WORLD_SIZE already set: use one or the other");
      std::vector<std::string> argv{"moshi-ttt", "train", "--config", o->config};
      for (const auto& s : o->sets) argv.insert(argv.end(), {"--set", s});
      if (o->resume) argv.push_back("--resume");
      if (!o->resume_from.empty()) argv.insert(argv.end(), {"--resume-from", o->resume_from});
      if (o->stop_at >= 0) argv.insert(argv.end(), {"--stop-at-step", std::to_string(o->stop_at)});
      if (o->quiet) argv.push_back("--quiet");
      return dist::spawn_ranks(o->nproc, argv);
    }
    MT_CHECK(o->nproc == 1, "--nproc must be >= 1, got ", o->nproc);
    train::TrainOptions opt;
    opt.dist = dist;
    opt.resume = o->resume || !o->resume_from.empty();
    if (dist.restart_count > 0 && !opt.resume) {
      // torchrun restarted the job after a failure: go on from the last complete checkpoint; without one,
      // the failed attempt's folder is this job's own and starts over.
      opt.resume = !train::latest_checkpoint(cfg.run_dir).empty();
      if (!opt.resume) cfg.overwrite_run_dir = true;
      if (dist.rank == 0)
        std::fprintf(stderr, "torchrun restart %lld: %s\n", (long long)dist.restart_count,
                     opt.resume ? ("resuming from " + train::latest_checkpoint(cfg.run_dir)).c_str()
                                : "no checkpoint yet, starting over");
    }
    opt.resume_from = o->resume_from;
    opt.stop_at_step = o->stop_at;
    opt.quiet = o->quiet;
    train::TrainSummary s = train::run_training(cfg, opt);
    if (s.stopped_by_signal) {
      if (dist.rank == 0)
        std::printf(
            "stopped by %s after step %lld: checkpoint written; continue with: moshi-ttt train --config %s --resume\n",
            s.stopped_by_signal == SIGINT ? "SIGINT" : "SIGTERM", (long long)s.steps_done, o->config.c_str());
      return 128 + s.stopped_by_signal;
    }
    if (dist.rank > 0) return 0;  // rank 0 reports for all
    std::printf(
        "trained %lld steps: loss %.4f%s, %.0f frames/s%s; run dir %s (metrics.jsonl, loss.png, checkpoints/)\n",
        (long long)s.steps_done, s.last_loss,
        s.last_eval_loss >= 0 ? str(", eval loss ", s.last_eval_loss).c_str() : "", s.tokens_per_s,
        s.skipped_steps ? str(", ", s.skipped_steps, " steps skipped (non-finite)").c_str() : "", s.run_dir.c_str());
    return 0;
  });
}

}  // namespace mt::cli
