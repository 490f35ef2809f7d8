#pragma once
// Shared CLI options that pick an LM: a model folder (config.json + model.safetensors), explicit
// config and weights files, or a preset with seeded random weights.
#include <CLI/CLI.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "lm/lm_gen.h"
#include "lm/lm_model.h"
#include "lm/model_config.h"

namespace mt::cli {

struct ModelArgs {
  std::string model_dir;
  std::string config;
  std::string weights;
  std::string hf_repo;  // --hf-repo: a Hugging Face repo in Kyutai's layout (its config.json, model file)
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
  // With --hf-repo: fills an empty codec / tokenizer path with the repo's (as `moshi.server --hf-repo`).
  void repo_files(std::string& mimi, std::string& tokenizer) const;
};

// Sampling knobs shared by `generate` and `serve`. Defaults: Kyutai's LMGen's, then the model's
// `lm_gen_config` when its config.json has one (as Kyutai's server reads it), then what the command
// line gives explicitly.
struct SamplingArgs {
  bool greedy = false;
  double temp = 0.8, temp_text = 0.7;
  int64_t top_k = 250, top_k_text = 25;
  uint64_t seed = 42;
  std::optional<uint64_t> audio_seed;
  double pad_mult = 0, repetition_penalty = 1.0;
  int64_t repetition_context = 0;
  void add(CLI::App* sub);
  lm::SamplingConfig resolve(const ModelArgs& model, std::string* origin = nullptr) const;

 private:
  std::map<std::string, CLI::Option*> opts_;
};

using lm::preset_config;

}  // namespace mt::cli
