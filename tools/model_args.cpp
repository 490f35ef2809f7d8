#include "tools/model_args.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/hub.h"
#include "lm/model_config.h"
#include "util/error.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::cli {

void ModelArgs::add(CLI::App* sub) {
  sub->add_option("--model", model_dir, "model folder holding config.json and model.safetensors");
  sub->add_option("--config", config,
                  "LM config.json (Kyutai's keyword arguments) or a YAML model config (configs/*.yaml)");
  sub->add_option("--weights", weights, "LM weights (.safetensors; also hf://org/repo/file or file:///path)");
  sub->add_option("--hf-repo", hf_repo,
                  "Hugging Face repo in Kyutai's layout (e.g. kyutai/moshiko-pytorch-bf16): its config.json (else "
                  "the 7B one) and model file, from the local hub cache or downloaded into it");
  sub->add_option("--preset", preset, "random model when no weights are given: tiny, small, moshiko-7b")
      ->capture_default_str();
  sub->add_option("--init-seed", init_seed, "seed of the random weights")->capture_default_str();
  sub->add_option("--device", device, "cpu or cuda")->capture_default_str();
  sub->add_option("--dtype", dtype, "float32 or bfloat16")->capture_default_str();
  sub->add_option("--threads", threads, "intra-op threads (default: libtorch's)");
}

namespace {
// A folder's weights: the file its config.json names (Kyutai's moshi_name, e.g. model.q8.safetensors
// written by `moshi-ttt quantize`) when it exists there, else ours (model.safetensors), else a
// moshi-finetune checkpoint's (consolidated.safetensors), else an adapters-only one, whose base must be given.
// `cfg`: the folder's config.json as read_folder_config gave it (null without one).
std::string folder_weights(const std::string& dir, const nlohmann::json& cfg) {
  const fs::path d(dir);
  if (cfg.is_object() && cfg.contains("moshi_name") && cfg["moshi_name"].is_string()) {
    const fs::path p = d / cfg["moshi_name"].get<std::string>();
    if (fs::exists(p)) return p.string();
  }
  for (const char* name : {"model.safetensors", "consolidated.safetensors"})
    if (fs::exists(d / name)) return (d / name).string();
  MT_CHECK(!fs::exists(d / "lora.safetensors"), dir,
           ": holds LoRA adapters only (moshi-finetune's save_adapters): give their base with --weights FILE");
  return (d / "model.safetensors").string();
}

// A moshi-finetune checkpoint folder declares its LoRA in config.json (lora, lora_rank, lora_scaling, on
// every linear as Kyutai's loader wraps them); its adapters are lora.safetensors, or inside
// consolidated.safetensors when saved whole.
void kyutai_folder_lora(const nlohmann::json& cfg, const std::string& dir, lm::LoRAConfig* lora,
                        std::string* lora_path) {
  if (!cfg.is_object() || !cfg.value("lora", false) || !lora) return;
  lora->enable = true;
  lora->rank = cfg.value("lora_rank", int64_t{128});
  lora->scaling = cfg.value("lora_scaling", 2.0);
  const fs::path adapters = fs::path(dir) / "lora.safetensors";
  if (lora_path && fs::exists(adapters)) *lora_path = adapters.string();
}

// A model folder's config.json, read once for the keys beyond the LM's (null when unreadable: the LM
// config reader has already named the problem).
nlohmann::json read_folder_config(const std::string& cfg_path) {
  std::ifstream f(cfg_path);
  return nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
}
}  // namespace

void ModelArgs::configs(lm::LMConfig& lmc, lm::TTTIntegrationConfig& ttt, std::string* w, lm::LoRAConfig* lora,
                        std::string* lora_path) const {
  std::string cfg_path = io::hub::resolve(config);  // Kyutai's hf:// and file:// forms too
  if (!model_dir.empty() && cfg_path.empty()) {
    MT_CHECK(fs::is_directory(model_dir), model_dir, ": not a folder (expected config.json + model.safetensors)");
    cfg_path = (fs::path(model_dir) / "config.json").string();
    if (fs::exists(fs::path(model_dir) / "model.yaml")) cfg_path = (fs::path(model_dir) / "model.yaml").string();
  }
  std::string weights_from_cfg;
  nlohmann::json folder_cfg;  // a folder's config.json (moshi_name, LoRA keys)
  const auto ext = fs::path(cfg_path).extension().string();
  if (!hf_repo.empty()) {
    MT_CHECK(model_dir.empty() && ext != ".yaml" && ext != ".yml", "--hf-repo takes the place of --model and a YAML ",
             "--config (a YAML names its repo with moshi_paths.hf_repo_id); --config config.json may replace the "
             "repo's config");
    lm::ModelConfigFile f;
    lm::apply_hf_repo(f, hf_repo, cfg_path, false);
    lmc = f.lm;
    ttt = {};
    weights_from_cfg = f.weights;
  } else if (ext == ".yaml" || ext == ".yml") {
    lm::ModelConfigFile f = lm::ModelConfigFile::load(cfg_path);
    lmc = f.lm;
    ttt = f.ttt;
    if (lora) *lora = f.lora;
    weights_from_cfg = f.weights;
    if (lora_path) *lora_path = f.lora_weights;
  } else if (!cfg_path.empty()) {
    lmc = lm::LMConfig::from_file(cfg_path);
    if (!model_dir.empty()) {
      folder_cfg = read_folder_config(cfg_path);
      kyutai_folder_lora(folder_cfg, fs::path(cfg_path).parent_path().string(), lora, lora_path);
    }
  } else {
    lmc = preset_config(preset);
  }
  if (w) {
    *w = weights;
    if (w->empty()) *w = weights_from_cfg;  // a folder's model.yaml names its weights (moshi_paths)
    if (w->empty() && !model_dir.empty()) *w = folder_weights(model_dir, folder_cfg);
  }
}

void ModelArgs::repo_files(std::string& mimi, std::string& tokenizer) const {
  if (hf_repo.empty() || (!mimi.empty() && !tokenizer.empty())) return;
  lm::ModelConfigFile f;
  lm::apply_hf_repo(f, hf_repo, config, false);
  if (mimi.empty()) mimi = f.mimi_weights;
  if (tokenizer.empty()) tokenizer = f.tokenizer;
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
  MT_CHECK(weights.empty() || !config.empty() || !model_dir.empty() || !hf_repo.empty(), weights,
           ": weights given without a config (use --config, --model or --hf-repo)");
  lm::ModelConfigFile mc;
  configs(mc.lm, mc.ttt, &mc.weights, &mc.lora, &mc.lora_weights);
  mc.weights = io::hub::resolve(mc.weights);  // here, so that the origin names the local file
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
  std::string json_path = io::hub::resolve(model.config);
  if (fs::path(json_path).extension() != ".json" && !model.model_dir.empty())
    json_path = (fs::path(model.model_dir) / "config.json").string();
  if (json_path.empty() && !model.hf_repo.empty())  // fetched already by build()
    json_path = io::hub::cached({model.hf_repo, "config.json"}, io::hub::Settings::from_environment().cache_dir);
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
