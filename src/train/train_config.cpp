#include "train/train_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <set>
#include <sstream>

#include "util/choices.h"
#include "util/error.h"
#include "util/yaml_read.h"

namespace mt::train {

namespace {
using yaml::read;
using yaml::reject_unknown;

// Sets root[a][b]... = YAML::Load(value) for "a.b=value".
void apply_override(YAML::Node root, const std::string& kv) {
  const size_t eq = kv.find('=');
  MT_CHECK(eq != std::string::npos && eq > 0, "--set ", kv, ": expected FIELD=VALUE (e.g. optim.lr=1e-4)");
  const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) {
    MT_CHECK(!p.empty(), "--set ", kv, ": empty field name");
    parts.push_back(p);
  }
  YAML::Node v;
  try {
    v = YAML::Load(value);
  } catch (const std::exception& e) {
    fail("--set ", kv, ": cannot read the value: ", e.what());
  }
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = chain.back()[parts[i]];
    MT_CHECK(!child.IsDefined() || child.IsNull() || child.IsMap(), "--set ", kv, ": ", parts[i], " is not a section");
    chain.push_back(child);
  }
  chain.back()[parts.back()] = v;
}

// moshi-finetune's wandb section (project, run_name, key, offline). We log to metrics.train.jsonl /
// metrics.eval.jsonl in the run folder instead (the same records moshi-finetune writes); an API key
// is never echoed.
void read_wandb(const YAML::Node& root, const std::string& w, TrainConfig& c, std::set<std::string>& s) {
  s.insert("wandb");
  const YAML::Node n = root["wandb"];
  if (!n || n.IsNull()) return;
  MT_CHECK(n.IsMap(), w, "wandb: expected a mapping");
  std::set<std::string> sw;
  read(n, w + "wandb.", "project", c.wandb.project, sw);
  read(n, w + "wandb.", "run_name", c.wandb.run_name, sw);
  read(n, w + "wandb.", "key", c.wandb.key, sw);
  read(n, w + "wandb.", "offline", c.wandb.offline, sw);
  reject_unknown(n, sw, w + "wandb.");
  if (!c.wandb.project.empty())
    c.notes.push_back(str("wandb: not used (project '", c.wandb.project,
                          "'); metrics go to metrics.train.jsonl and metrics.eval.jsonl in the run folder"));
}
}  // namespace

namespace {
const util::Choices<Sharding> kShardings{
    {{"none", Sharding::kNone}, {"optimizer", Sharding::kOptimizer}, {"gradients", Sharding::kGradients}}};
}  // namespace

const char* name(Sharding s) { return kShardings.name(s); }

int64_t TrainConfig::chunk_frames() const { return static_cast<int64_t>(std::ceil(duration_sec * frame_rate - 1e-9)); }

void TrainConfig::validate() const {
  MT_CHECK(!run_dir.empty(), source, ": run_dir is required");
  MT_CHECK(!train_data.empty(), source, ": data.train_data is required");
  MT_CHECK(duration_sec > 0 && chunk_frames() >= 1, source, ": duration_sec must be > 0, got ", duration_sec);
  MT_CHECK(batch_size >= 1, source, ": batch_size must be >= 1");
  MT_CHECK(num_microbatches >= 1, source, ": num_microbatches must be >= 1");
  MT_CHECK(max_steps >= 1, source, ": max_steps must be >= 1");
  MT_CHECK(log_freq >= 1, source, ": log_freq must be >= 1");
  MT_CHECK(eval_freq >= 0 && ckpt_freq >= 0, source, ": eval_freq and ckpt_freq must be >= 0");
  MT_CHECK(num_ckpt_keep >= 1, source, ": num_ckpt_keep must be >= 1");
  MT_CHECK(bucket_cap_mb > 0 && bucket_cap_mb <= 4096, source, ": bucket_cap_mb must be in (0, 4096], got ",
           bucket_cap_mb);
  MT_CHECK(optim.lr > 0, source, ": optim.lr must be > 0");
  MT_CHECK(optim.weight_decay >= 0 && alpha_weight_decay >= 0, source, ": weight decays must be >= 0");
  MT_CHECK(optim.pct_start > 0 && optim.pct_start < 1, source, ": optim.pct_start must be in (0, 1)");
  MT_CHECK(first_codebook_weight_multiplier >= 0 && text_padding_weight >= 0, source, ": loss weights must be >= 0");
  MT_CHECK(param_dtype == "bfloat16" || param_dtype == "float32", source, ": param_dtype: '", param_dtype,
           "' (bfloat16 or float32)");
  MT_CHECK(!(full_finetuning && model.lora.enable), source, ": full_finetuning and lora.enable exclude each other");
  MT_CHECK(full_finetuning || model.lora.enable || model.ttt.enable, source,
           ": nothing to train: set full_finetuning, lora.enable or ttt.enable");
  MT_CHECK(max_bad_steps >= 0, source, ": max_bad_steps must be >= 0");
  MT_CHECK(!do_eval || !eval_data.empty(), source, ": do_eval needs data.eval_data");
}

