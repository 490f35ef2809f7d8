#pragma once
// A model configuration file (YAML): the LM (a preset, an inline `lm:` mapping of Kyutai's keyword
// arguments, or `moshi_paths.config_path` to a config.json), optional weights
// (`moshi_paths.moshi_path`), and the `ttt:` / `lora:` sections. Unknown fields are errors.
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "lm/config.h"
#include "lm/lm_model.h"
#include "lm/ttt_config.h"

namespace YAML {
class Node;
}

namespace mt::lm {

// The named presets: tiny, small (the benchmark model), moshiko-7b; throws naming an unknown one.
LMConfig preset_config(const std::string& name);

struct ModelConfigFile {
  LMConfig lm;
  TTTIntegrationConfig ttt;
  LoRAConfig lora;
  std::string weights;       // moshi_paths.moshi_path, resolved against the file's folder ("" if none)
  std::string lora_weights;  // moshi_paths.lora_path: adapters (LoRA / TTT tensors) loaded over the weights
  std::string mimi_weights;  // moshi_paths.mimi_path: the codec, for audio datasets
  std::string mimi_config;   // moshi_paths.mimi_config_path (ours): its config JSON ("" = released model)
  std::string tokenizer;     // moshi_paths.tokenizer_path: SentencePiece model of the text stream
  // moshi_paths.hf_repo_id (moshi-finetune's): the Hugging Face repo the files above default to, as
  // Kyutai's CheckpointInfo.from_hf_repo reads it (its config.json, else the built-in 7B config).
  std::string hf_repo;
  // Said once at startup: where the config and files came from when a hub repo supplied them.
  std::vector<std::string> notes;
  static ModelConfigFile load(const std::string& path);
  // From a parsed document (`path` names it in errors and resolves relative paths); top-level keys in
  // other_fields belong to the caller (a training config) and are skipped here.
  static ModelConfigFile from_yaml(const YAML::Node& root, const std::string& path,
                                   const std::set<std::string>& other_fields);
};

// The files a hub repo supplies, as Kyutai's loaders name them: its config.json when it has one (else
// the built-in moshiko 7B config, as Kyutai's loader falls back to), moshi_name / mimi_name /
// tokenizer_name from it or their defaults. Fields already set in *c (explicit paths, a config) win.
// `config_json` (optional): a config.json replacing the repo's (moshi_paths.config_path / --config).
void apply_hf_repo(ModelConfigFile& c, const std::string& repo, const std::string& config_json, bool have_lm);

// The LM a model config describes, the one way every command builds it: its weights loaded strictly
// (TTT / LoRA tensors a base checkpoint lacks get their initial values; *initialised counts them) and
// its adapter file over them, or, without weights, seeded random weights (and the adapter file).
// Parameters come out in `dtype` with requires_grad off, on the CPU; or, given `device`, weights from a
// file are allocated there and filled from the mapped file directly (see load_lm).
LMModel build_model(const ModelConfigFile& mc, uint64_t init_seed, at::ScalarType dtype, int64_t* initialised = nullptr,
                    std::optional<at::Device> device = std::nullopt);

}  // namespace mt::lm
