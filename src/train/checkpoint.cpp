#include "train/checkpoint.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "io/hub.h"
#include "io/safetensors.h"
#include "lm/model_config.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::train {

using TensorMap = std::map<std::string, at::Tensor>;

namespace {
// Where micro-batch mb's layer l keeps its stream states in a checkpoint.
std::string state_prefix(size_t mb, size_t l) {
  return "ttt_state.m" + std::to_string(mb) + ".l" + std::to_string(l) + ".";
}

// What each rank holds of its own: its loader position and its streams' TTT states.
TensorMap rank_state(Run& r) {
  TensorMap st;
  for (auto& [k, v] : r.loader->state()) st["loader." + k] = v.cpu().contiguous();
  for (size_t mb = 0; mb < r.states.size(); ++mb)
    for (size_t l = 0; l < r.states[mb].size(); ++l) r.states[mb][l].write(state_prefix(mb, l), st);
  if (r.dp && r.dp->sharded()) {  // ZeRO: each rank's optimizer holds its own shards
    for (auto& [k, v] : r.optim->state_dict()) st["optim." + k] = v.cpu().contiguous();
    for (auto& [k, v] : r.dp->masters()) st["dp_master." + k] = v.cpu().contiguous();
  }
  return st;
}

bool sharded(const Run& r) { return r.dp && r.dp->sharded(); }

std::string rank_state_file(int64_t rank) {
  char fname[64];
  std::snprintf(fname, sizeof fname, "rank_state_%05lld.safetensors", (long long)rank);
  return fname;
}

}  // namespace

// Called by every rank. The other ranks' own states reach the checkpoint in one of two ways: small ones
// (data position, TTT states) are gathered on rank 0, which writes them; with sharded optimizer state
// (gigabytes a rank for a 7B) each rank writes its own file into the folder rank 0 prepared, which
// needs the run folder on storage every rank sees (as resuming does anyway).
void save_checkpoint(Run& r, int64_t steps_done) {
  const TrainConfig& cfg = r.cfg;
  fs::path root = fs::path(cfg.run_dir) / "checkpoints";
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint_%06lld", (long long)steps_done);
  fs::path final_dir = root / name, tmp = root / (std::string(".tmp.") + name);
  if (r.leader()) {
    fs::remove_all(tmp);
    fs::create_directories(tmp / "consolidated");
  }
  std::vector<std::string> others;
  if (r.group && sharded(r)) {
    r.group->barrier();  // the folder exists
    if (!r.leader()) {
      TensorMap mine = rank_state(r);
      io::save((tmp / rank_state_file(r.opt.dist.rank)).string(), mine);
    }
    r.group->barrier();  // every rank's file is in
  } else if (r.group) {
    TensorMap mine = rank_state(r);
    others = r.group->all_gather_bytes(r.leader() ? std::string() : io::to_bytes({mine.begin(), mine.end()}));
  }
  if (!r.leader()) return;
  const bool full = cfg.full_finetuning || !cfg.save_adapters || cfg.model.weights.empty();
  std::vector<std::pair<std::string, at::Tensor>> all, adapters;
  for (const auto& kv : r.model->named_parameters()) {
    at::Tensor t = kv.value().detach().cpu();
    all.emplace_back(kv.key(), t);
    if (trains(cfg, kv.key()) && !cfg.full_finetuning) adapters.emplace_back(kv.key(), t);
  }
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"producer", "moshi-ttt train"}, {"step", std::to_string(steps_done)}};
  nlohmann::json cj = cfg.model.lm.to_json();
  cj["lora"] = cfg.model.lora.enable;
  cj["lora_rank"] = cfg.model.lora.rank;
  cj["lora_scaling"] = cfg.model.lora.scaling;
  io::atomic_write((tmp / "consolidated" / "config.json").string(), cj.dump(2) + "\n");
  if (full) io::save((tmp / "consolidated" / "consolidated.safetensors").string(), all, meta);
  if (!adapters.empty() && cfg.save_adapters)
    io::save((tmp / "consolidated" / "lora.safetensors").string(), adapters, meta);
  // model.yaml: score / generate / inspect load this checkpoint with --model consolidated/.
  {
    std::ofstream y(tmp / "consolidated" / "model.yaml");
    y << "# written by moshi-ttt train at step " << steps_done << "\nmoshi_paths:\n  config_path: config.json\n";
    if (full)
      y << "  moshi_path: consolidated.safetensors\n";
    else
      y << "  moshi_path: "
        << (io::hub::is_hub_path(cfg.model.weights) ? cfg.model.weights : fs::absolute(cfg.model.weights).string())
        << "\n  lora_path: lora.safetensors\n";
    // The ttt / lora sections as the run used them (re-read from the run's config).
    YAML::Node doc = YAML::Load(cfg.yaml_text);
    for (const char* k : {"ttt", "lora"})
      if (doc[k]) {
        YAML::Node n;
        n[k] = doc[k];
        YAML::Emitter em;
        em << n;
        y << em.c_str() << "\n";
      }
  }
  // Training state: optimizer, data position, TTT states, counters. Data position and TTT states are
  // per rank: rank 0's here, the others' in rank_state_NNNNN.safetensors.
  TensorMap st = rank_state(r);
  if (!sharded(r))
    for (auto& [k, v] : r.optim->state_dict()) st["optim." + k] = v.cpu().contiguous();
  for (size_t q = 1; q < others.size(); ++q)
    io::atomic_write((tmp / rank_state_file(static_cast<int64_t>(q))).string(), others[q]);
  st["world_size"] = nn::long_tensor({r.opt.dist.world_size});
  st["sharding"] = nn::long_tensor({static_cast<int64_t>(r.cfg.sharding)});
  st["steps_done"] = nn::long_tensor({steps_done});
  st["bad_steps"] = nn::long_tensor({r.bad_steps});
  std::vector<std::pair<std::string, at::Tensor>> stv(st.begin(), st.end());
  io::save((tmp / "training_state.safetensors").string(), stv, meta);
  io::atomic_write((tmp / "config.yaml").string(), cfg.yaml_text);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  // Keep the newest num_ckpt_keep.
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && e.path().filename().string().rfind("checkpoint_", 0) == 0) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (size_t i = 0; i + cfg.num_ckpt_keep < dirs.size(); ++i) fs::remove_all(dirs[i]);
  r.say(str("checkpoint: ", final_dir.string()));
}

