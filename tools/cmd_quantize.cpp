// moshi-ttt quantize IN.safetensors OUT.q8.safetensors: Kyutai's q8 export (interop.md section 6) of a
// float LM checkpoint. Every Linear of the LM becomes int8 codes + float32 row scales; embeddings,
// norms and TTT / LoRA tensors stay as given. The checkpoint is loaded strictly first, so a file that
// does not match its config is refused before anything is written.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "lm/model_config.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/peak_memory.h"

namespace fs = std::filesystem;

namespace mt::cli {

namespace {
struct QuantizeOpts {
  std::string in, out, config, out_config;
  bool force = false;
};

// The LM (and TTT / LoRA sections) the input holds: --config (config.json or YAML), else the folder's
// config.json beside it, else what the tensor shapes imply.
lm::ModelConfigFile input_config(const QuantizeOpts& o) {
  lm::ModelConfigFile mc;
  std::string cfg = o.config;
  if (cfg.empty() && fs::exists(fs::path(o.in).parent_path() / "config.json"))
    cfg = (fs::path(o.in).parent_path() / "config.json").string();
  const std::string ext = fs::path(cfg).extension().string();
  if (ext == ".yaml" || ext == ".yml") {
    mc = lm::ModelConfigFile::load(cfg);
  } else if (!cfg.empty()) {
    mc.lm = lm::LMConfig::from_file(cfg);
  } else {
    io::SafeTensors f(o.in);
    MT_CHECK(lm::infer_config(f, mc.lm), o.in, ": not a Moshi LM checkpoint (give its --config)");
    std::printf("no config given: the LM config implied by the tensor shapes is used\n");
  }
  MT_CHECK(!mc.lm.quantize, cfg, ": says quantize: true; quantize takes a float checkpoint");
  return mc;
}

// Where the q8 config.json goes ("" for none): --out-config, else beside the output when --config is
// given, never over an existing file without --force (it may be the float model's own config).
std::string config_target(const QuantizeOpts& o) {
  if (!o.out_config.empty() || o.config.empty()) return o.out_config;
  const std::string target = (fs::path(o.out).parent_path() / "config.json").string();
  MT_CHECK(o.force || !fs::exists(target), target, " exists (it may be the float model's config): name the q8 one ",
           "with --out-config, or use --force to overwrite");
  return target;
}

// Kyutai's config.json with quantize true and moshi_name the new file (other keys as they were); a
// YAML model config's LM as a config.json.
void write_config(const QuantizeOpts& o, const lm::ModelConfigFile& mc, const std::string& target) {
  if (target.empty()) return;
  nlohmann::json j = mc.lm.to_json();
  const std::string ext = fs::path(o.config).extension().string();
  if (ext == ".json") {
    std::ifstream f(o.config);
    j = nlohmann::json::parse(f);
  }
  j["quantize"] = true;
  j["moshi_name"] = fs::path(o.out).filename().string();
  io::atomic_write(target, j.dump(2) + "\n");
  std::printf("wrote %s (quantize: true, moshi_name: %s)\n", target.c_str(), fs::path(o.out).filename().c_str());
}

int run_quantize(const QuantizeOpts& o) {
  MT_CHECK(o.force || !fs::exists(o.out), o.out, " exists (use --force to overwrite)");
  MT_CHECK(fs::absolute(o.in) != fs::absolute(o.out), "quantize: the output would overwrite the input ", o.in);
  const lm::ModelConfigFile mc = input_config(o);
  const std::string cfg_target = config_target(o);
  // In the file's own dtype (std::nullopt): bf16 embeddings and norms stay bf16.
  lm::LMModel m = lm::load_lm(mc.lm, o.in, std::nullopt, mc.ttt, nullptr, mc.lora);
  const lm::Q8FileStats st = lm::save_quantized(*m, o.out, {{"format", "pt"}, {"producer", "moshi-ttt quantize"}});
  std::printf("wrote %s: %lld q8 linears (%.1f MB of int8 codes), %.1f MB of other tensors; peak RSS %.1f MB\n",
              o.out.c_str(), (long long)st.linears, st.code_bytes / 1e6, st.float_bytes / 1e6, peak_rss_mb());
  write_config(o, mc, cfg_target);
  return 0;
}
}  // namespace

void add_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeOpts>();
  auto* sub = app.add_subcommand("quantize", "write Kyutai's q8 form of a float LM checkpoint (int8 linears)");
  sub->add_option("in", o->in, "float LM weights (.safetensors)")->required();
  sub->add_option("out", o->out, "q8 weights to write (e.g. model.q8.safetensors)")->required();
  sub->add_option("--config", o->config,
                  "the input's config.json or YAML model config (default: config.json beside it, else "
                  "implied by the shapes); given, a q8 config.json is written beside the output");
  sub->add_option("--out-config", o->out_config, "where to write the q8 config.json");
  sub->add_flag("--force", o->force, "overwrite existing outputs");
  set_handler(sub, [o]() { return run_quantize(*o); });
}

}  // namespace mt::cli
