// moshi-ttt export: a checkpoint as Kyutai's moshi loads it: adapters for its LoRA loader, or a merged
// checkpoint (lm/export.h), and the `python -m moshi.server` line that serves it.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/hub.h"
#include "lm/export.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

namespace {
// The source folder's own config.json (Kyutai's extra keys, e.g. lm_gen_config, survive the export).
nlohmann::json raw_config(const std::string& model_dir) {
  const fs::path p = fs::path(model_dir) / "config.json";
  if (!fs::exists(p)) return nlohmann::json::object();
  std::ifstream f(p);
  nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
  MT_CHECK(j.is_object(), p.string(), ": not a JSON object");
  return j;
}

at::ScalarType export_dtype(const std::string& name) {
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float32" || name == "fp32") return at::kFloat;
  fail("--dtype: '", name, "' (expected bfloat16 or float32)");
}

std::string serve_line(lm::ExportFormat f, const lm::ExportResult& r, const fs::path& out) {
  const fs::path dir = fs::absolute(out);
  if (f == lm::ExportFormat::kLora)
    return str("python -m moshi.server --moshi-weight ",
               io::hub::is_hub_path(r.base_weights) ? r.base_weights : fs::weakly_canonical(r.base_weights).string(),
               " --lora-weight ", (dir / "lora.safetensors").string(), " --config-path ",
               (dir / "config.json").string());
  return str("python -m moshi.server --moshi-weight ", (dir / "consolidated.safetensors").string(), " --config-path ",
             (dir / "config.json").string());
}
}  // namespace

void add_export(CLI::App& app) {
  struct Opts {
    std::string model, out, format, dtype = "bfloat16";
    bool drop_ttt = false, force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("export", "write a checkpoint in the form Kyutai's moshi loads (LoRA file or merged)");
  sub->add_option("--model", o->model, "checkpoint folder (a training checkpoint's consolidated/, or a model folder)")
      ->required();
  sub->add_option("--out", o->out, "output folder")->required();
  sub->add_option("--format", o->format, "lora (adapters for every linear, over the base) or merged (W + s·BA)")
      ->required();
  sub->add_option("--dtype", o->dtype, "dtype of the written tensors: bfloat16 (Kyutai's) or float32")
      ->capture_default_str();
  sub->add_flag("--drop-ttt", o->drop_ttt, "export a TTT checkpoint without its TTT tensors (changes its outputs)");
  sub->add_flag("--force", o->force, "replace an existing output folder");
  set_handler(sub, [o]() {
    lm::ExportOptions eo;
    eo.format = lm::export_formats().parse(o->format, "--format");
    eo.dtype = export_dtype(o->dtype);
    eo.drop_ttt = o->drop_ttt;
    eo.force = o->force;
    eo.raw_config = raw_config(o->model);
    ModelArgs ma;
    ma.model_dir = o->model;  // float32: merging happens there, whatever the checkpoint's dtype
    lm::ModelConfigFile mc;
    ma.configs(mc.lm, mc.ttt, &eo.base_weights, &mc.lora, &mc.lora_weights);
    lm::LMModel m = ma.build();
    const lm::ExportResult r = lm::write_export(*m, eo, o->out);
    if (!r.note.empty()) std::printf("%s\n", r.note.c_str());
    std::string files;
    for (const auto& f : r.files) files += (files.empty() ? "" : " + ") + f;
    std::printf("exported %lld tensors (%lld bytes, %s) to %s: %s\n", (long long)r.tensors, (long long)r.bytes,
                eo.dtype == at::kBFloat16 ? "bfloat16" : "float32", fs::absolute(o->out).string().c_str(),
                files.c_str());
    std::printf("serve with Kyutai's moshi: %s\n", serve_line(eo.format, r, o->out).c_str());
    return 0;
  });
}

}  // namespace mt::cli
