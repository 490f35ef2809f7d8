#pragma once
// A model configuration file (YAML): the LM (a preset, an inline `lm:` mapping of Kyutai's keyword
// arguments, or `moshi_paths.config_path` to a config.json), optional weights
// (`moshi_paths.moshi_path`), and the `ttt:` / `lora:` sections. Unknown fields are errors.
#include <string>

#include "lm/config.h"
#include "lm/ttt_config.h"

namespace mt::lm {

// The named presets: tiny, small (the benchmark model), moshiko-7b; throws naming an unknown one.
LMConfig preset_config(const std::string& name);

struct ModelConfigFile {
  LMConfig lm;
  TTTIntegrationConfig ttt;
  LoRAConfig lora;
  std::string weights;  // moshi_paths.moshi_path, resolved against the file's folder ("" if none)
  static ModelConfigFile load(const std::string& path);
};

}  // namespace mt::lm
