// moshi-ttt init: writes a model folder (config.json + model.safetensors) with seeded random weights.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

void add_init(CLI::App& app) {
  struct Opts {
    std::string out;
    std::string preset = "tiny";
    std::string config;
    uint64_t seed = 0;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("init", "write a model folder with random weights (the reference's initialisation)");
  sub->add_option("out", o->out, "output folder")->required();
  sub->add_option("--preset", o->preset, "tiny, small or moshiko-7b")->capture_default_str();
  sub->add_option("--config", o->config, "LM config.json instead of a preset");
  sub->add_option("--seed", o->seed, "seed")->capture_default_str();
  sub->add_flag("--force", o->force, "overwrite an existing model folder");
  set_handler(sub, [o]() {
    lm::LMConfig cfg = o->config.empty() ? preset_config(o->preset) : lm::LMConfig::from_file(o->config);
    fs::path dir(o->out);
    MT_CHECK(o->force || !fs::exists(dir / "model.safetensors"), (dir / "model.safetensors").string(),
             " exists (use --force to overwrite)");
    fs::create_directories(dir);
    lm::LMModel m(cfg);
    m->init_weights(o->seed);
    io::atomic_write((dir / "config.json").string(), cfg.to_json().dump(2) + "\n");
    io::save((dir / "model.safetensors").string(), m->state_dict(), {{"format", "pt"}, {"producer", "moshi-ttt init"}});
    std::printf("wrote %s (config.json + model.safetensors, %lld parameters)\n", dir.string().c_str(),
                (long long)m->num_parameters());
    return 0;
  });
}

}  // namespace mt::cli
