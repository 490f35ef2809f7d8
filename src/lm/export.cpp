#include "lm/export.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>

#include "io/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::lm {

const util::Choices<ExportFormat>& export_formats() {
  static const util::Choices<ExportFormat> c{{{"lora", ExportFormat::kLora}, {"merged", ExportFormat::kMerged}}};
  return c;
}

namespace {
// name -> Linear, for every Kyutai linear of the model, in module order.
std::vector<std::pair<std::string, const nn::LinearImpl*>> kyutai_linear_modules(const LMModelImpl& m) {
  std::vector<std::pair<std::string, const nn::LinearImpl*>> out;
  for (const auto& item : m.named_modules("", /*include_self=*/false)) {
    const auto* lin = dynamic_cast<const nn::LinearImpl*>(item.value().get());
    const std::string dotted = item.key() + ".";
    // The adapters' own A and B are linears too, and TTT's linears have no Kyutai counterpart.
    if (lin && !is_lora_param(dotted) && !is_ttt_param(dotted)) out.emplace_back(item.key(), lin);
  }
  return out;
}

bool has_lora(const LMModelImpl& m) {
  for (const auto& [name, lin] : kyutai_linear_modules(m))
    if (lin->lora_A) return true;
  return false;
}

at::Tensor to_export(const at::Tensor& t, at::ScalarType dtype) { return t.detach().to(at::kCPU, dtype).contiguous(); }
}  // namespace

std::vector<std::string> kyutai_linears(const LMModelImpl& m) {
  std::vector<std::string> out;
  for (const auto& [name, lin] : kyutai_linear_modules(m)) out.push_back(name);
  return out;
}

at::Tensor merge_lora(const at::Tensor& w, const at::Tensor& a, const at::Tensor& b, double scaling) {
  MT_CHECK(w.dim() == 2 && a.dim() == 2 && b.dim() == 2 && a.size(1) == w.size(1) && b.size(0) == w.size(0) &&
               a.size(0) == b.size(1),
           "merge_lora: W ", shape_str(w.sizes().vec()), ", lora_A ", shape_str(a.sizes().vec()), ", lora_B ",
           shape_str(b.sizes().vec()), " do not fit (expected [out, in], [r, in], [out, r])");
  const at::Tensor wf = w.detach().to(at::kFloat);
  return at::addmm(wf, b.detach().to(at::kFloat), a.detach().to(at::kFloat), 1.0, scaling);
}

std::vector<std::string> ttt_tensor_names(const LMModelImpl& m) {
  std::vector<std::string> out;
  for (const auto& kv : m.named_parameters())
    if (is_ttt_param(kv.key())) out.push_back(kv.key());
  return out;
}

std::string ttt_refusal(const std::vector<std::string>& names) {
  std::string list;
  for (size_t i = 0; i < names.size() && i < 5; ++i) list += (i ? ", " : "") + names[i];
  if (names.size() > 5) list += ", ...";
  return str("the checkpoint holds ", names.size(), " TTT tensor(s) (", list,
             "); Kyutai's moshi has no TTT layers, so its loader refuses them and the model would run without "
             "them: pass --drop-ttt to export it without them anyway");
}

std::string drop_ttt_note(const TTTIntegrationConfig& ttt, int64_t num_layers) {
  std::string layers;
  for (int64_t l : ttt.layer_indices(num_layers)) layers += (layers.empty() ? "" : ",") + std::to_string(l);
  std::string what;
  switch (ttt.variant) {
    case TTTVariant::kHybrid:
      what = "hybrid TTT blocks removed from layer(s) " + layers + " (their gated contribution is gone)";
      break;
    case TTTVariant::kAdapter:
      what = "TTT adapters removed from layer(s) " + layers + " (each adapted linear is its base weight again)";
      break;
    case TTTVariant::kInPlace:
      what = "In-Place TTT removed from layer(s) " + layers +
             " (each FFN reverts to its base down-projection, with no test-time updates)";
      break;
  }
  if (ttt.attention_context || ttt.non_ttt_attention_context) what += "; attention windows revert to the LM's context";
  return "--drop-ttt: " + what + "; the exported model's outputs differ from this checkpoint's";
}

NamedTensors lora_tensors(const LMModelImpl& m, at::ScalarType dtype) {
  MT_CHECK(has_lora(m), "--format lora: the checkpoint has no LoRA adapters (use --format merged)");
  NamedTensors out;
  for (const auto& [name, lin] : kyutai_linear_modules(m)) {
    if (lin->lora_A) {
      out.emplace_back(name + ".lora_A.weight", to_export(lin->lora_A->weight, dtype));
      out.emplace_back(name + ".lora_B.weight", to_export(lin->lora_B->weight, dtype));
    } else {
      // B = 0 makes the adapter a no-op whatever A holds; Kyutai only needs both present, finite.
      const int64_t r = m.lora_cfg.rank;
      out.emplace_back(name + ".lora_A.weight", at::zeros({r, lin->in_features()}, at::dtype(dtype)));
      out.emplace_back(name + ".lora_B.weight", at::zeros({lin->out_features(), r}, at::dtype(dtype)));
    }
  }
  return out;
}

