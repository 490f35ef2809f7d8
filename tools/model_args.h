#pragma once
// Shared CLI options that pick an LM: a model folder (config.json + model.safetensors), explicit
// config and weights files, or a preset with seeded random weights.
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "lm/lm_model.h"
#include "lm/model_config.h"

namespace mt::cli {

struct ModelArgs {
  std::string model_dir;
  std::string config;
  std::string weights;
  std::string preset = "tiny";
  uint64_t init_seed = 0;
  std::string device = "cpu";
  std::string dtype = "float32";
  int threads = 0;
  void add(CLI::App* sub);
  // Builds the model (eval mode, no grad) and says where it came from in *origin.
  lm::LMModel build(std::string* origin = nullptr) const;
  // The LM and TTT configs these options name (a YAML model config, a config.json, or a preset).
  void configs(lm::LMConfig& lm, lm::TTTIntegrationConfig& ttt, std::string* weights = nullptr,
               lm::LoRAConfig* lora = nullptr, std::string* lora_path = nullptr) const;
};

using lm::preset_config;

}  // namespace mt::cli
