#include "lm/model_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "io/hub.h"
#include "util/error.h"
#include "util/yaml_read.h"

namespace fs = std::filesystem;

namespace mt::lm {

namespace {
// YAML scalars/sequences/maps to JSON, so the LM section reuses LMConfig::from_json's checks.
nlohmann::json to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    nlohmann::json j = nlohmann::json::object();
    for (auto it = n.begin(); it != n.end(); ++it) j[it->first.as<std::string>()] = to_json(it->second);
    return j;
  }
  if (n.IsSequence()) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& e : n) j.push_back(to_json(e));
    return j;
  }
  if (n.IsNull()) return nullptr;
  const std::string s = n.as<std::string>();
  if (s == "true" || s == "false") return s == "true";
  try {
    size_t used = 0;
    long long v = std::stoll(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {}
  try {
    size_t used = 0;
    double v = std::stod(s, &used);
    if (used == s.size()) return v;
  } catch (const std::exception&) {}
  return s;
}
}  // namespace

LMConfig preset_config(const std::string& name) {
  if (name == "tiny") return LMConfig::tiny();
  if (name == "small") return LMConfig::small();
  if (name == "moshiko-7b" || name == "moshiko_7b") return LMConfig::moshiko_7b();
  fail("unknown preset '", name, "' (tiny, small, moshiko-7b)");
}

ModelConfigFile ModelConfigFile::load(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const std::exception& e) {
    fail(path, ": cannot read YAML: ", e.what());
  }
  return yaml::with_file_context(path, [&] { return from_yaml(root, path, {}); });
}

ModelConfigFile ModelConfigFile::from_yaml(const YAML::Node& root, const std::string& path,
                                           const std::set<std::string>& other_fields) {
  MT_CHECK(root.IsMap(), path, ": expected a YAML mapping at the top");
  ModelConfigFile c;
  const fs::path dir = fs::path(path).parent_path();
  // Kyutai's path forms: hf://org/repo/file stays a hub reference (fetched where it is used), file://X
  // is X, and a relative path is relative to this file's folder.
  auto resolve = [&](const std::string& p) {
    if (io::hub::is_hub_path(p)) return p;
    const std::string local = io::hub::resolve(p);
    return fs::path(local).is_absolute() ? local : (dir / local).string();
  };
  static const std::set<std::string> known = {"preset", "lm", "moshi_paths", "ttt", "lora", "rope_scaling"};
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string k = yaml::key_text(it->first, path + ": ");
    MT_CHECK(known.count(k) || other_fields.count(k), path, ": ", k, ": unknown field");
  }
  std::string preset = root["preset"] ? root["preset"].as<std::string>() : "";
  std::string config_path;
  if (root["moshi_paths"]) {
    const auto& mp = root["moshi_paths"];
    for (auto it = mp.begin(); it != mp.end(); ++it) {
      const std::string k = yaml::key_text(it->first, path + ": moshi_paths.");
      MT_CHECK(k == "config_path" || k == "moshi_path" || k == "hf_repo_id" || k == "mimi_path" ||
                   k == "tokenizer_path" || k == "lora_path" || k == "mimi_config_path",
               path, ": moshi_paths.", k, ": unknown field");
    }
    if (mp["config_path"]) config_path = resolve(mp["config_path"].as<std::string>());
    if (mp["moshi_path"]) c.weights = resolve(mp["moshi_path"].as<std::string>());
    if (mp["lora_path"]) c.lora_weights = resolve(mp["lora_path"].as<std::string>());
    if (mp["mimi_path"]) c.mimi_weights = resolve(mp["mimi_path"].as<std::string>());
    if (mp["mimi_config_path"]) c.mimi_config = resolve(mp["mimi_config_path"].as<std::string>());
    if (mp["tokenizer_path"]) c.tokenizer = resolve(mp["tokenizer_path"].as<std::string>());
    if (mp["hf_repo_id"]) c.hf_repo = mp["hf_repo_id"].as<std::string>();
  }
  int sources = !preset.empty() + !config_path.empty() + (root["lm"] ? 1 : 0);
  const bool repo_config = !c.hf_repo.empty() && sources == 0;  // moshi-finetune's usual case
  MT_CHECK(sources == 1 || repo_config, path, ": give exactly one of preset, lm, moshi_paths.config_path",
           " (or moshi_paths.hf_repo_id alone) (got ", sources, ")");
  if (!preset.empty()) {
    try {
      c.lm = preset_config(preset);
    } catch (const Error& e) {
      fail(path, ": preset: ", e.what());
    }
  } else if (!config_path.empty()) {
    c.lm = LMConfig::from_file(io::hub::resolve(config_path));
  } else if (root["lm"]) {
    c.lm = LMConfig::from_json(to_json(root["lm"]), path + ": lm");
  }
  if (!c.hf_repo.empty()) {
    try {
      apply_hf_repo(c, c.hf_repo, config_path, !repo_config);
    } catch (const Error& e) {
      fail(path, ": moshi_paths.hf_repo_id: ", e.what());
    }
  }
  // A top-level rope_scaling applies YaRN on top of any model source (e.g. to score a model trained at
  // 3000 tokens on 12000).
  if (root["rope_scaling"]) {
    MT_CHECK(!c.lm.rope_scaling.on() || !root["lm"], path, ": rope_scaling is given twice (top level and lm)");
    c.lm.rope_scaling = RopeScaling::from_json(to_json(root["rope_scaling"]), path + ": rope_scaling");
    try {
      c.lm.validate();
    } catch (const Error& e) {
      fail(path, ": ", e.what());
    }
  }
  c.ttt = TTTIntegrationConfig::from_yaml(root["ttt"]);
  c.lora = LoRAConfig::from_yaml(root["lora"]);
  try {
    c.ttt.validate(c.lm.num_layers);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  return c;
}

