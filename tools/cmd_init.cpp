// moshi-ttt init: writes a model folder (config.json + model.safetensors) with seeded random weights.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <yaml-cpp/yaml.h>

#include "io/safetensors.h"
#include "lm/model_config.h"
#include "lm/release_checkpoint.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"
#include "util/peak_memory.h"

namespace fs = std::filesystem;

namespace mt::cli {

namespace {
at::ScalarType init_dtype(const std::string& d) {
  if (d == "float32" || d == "fp32") return at::kFloat;
  if (d == "bfloat16" || d == "bf16") return at::kBFloat16;
  fail("init: unknown --dtype '", d, "' (float32, bfloat16)");
}

int64_t release_parameters(const lm::LMConfig& cfg) {
  int64_t n = 0;
  for (const auto& s : lm::release_tensor_specs(cfg, at::kFloat)) n += s.nbytes() / 4;
  return n;
}

// The weights of a model too big to build in memory: one tensor at a time (lm/release_checkpoint.h).
void stream_weights(const std::string& path, bool force, const lm::LMConfig& cfg, at::ScalarType dtype, uint64_t seed,
                    const std::map<std::string, std::string>& meta) {
  MT_CHECK(force || !fs::exists(path), path, " exists (use --force to overwrite)");
  const auto t0 = std::chrono::steady_clock::now();
  lm::write_random_release(path, cfg, dtype, seed, meta, [&](size_t done, size_t total) {
    if (done % 32 == 0 || done == total) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("  %zu/%zu tensors, %.0f s\n", done, total, s);
      std::fflush(stdout);
    }
  });
  std::printf("wrote %s (%lld parameters, %s, Kyutai's release layout; random values seeded per tensor name)\n",
              path.c_str(), (long long)release_parameters(cfg), c10::toString(dtype));
}

// init's folder (config.json + model.safetensors) and/or --out file, written by stream_weights.
void init_streamed(const std::string& out, const std::string& out_file, bool force, const lm::LMConfig& cfg,
                   at::ScalarType dtype, uint64_t seed, const std::map<std::string, std::string>& meta) {
  if (!out_file.empty()) stream_weights(out_file, force, cfg, dtype, seed, meta);
  if (out.empty()) return;
  const fs::path dir(out);
  MT_CHECK(force || !fs::exists(dir / "model.safetensors"), (dir / "model.safetensors").string(),
           " exists (use --force to overwrite)");
  fs::create_directories(dir);
  io::atomic_write((dir / "config.json").string(), cfg.to_json().dump(2) + "\n");
  stream_weights((dir / "model.safetensors").string(), force, cfg, dtype, seed, meta);
  std::printf("wrote %s (config.json + model.safetensors)\n", dir.string().c_str());
}
}  // namespace

void add_init(CLI::App& app) {
  struct Opts {
    std::string out;
    std::string out_file;
    std::string preset = "tiny";
    std::string config;
    uint64_t seed = 0;
    std::string dtype = "float32";
    bool force = false;
    bool stream = false;
    bool q8 = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("init", "write a model folder with random weights (the reference's initialisation)");
  sub->add_option("out", o->out, "output model folder (config.json, model.safetensors, and model.yaml for TTT models)");
  sub->add_option("--out", o->out_file, "write only the weights to this .safetensors file");
  sub->add_option("--preset", o->preset, "tiny, small or moshiko-7b")->capture_default_str();
  sub->add_option("--config", o->config,
                  "LM config.json or YAML model config (with a ttt: section) instead of a preset");
  sub->add_option("--seed", o->seed, "seed")->capture_default_str();
  sub->add_option("--dtype", o->dtype, "dtype of the weights: float32 or bfloat16 (Kyutai's release)")
      ->capture_default_str();
  sub->add_flag("--stream", o->stream,
                "write one tensor at a time in Kyutai's release layout (fused attention names, sorted); "
                "automatic above 1e9 parameters (a 7B), whose model would not fit in memory twice");
  sub->add_flag("--force", o->force, "overwrite an existing model folder");
  sub->add_flag("--q8", o->q8, "Kyutai's q8 format (quantize: true): linears drawn in float32, then quantised");
  set_handler(sub, [o]() {
    MT_CHECK(!o->out.empty() || !o->out_file.empty(), "init: give an output folder or --out FILE.safetensors");
    lm::LMConfig cfg;
    lm::TTTIntegrationConfig ttt;
    lm::LoRAConfig lora;
    YAML::Node yaml;
    const std::string ext = fs::path(o->config).extension().string();
    if (ext == ".yaml" || ext == ".yml") {
      lm::ModelConfigFile f = lm::ModelConfigFile::load(o->config);
      cfg = f.lm;
      ttt = f.ttt;
      lora = f.lora;
      yaml = YAML::LoadFile(o->config);
    } else {
      cfg = o->config.empty() ? preset_config(o->preset) : lm::LMConfig::from_file(o->config);
    }
    const at::ScalarType dtype = init_dtype(o->dtype);
    const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "moshi-ttt init"}};
    if (o->q8) cfg.quantize = true;
    if (o->stream || (!ttt.enable && !lora.enable && release_parameters(cfg) > 1'000'000'000)) {
      MT_CHECK(!cfg.quantize, "init --stream writes Kyutai's bf16 layout; make its q8 with `moshi-ttt quantize`");
      MT_CHECK(!ttt.enable && !lora.enable,
               "init --stream writes Kyutai's base layout: the config may have no ttt: "
               "or lora: section");
      init_streamed(o->out, o->out_file, o->force, cfg, dtype, o->seed, meta);
      std::printf("peak RSS %.1f MB\n", peak_rss_mb());
      return 0;
    }
    lm::LMModel m(cfg, ttt, lora);
    m->init_weights(o->seed);
    m->to(dtype);
    if (!o->out_file.empty()) {
      MT_CHECK(o->force || !fs::exists(o->out_file), o->out_file, " exists (use --force to overwrite)");
      io::save(o->out_file, m->state_dict(), meta);
      std::printf("wrote %s (%lld parameters)\n", o->out_file.c_str(), (long long)m->num_parameters());
    }
    if (!o->out.empty()) {
      fs::path dir(o->out);
      MT_CHECK(o->force || !fs::exists(dir / "model.safetensors"), (dir / "model.safetensors").string(),
               " exists (use --force to overwrite)");
      fs::create_directories(dir);
      io::atomic_write((dir / "config.json").string(), cfg.to_json().dump(2) + "\n");
      io::save((dir / "model.safetensors").string(), m->state_dict(), meta);
      if (yaml && (yaml["ttt"] || yaml["lora"])) {
        // The folder's model.yaml: its LM is config.json, its weights model.safetensors, plus the
        // TTT / LoRA sections of the config it was made from.
        YAML::Node out;
        out["moshi_paths"]["config_path"] = "config.json";
        out["moshi_paths"]["moshi_path"] = "model.safetensors";
        if (yaml["ttt"]) out["ttt"] = yaml["ttt"];
        if (yaml["lora"]) out["lora"] = yaml["lora"];
        YAML::Emitter em;
        em << out;
        io::atomic_write((dir / "model.yaml").string(), std::string(em.c_str()) + "\n");
      }
      std::printf("wrote %s (config.json + model.safetensors%s, %lld parameters)\n", dir.string().c_str(),
                  fs::exists(dir / "model.yaml") ? " + model.yaml" : "", (long long)m->num_parameters());
    }
    return 0;
  });
}

}  // namespace mt::cli
