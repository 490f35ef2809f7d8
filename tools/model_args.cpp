#include "tools/model_args.h"

#include <filesystem>

#include "util/error.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::cli {

lm::LMConfig preset_config(const std::string& name) {
  if (name == "tiny") return lm::LMConfig::tiny();
  if (name == "small") return lm::LMConfig::small();
  if (name == "moshiko-7b" || name == "moshiko_7b") return lm::LMConfig::moshiko_7b();
  fail("unknown preset '", name, "' (tiny, small, moshiko-7b)");
}

void ModelArgs::add(CLI::App* sub) {
  sub->add_option("--model", model_dir, "model folder holding config.json and model.safetensors");
  sub->add_option("--config", config, "LM config.json (Kyutai's keyword arguments)");
  sub->add_option("--weights", weights, "LM weights (.safetensors)");
  sub->add_option("--preset", preset, "random model when no weights are given: tiny, small, moshiko-7b")->capture_default_str();
  sub->add_option("--init-seed", init_seed, "seed of the random weights")->capture_default_str();
  sub->add_option("--device", device, "cpu or cuda")->capture_default_str();
  sub->add_option("--dtype", dtype, "float32 or bfloat16")->capture_default_str();
  sub->add_option("--threads", threads, "intra-op threads (default: libtorch's)");
}

lm::LMModel ModelArgs::build(std::string* origin) const {
  set_threads(threads);
  c10::Device dev = parse_device(device);
  at::ScalarType dt;
  if (dtype == "float32" || dtype == "fp32") dt = at::kFloat;
  else if (dtype == "bfloat16" || dtype == "bf16") dt = at::kBFloat16;
  else fail("unknown dtype '", dtype, "' (float32, bfloat16)");
  std::string cfg_path = config, w_path = weights;
  if (!model_dir.empty()) {
    MT_CHECK(fs::is_directory(model_dir), model_dir, ": not a folder (expected config.json + model.safetensors)");
    if (cfg_path.empty()) cfg_path = (fs::path(model_dir) / "config.json").string();
    if (w_path.empty()) w_path = (fs::path(model_dir) / "model.safetensors").string();
  }
  lm::LMModel m{nullptr};
  if (!w_path.empty()) {
    MT_CHECK(!cfg_path.empty(), w_path, ": weights given without a config (use --config or --model)");
    m = lm::load_lm(lm::LMConfig::from_file(cfg_path), w_path, dt);
    if (origin) *origin = w_path;
  } else {
    lm::LMConfig c = cfg_path.empty() ? preset_config(preset) : lm::LMConfig::from_file(cfg_path);
    m = lm::LMModel(c);
    m->init_weights(init_seed);
    m->to(dt);
    for (auto& p : m->parameters()) p.set_requires_grad(false);
    if (origin) *origin = str(cfg_path.empty() ? "preset " + preset : cfg_path, ", random weights (seed ", init_seed, ")");
  }
  m->to(dev);
  m->eval();
  return m;
}

}  // namespace mt::cli