void restore_checkpoint(Run& r, const std::string& dir) {
  io::SafeTensors f((fs::path(dir) / "training_state.safetensors").string());
  TensorMap all;
  for (const auto& t : f.tensors()) all[t.name] = f.get(t.name);
  const int64_t saved_world = all.count("world_size") ? nn::long_vector(all.at("world_size")).at(0) : 1;
  MT_CHECK(saved_world == r.opt.dist.world_size, dir, ": the checkpoint was written by ", saved_world,
           " data-parallel rank(s); resume it with the same number (--nproc ", saved_world, "), not ",
           r.opt.dist.world_size);
  const int64_t saved_sharding = all.count("sharding") ? nn::long_vector(all.at("sharding")).at(0) : 0;
  MT_CHECK(saved_sharding == static_cast<int64_t>(r.cfg.sharding) || r.opt.dist.world_size == 1, dir,
           ": the checkpoint was written with sharding: ", name(static_cast<Sharding>(saved_sharding)),
           "; resume it with the same setting, not ", name(r.cfg.sharding));
  if (r.opt.dist.rank > 0) {  // this rank's own loader position, TTT states (and optimizer shards)
    io::SafeTensors rf((fs::path(dir) / rank_state_file(r.opt.dist.rank)).string());
    for (const auto& t : rf.tensors()) all[t.name] = rf.get(t.name);
  }
  TensorMap o, l, masters;
  for (const auto& [k, v] : all) {
    if (k.rfind("optim.", 0) == 0) o[k.substr(6)] = v;
    if (k.rfind("loader.", 0) == 0) l[k.substr(7)] = v;
    if (k.rfind("dp_master.", 0) == 0) masters[k.substr(10)] = v;
  }
  if (sharded(r)) r.dp->load_masters(masters);
  r.optim->load_state_dict(o);
  r.loader->restore(l);
  for (size_t mb = 0; mb < r.states.size(); ++mb)
    for (size_t li = 0; li < r.states[mb].size(); ++li) r.states[mb][li].read(state_prefix(mb, li), all, r.dev);
  r.start_step = nn::long_vector(all.at("steps_done")).at(0);
  r.bad_steps = nn::long_vector(all.at("bad_steps")).at(0);
}

lm::LMModel starting_model(const TrainConfig& cfg, const std::string& resume_dir, int64_t* initialised,
                           at::Device device) {
  lm::ModelConfigFile mc = cfg.model;
  MT_CHECK(!mc.lm.quantize,
           "train: the base model is q8 (config quantize: true), which is for inference only; "
           "train on the float checkpoint and quantise the result (moshi-ttt quantize)");
  mc.lora_weights.clear();  // a run's adapters come from its own checkpoints only
  if (!resume_dir.empty()) {
    const fs::path cons = fs::path(resume_dir) / "consolidated";
    if (fs::exists(cons / "consolidated.safetensors"))
      mc.weights = (cons / "consolidated.safetensors").string();
    else
      mc.lora_weights = (cons / "lora.safetensors").string();
  }
  // Weights from a file load in the run's dtype straight onto the training device (no host copy of a
  // 7B, float32 or otherwise); random ones are drawn in float32 on the CPU as always, then cast and moved.
  const bool from_file = !mc.weights.empty();
  const at::ScalarType dt = cfg.param_dtype == "bfloat16" && from_file ? at::kBFloat16 : at::kFloat;
  return lm::build_model(mc, cfg.init_seed, dt, initialised,
                         from_file ? std::optional<at::Device>(device) : std::nullopt);
}

}  // namespace mt::train
