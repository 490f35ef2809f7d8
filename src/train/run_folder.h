#pragma once
// A training run's folder: config.yaml (and the same as args.yaml, moshi-finetune's name), metrics.jsonl
// (one JSON record per line, "kind" train / eval / summary), moshi-finetune's metrics.train.jsonl and
// metrics.eval.jsonl (its keys), loss.png and checkpoints/checkpoint_NNNNNN/. What is read back from it and how a
// resumed run tidies what a killed one left.
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace mt::train {

// The JSON-lines files of a run: ours, then moshi-finetune's two.
inline constexpr const char* kMetricsFiles[] = {"metrics.jsonl", "metrics.train.jsonl", "metrics.eval.jsonl"};

// Makes the folder for a new run (refusing to overwrite one unless overwrite_run_dir) or finds the
// checkpoint to resume (`resume_from`, else the newest); writes config.yaml on the leader.
// Returns the checkpoint folder to resume from ("" for a new run).
std::string prepare_run_dir(const TrainConfig& cfg, bool resume, const std::string& resume_from, bool leader);
// After resuming at start_step: drops half-written checkpoints and the metrics of the steps this run
// does again (a killed run's records after its last checkpoint, or a torn last line).
void trim_after_resume(const std::string& run_dir, int64_t start_step,
                       const std::function<void(const std::string&)>& say);
// The records of run_dir/metrics.jsonl of one kind ("train" or "eval"), in order; unreadable lines skipped.
std::vector<nlohmann::json> read_metrics(const std::string& run_dir, const std::string& kind);
// Newest complete checkpoint folder under run_dir/checkpoints ("" if none).
std::string latest_checkpoint(const std::string& run_dir);
// run_dir/loss.png: training and eval loss by step.
void write_loss_plot(const std::string& run_dir);
// UTC now, ISO 8601 (the metrics' "at").
std::string now_iso();

}  // namespace mt::train
