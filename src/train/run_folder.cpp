#include "train/run_folder.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "report/plot.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::train {

std::string prepare_run_dir(const TrainConfig& cfg, bool resume, const std::string& resume_from, bool leader) {
  const fs::path run_dir(cfg.run_dir);
  std::string resume_dir;
  if (resume) {
    resume_dir = resume_from.empty() ? latest_checkpoint(cfg.run_dir) : resume_from;
    MT_CHECK(!resume_dir.empty(), cfg.run_dir, ": --resume: no checkpoint found under checkpoints/");
  } else if (leader && fs::exists(run_dir / "metrics.jsonl")) {
    MT_CHECK(cfg.overwrite_run_dir, cfg.run_dir,
             ": run dir already holds a run (use --resume, or overwrite_run_dir: true)");
    fs::remove_all(run_dir / "checkpoints");
    for (const char* f : kMetricsFiles) fs::remove(run_dir / f);
  }
  if (leader) {
    fs::create_directories(run_dir);
    atomic_write((run_dir / "config.yaml").string(), cfg.yaml_text);
    // moshi-finetune's name for the same document (its tools look for args.yaml in a run folder).
    atomic_write((run_dir / "args.yaml").string(), cfg.yaml_text);
  }
  return resume_dir;
}

namespace {
// Drops the records of steps after start_step (and a torn last line) from one JSON-lines file.
void trim_records(const fs::path& file, int64_t start_step, const std::function<void(const std::string&)>& say) {
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::string kept, line;
  int64_t dropped = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() ||
        (j.is_object() && j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > start_step)) {
      ++dropped;  // a torn last line, or a step this run repeats
      continue;
    }
    kept += line + "\n";
  }
  in.close();
  atomic_write(file.string(), kept);
  if (dropped)
    say(str(file.filename().string(), ": dropped ", dropped, " record(s) after step ", start_step,
            " (they are redone)"));
}
}  // namespace

void trim_after_resume(const std::string& dir, int64_t start_step, const std::function<void(const std::string&)>& say) {
  const fs::path run_dir(dir);
  // Half-written checkpoints were never renamed into place.
  if (fs::is_directory(run_dir / "checkpoints"))
    for (const auto& e : fs::directory_iterator(run_dir / "checkpoints"))
      if (e.path().filename().string().rfind(".tmp.", 0) == 0) fs::remove_all(e.path());
  for (const char* f : kMetricsFiles) trim_records(run_dir / f, start_step, say);
}

std::vector<nlohmann::json> read_metrics(const std::string& run_dir, const std::string& kind) {
  std::vector<nlohmann::json> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.value("kind", "") == kind) out.push_back(std::move(j));
  }
  return out;
}

std::string latest_checkpoint(const std::string& run_dir) {
  fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(root)) return "";
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("checkpoint_", 0) == 0 &&
        fs::exists(e.path() / "training_state.safetensors"))
      dirs.push_back(e.path());
  if (dirs.empty()) return "";
  std::sort(dirs.begin(), dirs.end());
  return dirs.back().string();
}

void write_loss_plot(const std::string& run_dir) {
  std::vector<double> xs, ys, ex, ey;
  for (auto j : read_metrics(run_dir, "train"))
    if (j["loss"].is_number()) {
      xs.push_back(j["step"].get<double>());
      ys.push_back(j["loss"].get<double>());
    }
  for (auto j : read_metrics(run_dir, "eval"))
    if (j["eval_loss"].is_number()) {
      ex.push_back(j["step"].get<double>());
      ey.push_back(j["eval_loss"].get<double>());
    }
  if (xs.empty()) return;
  plot::Chart c;
  c.title = "training loss";
  c.xlabel = "step";
  c.ylabel = "loss (nats, text + audio)";
  c.series.push_back({"train", xs, ys});
  if (!ex.empty()) c.series.push_back({"eval", ex, ey, "points"});
  plot::write_png(c, (fs::path(run_dir) / "loss.png").string());
}

std::string now_iso() {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

}  // namespace mt::train
