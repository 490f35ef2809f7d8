#include "tools/model_args.h"

#include <filesystem>

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
    if (w->empty() && !model_dir.empty()) *w = (fs::path(model_dir) / "model.safetensors").string();
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

}  // namespace mt::cli
