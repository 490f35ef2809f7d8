#include "lm/model_config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

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
  auto resolve = [&](const std::string& p) { return fs::path(p).is_absolute() ? p : (dir / p).string(); };
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
    MT_CHECK(!mp["hf_repo_id"], path,
             ": moshi_paths.hf_repo_id: downloads are not supported; give moshi_path and config_path");
  }
  int sources = !preset.empty() + !config_path.empty() + (root["lm"] ? 1 : 0);
  MT_CHECK(sources == 1, path, ": give exactly one of preset, lm, moshi_paths.config_path (got ", sources, ")");
  if (!preset.empty()) {
    try {
      c.lm = preset_config(preset);
    } catch (const Error& e) {
      fail(path, ": preset: ", e.what());
    }
  } else if (!config_path.empty()) {
    c.lm = LMConfig::from_file(config_path);
  } else {
    c.lm = LMConfig::from_json(to_json(root["lm"]), path + ": lm");
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

LMModel build_model(const ModelConfigFile& mc, uint64_t init_seed, at::ScalarType dtype, int64_t* initialised,
                    std::optional<at::Device> device) {
  if (!mc.weights.empty())
    return load_lm(mc.lm, mc.weights, dtype, mc.ttt, initialised, mc.lora, mc.lora_weights, device);
  LMModel m(mc.lm, mc.ttt, mc.lora);
  m->init_weights(init_seed);
  m->to(dtype);
  if (!mc.lora_weights.empty()) m->load_overlay(mc.lora_weights);
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  if (initialised) *initialised = 0;
  return m;
}

}  // namespace mt::lm
