#include "tools/model_args.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lm/model_config.h"
#include "util/error.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::cli {

void ModelArgs::add(CLI::App* sub) {
  sub->add_option("--model", model_dir, "model folder holding config.json and model.safetensors");
  sub->add_option("--config", config,
                  "LM config.json (Kyutai's keyword arguments) or a YAML model config (configs/*.yaml)");
  sub->add_option("--weights", weights, "LM weights (.safetensors)");
  sub->add_option("--preset", preset, "random model when no weights are given: tiny, small, moshiko-7b")
      ->capture_default_str();
  sub->add_option("--init-seed", init_seed, "seed of the random weights")->capture_default_str();
  sub->add_option("--device", device, "cpu or cuda")->capture_default_str();
  sub->add_option("--dtype", dtype, "float32 or bfloat16")->capture_default_str();
  sub->add_option("--threads", threads, "intra-op threads (default: libtorch's)");
}

namespace {
// A folder's weights: the file its config.json names (Kyutai's moshi_name, e.g. model.q8.safetensors
// written by `moshi-ttt quantize`) when it exists there, else model.safetensors.
std::string folder_weights(const std::string& dir, const std::string& cfg_path) {
  if (fs::path(cfg_path).extension() == ".json" && fs::exists(cfg_path)) {
    std::ifstream f(cfg_path);
    nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("moshi_name") && j["moshi_name"].is_string()) {
      const fs::path p = fs::path(dir) / j["moshi_name"].get<std::string>();
      if (fs::exists(p)) return p.string();
    }
  }
  return (fs::path(dir) / "model.safetensors").string();
}
}  // namespace

void ModelArgs::configs(lm::LMConfig& lmc, lm::TTTIntegrationConfig& ttt, std::string* w, lm::LoRAConfig* lora,
                        std::string* lora_path) const {
  std::string cfg_path = config;
  if (!model_dir.empty() && cfg_path.empty()) {
    MT_CHECK(fs::is_directory(model_dir), model_dir, ": not a folder (expected config.json + model.safetensors)");
    cfg_path = (fs::path(model_dir) / "config.json").string();
    if (fs::exists(fs::path(model_dir) / "model.yaml")) cfg_path = (fs::path(model_dir) / "model.yaml").string();
  }
  std::string weights_from_cfg;
  const auto ext = fs::path(cfg_path).extension().string();
  if (ext == ".yaml" || ext == ".yml") {
    lm::ModelConfigFile f = lm::ModelConfigFile::load(cfg_path);
    lmc = f.lm;
    ttt = f.ttt;
    if (lora) *lora = f.lora;
    weights_from_cfg = f.weights;
    if (lora_path) *lora_path = f.lora_weights;
  } else if (!cfg_path.empty()) {
    lmc = lm::LMConfig::from_file(cfg_path);
  } else {
    lmc = preset_config(preset);
  }
  if (w) {
    *w = weights;
    if (w->empty()) *w = weights_from_cfg;  // a folder's model.yaml names its weights (moshi_paths)
    if (w->empty() && !model_dir.empty()) *w = folder_weights(model_dir, cfg_path);
  }
}

lm::LMModel ModelArgs::build(std::string* origin) const {
  set_threads(threads);
  c10::Device dev = parse_device(device);
  at::ScalarType dt;
  if (dtype == "float32" || dtype == "fp32")
    dt = at::kFloat;
  else if (dtype == "bfloat16" || dtype == "bf16")
    dt = at::kBFloat16;
  else
    fail("unknown dtype '", dtype, "' (float32, bfloat16)");
  MT_CHECK(weights.empty() || !config.empty() || !model_dir.empty(), weights,
           ": weights given without a config (use --config or --model)");
  lm::ModelConfigFile mc;
  configs(mc.lm, mc.ttt, &mc.weights, &mc.lora, &mc.lora_weights);
  int64_t initialised = 0;
  lm::LMModel m = lm::build_model(mc, init_seed, dt, &initialised);
  if (origin && !mc.weights.empty()) {
    *origin = mc.weights;
    if (initialised > 0) *origin += str(" (base checkpoint: ", initialised, " new TTT/LoRA tensors initialised)");
  } else if (origin) {
    *origin = str(config.empty() ? "preset " + preset : config, ", random weights (seed ", init_seed, ")");
  }
  m->to(dev);
  m->eval();
  return m;
}

void SamplingArgs::add(CLI::App* sub) {
  opts_["greedy"] = sub->add_flag("--greedy", greedy, "argmax decoding for text and audio");
  opts_["temp"] = sub->add_option("--temp", temp, "audio temperature")->capture_default_str();
  opts_["temp_text"] = sub->add_option("--temp-text", temp_text, "text temperature")->capture_default_str();
  opts_["top_k"] = sub->add_option("--top-k", top_k, "audio top-k")->capture_default_str();
  opts_["top_k_text"] = sub->add_option("--top-k-text", top_k_text, "text top-k")->capture_default_str();
  sub->add_option("--seed", seed, "sampling seed (text draws, and audio draws without --audio-seed)")
      ->capture_default_str();
  sub->add_option("--audio-seed", audio_seed, "a generator of its own for the audio draws");
  sub->add_option("--pad-mult", pad_mult, "added to the log-odds of the text padding token: > 0 quieter, < 0 chattier")
      ->capture_default_str();
  sub->add_option("--repetition-penalty", repetition_penalty,
                  "text repetition penalty over --repetition-context tokens (1: off)")
      ->capture_default_str();
  sub->add_option("--repetition-context", repetition_context, "non-padding text tokens the penalty looks back over")
      ->capture_default_str();
}

lm::SamplingConfig SamplingArgs::resolve(const ModelArgs& model, std::string* origin) const {
  lm::SamplingConfig s;
  s.use_sampling = !greedy;
  s.temp = temp;
  s.temp_text = temp_text;
  s.top_k = top_k;
  s.top_k_text = top_k_text;
  // The model's lm_gen_config (Kyutai's LMGen keyword arguments) where the command line is silent.
  std::string json_path = model.config;
  if (fs::path(json_path).extension() != ".json" && !model.model_dir.empty())
    json_path = (fs::path(model.model_dir) / "config.json").string();
  if (fs::path(json_path).extension() == ".json" && fs::exists(json_path)) {
    std::ifstream f(json_path);
    nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("lm_gen_config") && j["lm_gen_config"].is_object()) {
      const auto& g = j["lm_gen_config"];
      auto take = [&](const char* key, const char* opt, auto& field) {
        if (!g.contains(key) || (opts_.count(opt) && opts_.at(opt)->count() > 0)) return;
        MT_CHECK(g[key].is_number() || g[key].is_boolean(), json_path, ": lm_gen_config.", key, " must be a number");
        field = g[key].get<std::decay_t<decltype(field)>>();
      };
      take("temp", "temp", s.temp);
      take("temp_text", "temp_text", s.temp_text);
      take("top_k", "top_k", s.top_k);
      take("top_k_text", "top_k_text", s.top_k_text);
      take("use_sampling", "greedy", s.use_sampling);
      if (origin) *origin = json_path + " lm_gen_config";
    }
  }
  s.seed = seed;
  s.audio_seed = audio_seed;
  s.pad_mult = pad_mult;
  s.repetition_penalty = repetition_penalty;
  s.repetition_context = repetition_context;
  s.validate();
  return s;
}

}  // namespace mt::cli