TrainConfig TrainConfig::load(const std::string& path, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const std::exception& e) {
    fail(path, ": cannot read YAML: ", e.what());
  }
  return yaml::with_file_context(path, [&] {
    MT_CHECK(root.IsMap(), path, ": expected a YAML mapping at the top");
    for (const auto& kv : overrides) apply_override(root, kv);
    TrainConfig c;
    c.source = path;
    {
      YAML::Emitter em;
      em << root;
      c.yaml_text = std::string(em.c_str()) + "\n";
    }
    const std::string w = path + ": ";
    std::set<std::string> s;
    read(root, w, "run_dir", c.run_dir, s);
    read(root, w, "overwrite_run_dir", c.overwrite_run_dir, s);
    s.insert("data");
    if (root["data"]) {
      const YAML::Node d = root["data"];
      MT_CHECK(d.IsMap(), w, "data: expected a mapping");
      std::set<std::string> sd;
      read(d, w + "data.", "train_data", c.train_data, sd);
      read(d, w + "data.", "eval_data", c.eval_data, sd);
      read(d, w + "data.", "shuffle", c.shuffle, sd);
      read(d, w + "data.", "token_cache", c.token_cache, sd);
      read(d, w + "data.", "user_stream", c.user_stream, sd);
      MT_CHECK(c.user_stream == "copy" || c.user_stream == "silence", w, "data.user_stream: '", c.user_stream,
               "' (expected copy or silence)");
      reject_unknown(d, sd, w + "data.");
    }
    read(root, w, "duration_sec", c.duration_sec, s);
    read(root, w, "frame_rate", c.frame_rate, s);
    read(root, w, "batch_size", c.batch_size, s);
    read(root, w, "num_microbatches", c.num_microbatches, s);
    read(root, w, "max_steps", c.max_steps, s);
    read(root, w, "seed", c.seed, s);
    read(root, w, "log_freq", c.log_freq, s);
    read(root, w, "eval_freq", c.eval_freq, s);
    read(root, w, "do_eval", c.do_eval, s);
    read(root, w, "eval_batches", c.eval_batches, s);
    read(root, w, "ckpt_freq", c.ckpt_freq, s);
    read(root, w, "do_ckpt", c.do_ckpt, s);
    read(root, w, "num_ckpt_keep", c.num_ckpt_keep, s);
    read(root, w, "save_adapters", c.save_adapters, s);
    s.insert("optim");
    if (root["optim"]) {
      const YAML::Node o = root["optim"];
      MT_CHECK(o.IsMap(), w, "optim: expected a mapping");
      std::set<std::string> so;
      read(o, w + "optim.", "lr", c.optim.lr, so);
      read(o, w + "optim.", "weight_decay", c.optim.weight_decay, so);
      read(o, w + "optim.", "pct_start", c.optim.pct_start, so);
      read(o, w + "optim.", "fused", c.optim.fused, so);
      reject_unknown(o, so, w + "optim.");
    }
    read(root, w, "max_norm", c.max_norm, s);
    read(root, w, "first_codebook_weight_multiplier", c.first_codebook_weight_multiplier, s);
    read(root, w, "text_padding_weight", c.text_padding_weight, s);
    read(root, w, "full_finetuning", c.full_finetuning, s);
    read(root, w, "gradient_checkpointing", c.gradient_checkpointing, s);
    read(root, w, "param_dtype", c.param_dtype, s);
    read(root, w, "alpha_weight_decay", c.alpha_weight_decay, s);
    read(root, w, "max_bad_steps", c.max_bad_steps, s);
    read(root, w, "device", c.device, s);
    read(root, w, "threads", c.threads, s);
    read(root, w, "init_seed", c.init_seed, s);
    std::string sharding = "none";
    read(root, w, "sharding", sharding, s);
    c.sharding = kShardings.parse(sharding, w + "sharding");
    read(root, w, "bucket_cap_mb", c.bucket_cap_mb, s);
    read_wandb(root, w, c, s);
    c.model = lm::ModelConfigFile::from_yaml(root, path, s);
    // Pitfalls.md row 9: a setting that nothing reads in this run is never silent. Ours is an error;
    // moshi-finetune's own keys (its example sets eval_freq with do_eval false) get a note, so its files
    // run unchanged and the user still hears that the setting does nothing.
    auto unread = [&](const YAML::Node& n, const char* key, bool read_here, const char* why, bool ours) {
      if (!n || !n[key] || n[key].IsNull() || read_here) return;
      if (n[key].IsScalar() && n[key].Scalar().empty()) return;  // eval_data: '' (the example's "unset")
      MT_CHECK(!ours, w, key, " is set, but ", why, ": no code reads it (remove it)");
      c.notes.push_back(str(key, " is set, but ", why, ": it has no effect in this run"));
    };
    unread(root, "eval_batches", c.do_eval, "do_eval is false", true);
    unread(root, "eval_freq", c.do_eval, "do_eval is false", false);
    unread(root["data"], "eval_data", c.do_eval, "do_eval is false", false);
    for (const char* k : {"ckpt_freq", "num_ckpt_keep", "save_adapters"})
      unread(root, k, c.do_ckpt, "do_ckpt is false", false);
    for (const auto& n : c.model.notes) c.notes.push_back(n);
    // Data paths are relative to the config's folder, like the model paths.
    auto resolve = [&](std::string& p) {
      if (!p.empty() && p[0] != '/') {
        const auto slash = path.find_last_of('/');
        if (slash != std::string::npos) p = path.substr(0, slash + 1) + p;
      }
    };
    resolve(c.train_data);
    resolve(c.eval_data);
    resolve(c.token_cache);
    c.validate();
    return c;
  });
}

}  // namespace mt::train