namespace {
// A file name from a Kyutai config.json: a hub reference of its own (hf://...), or a file of `repo`.
std::string repo_file(const std::string& repo, const std::string& name) {
  return io::hub::is_hub_path(name) ? name : "hf://" + repo + "/" + name;
}
}  // namespace

void apply_hf_repo(ModelConfigFile& c, const std::string& repo, const std::string& config_json, bool have_lm) {
  MT_CHECK(std::count(repo.begin(), repo.end(), '/') == 1 && repo.front() != '/' && repo.back() != '/', "'", repo,
           "' is not a hub repo id (expected org/name, e.g. kyutai/moshiko-pytorch-bf16)");
  std::optional<std::string> cfg_file;
  if (!config_json.empty())
    cfg_file = io::hub::resolve(config_json);
  else
    cfg_file = io::hub::try_download({repo, "config.json"});
  nlohmann::json raw = nlohmann::json::object();
  if (cfg_file) {
    std::ifstream f(*cfg_file);
    MT_CHECK(f.good(), *cfg_file, ": cannot open");
    try {
      raw = nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      fail(*cfg_file, ": not valid JSON: ", e.what());
    }
    if (!have_lm) c.lm = LMConfig::from_json(raw, *cfg_file);
    c.notes.push_back(str("model config: ", *cfg_file, config_json.empty() ? " (from " + repo + ")" : ""));
  } else if (!have_lm) {
    c.lm = LMConfig::moshiko_7b();  // Kyutai's loader: no config.json means its built-in 7B arguments
    c.notes.push_back(str(repo, " has no config.json: the moshiko 7B config is used, as Kyutai's loader does"));
  }
  MT_CHECK(!raw.contains("lora_name") || raw["lora_name"].is_null(), cfg_file.value_or(repo),
           ": lora_name: a repo-supplied LoRA is not supported; give moshi_paths.lora_path");
  auto name = [&](const char* key, const char* fallback) {
    return raw.contains(key) && raw[key].is_string() ? raw[key].get<std::string>() : std::string(fallback);
  };
  if (c.weights.empty()) c.weights = repo_file(repo, name("moshi_name", "model.safetensors"));
  if (c.mimi_weights.empty())
    c.mimi_weights = repo_file(repo, name("mimi_name", "tokenizer-e351c8d8-checkpoint125.safetensors"));
  if (c.tokenizer.empty()) c.tokenizer = repo_file(repo, name("tokenizer_name", "tokenizer_spm_32k_3.model"));
}

LMModel build_model(const ModelConfigFile& mc, uint64_t init_seed, at::ScalarType dtype, int64_t* initialised,
                    std::optional<at::Device> device) {
  const std::string lora_weights = io::hub::resolve(mc.lora_weights);
  if (!mc.weights.empty())
    return load_lm(mc.lm, io::hub::resolve(mc.weights), dtype, mc.ttt, initialised, mc.lora, lora_weights, device);
  LMModel m(mc.lm, mc.ttt, mc.lora);
  m->init_weights(init_seed);
  m->to(dtype);
  if (!lora_weights.empty()) m->load_overlay(lora_weights);
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  if (initialised) *initialised = 0;
  return m;
}

}  // namespace mt::lm