NamedTensors base_tensors(const LMModelImpl& m, at::ScalarType dtype) {
  NamedTensors out;
  for (const auto& kv : m.named_parameters())
    if (!is_lora_param(kv.key()) && !is_ttt_param(kv.key())) out.emplace_back(kv.key(), to_export(kv.value(), dtype));
  return out;
}

NamedTensors merged_tensors(const LMModelImpl& m, at::ScalarType dtype) {
  std::map<std::string, const nn::LinearImpl*> adapted;
  for (const auto& [name, lin] : kyutai_linear_modules(m))
    if (lin->lora_A) adapted[name + ".weight"] = lin;
  NamedTensors out;
  for (const auto& kv : m.named_parameters()) {
    if (is_lora_param(kv.key()) || is_ttt_param(kv.key())) continue;
    auto it = adapted.find(kv.key());
    at::Tensor t = kv.value();
    if (it != adapted.end())
      t = merge_lora(t, it->second->lora_A->weight, it->second->lora_B->weight, it->second->lora_scaling);
    out.emplace_back(kv.key(), to_export(t, dtype));
  }
  return out;
}

bool is_plain_base(const io::SafeTensors& f) {
  for (const auto& t : f.tensors())
    if (is_lora_param(t.name) || is_ttt_param(t.name)) return false;
  return true;
}

nlohmann::json export_config(const LMModelImpl& m, ExportFormat f, const nlohmann::json& raw) {
  nlohmann::json j = raw.is_object() ? raw : nlohmann::json::object();
  const nlohmann::json lm = m.cfg.to_json();  // items() refers into it: not a temporary
  for (const auto& [k, v] : lm.items()) j[k] = v;
  j["lora"] = f == ExportFormat::kLora;
  if (f == ExportFormat::kLora) {
    j["lora_rank"] = m.lora_cfg.rank;
    j["lora_scaling"] = m.lora_cfg.scaling;
  } else {
    j.erase("lora_rank");
    j.erase("lora_scaling");
  }
  return j;
}

namespace {
void check_exportable(const LMModelImpl& m, const ExportOptions& o) {
  const auto ttt = ttt_tensor_names(m);
  MT_CHECK(ttt.empty() || o.drop_ttt, ttt_refusal(ttt));
  MT_CHECK(!m.cfg.rope_scaling.on(),
           "the model uses rope_scaling (YaRN), which Kyutai's moshi LMModel does not take: it would run with plain "
           "RoPE");
  if (o.format == ExportFormat::kLora)
    MT_CHECK(has_lora(m), "--format lora: the checkpoint has no LoRA adapters (use --format merged)");
}

// Writes the weight file and counts what went in.
void write_weights(const fs::path& dir, const std::string& name, const NamedTensors& t, ExportResult& r) {
  io::save((dir / name).string(), t, {{"format", "pt"}, {"producer", "moshi-ttt export"}});
  r.files.push_back(name);
  r.tensors += static_cast<int64_t>(t.size());
  for (const auto& [n, v] : t) r.bytes += static_cast<int64_t>(v.numel() * v.element_size());
}

// OUT.tmp-<pid> -> OUT, replacing OUT only with force (and an empty OUT always).
void publish(const fs::path& tmp, const fs::path& out, bool force) {
  if (fs::exists(out)) {
    MT_CHECK(force || (fs::is_directory(out) && fs::is_empty(out)), out.string(),
             " exists and is not empty (use --force to replace it)");
    fs::remove_all(out);
  }
  fs::rename(tmp, out);
}
}  // namespace

ExportResult write_export(const LMModelImpl& m, const ExportOptions& o, const std::string& out_dir) {
  check_exportable(m, o);
  const fs::path out = fs::path(out_dir).lexically_normal();
  MT_CHECK(!out.empty() && out.filename() != "", out_dir, ": not a folder name");
  MT_CHECK(!fs::exists(out) || o.force || (fs::is_directory(out) && fs::is_empty(out)), out.string(),
           " exists and is not empty (use --force to replace it)");
  const fs::path tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  ExportResult r;
  if (!ttt_tensor_names(m).empty()) r.note = drop_ttt_note(m.ttt_cfg, m.cfg.num_layers);
  try {
    if (o.format == ExportFormat::kLora) {
      write_weights(tmp, "lora.safetensors", lora_tensors(m, o.dtype), r);
      r.base_weights = o.base_weights;
      if (r.base_weights.empty() || !is_plain_base(io::SafeTensors(r.base_weights))) {
        write_weights(tmp, "model.safetensors", base_tensors(m, o.dtype), r);
        r.base_weights = (fs::absolute(out) / "model.safetensors").string();
      }
    } else {
      write_weights(tmp, "consolidated.safetensors", merged_tensors(m, o.dtype), r);
    }
    io::atomic_write((tmp / "config.json").string(), export_config(m, o.format, o.raw_config).dump(2) + "\n");
    r.files.push_back("config.json");
    publish(tmp, out, o.force);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return r;
}

}  // namespace mt::lm
