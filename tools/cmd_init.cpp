// moshi-ttt init: writes a model folder (config.json + model.safetensors) with seeded random weights.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <yaml-cpp/yaml.h>

#include "io/safetensors.h"
#include "lm/model_config.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

void add_init(CLI::App& app) {
  struct Opts {
    std::string out;
    std::string out_file;
    std::string preset = "tiny";
    std::string config;
    uint64_t seed = 0;
    bool force = false;
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
    if (o->q8) cfg.quantize = true;
    lm::LMModel m(cfg, ttt, lora);
    m->init_weights(o->seed);
    const std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "moshi-ttt init"}};
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
