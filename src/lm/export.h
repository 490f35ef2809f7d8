#pragma once
// Exports a model for Kyutai's own loader (moshi 0.2.13, `moshi.server`): a LoRA file or a merged
// checkpoint, each with its config.json (shared/spec/interop.md sections 4 and 5).
//  - Kyutai's get_lora_moshi wraps EVERY nn.Linear of its LMModel in LoRALinear(rank, scaling) and
//    leaves an adapter missing from the file on meta (fails later), so a LoRA export holds adapters for
//    all of them: ours where we trained one, zeros (a no-op) elsewhere.
//  - Its LMModel has no TTT layers and its loaders refuse unexpected tensors: TTT tensors are refused,
//    or dropped on request (and the model then computes something else: drop_ttt_note says what).
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "lm/lm_model.h"
#include "util/choices.h"

namespace mt::io {
class SafeTensors;
}

namespace mt::lm {

enum class ExportFormat { kLora, kMerged };
const util::Choices<ExportFormat>& export_formats();

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Module paths of the linears Kyutai's replace_all_linear_with_lora wraps in this model's LMModel:
// every Linear of ours (our module tree mirrors Kyutai's) except those TTT adds.
std::vector<std::string> kyutai_linears(const LMModelImpl& m);

// W + scaling·(B@A), computed in float32 (the caller casts to the export dtype).
at::Tensor merge_lora(const at::Tensor& w, const at::Tensor& a, const at::Tensor& b, double scaling);

// The model's TTT tensors (is_ttt_param), in parameter order.
std::vector<std::string> ttt_tensor_names(const LMModelImpl& m);
// The refusal for a model holding TTT tensors: up to five named, the count, and why.
std::string ttt_refusal(const std::vector<std::string>& names);
// One line on what dropping the TTT tensors changes, for the variant the model uses.
std::string drop_ttt_note(const TTTIntegrationConfig& ttt, int64_t num_layers);

// Adapters for every Kyutai linear in `dtype`: ours where the linear has LoRA, zeros of the same rank
// elsewhere. Throws when the model has no LoRA.
NamedTensors lora_tensors(const LMModelImpl& m, at::ScalarType dtype);
// Every base tensor (no LoRA, no TTT) in `dtype`, with LoRA merged in where a linear has it.
NamedTensors merged_tensors(const LMModelImpl& m, at::ScalarType dtype);
// Every base tensor (no LoRA, no TTT) in `dtype`, unmerged: the base of a LoRA export.
NamedTensors base_tensors(const LMModelImpl& m, at::ScalarType dtype);

// True when Kyutai's strict base load takes the file as it is: no TTT and no LoRA tensors.
bool is_plain_base(const io::SafeTensors& f);

// config.json: `raw` (the source's own config.json, or an empty object) with the model's LM keyword
// arguments written over it, and `lora` / `lora_rank` / `lora_scaling` for the format (a merged
// checkpoint says lora: false, or Kyutai would wrap it in random adapters).
nlohmann::json export_config(const LMModelImpl& m, ExportFormat f, const nlohmann::json& raw);

struct ExportOptions {
  ExportFormat format = ExportFormat::kMerged;
  at::ScalarType dtype = at::kBFloat16;
  bool drop_ttt = false;
  // LoRA format: the base weights Kyutai loads under the adapters. Empty, or a file that is not a plain
  // base: the export writes the base itself (model.safetensors).
  std::string base_weights;
  nlohmann::json raw_config = nlohmann::json::object();
  bool force = false;  // replace an existing output folder
};

struct ExportResult {
  std::vector<std::string> files;  // written, inside the output folder
  int64_t tensors = 0, bytes = 0;  // of the weight files
  std::string base_weights;        // LoRA format: what Kyutai loads as --moshi-weight
  std::string note;                // drop_ttt_note when TTT tensors were dropped, else ""
};

// Checks the model can be exported (refusals as above, and Kyutai's LMModel has no YaRN), then writes
// the folder as OUT.tmp-<pid> and renames it.
ExportResult write_export(const LMModelImpl& m, const ExportOptions& o, const std::string& out_dir);

}  // namespace mt::lm
