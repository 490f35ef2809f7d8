// moshi-ttt inspect FILE: tensor table, parameter count, and the LM config it implies.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "lm/model_config.h"
#include "tools/commands.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

namespace {
// Parameters TTT and LoRA add, per layer and unit; a TTT adapter is shown next to the LoRA of the same
// rank on the same linear.
void print_added_parameters(const lm::LMModelImpl& m) {
  int64_t ttt = 0, lora = 0, base = 0;
  for (const auto& kv : m.named_parameters()) {
    if (lm::is_ttt_param(kv.key()))
      ttt += kv.value().numel();
    else if (lm::is_lora_param(kv.key()))
      lora += kv.value().numel();
    else
      base += kv.value().numel();
  }
  if (ttt == 0 && lora == 0) return;
  std::printf("parameters: base %lld, TTT %lld (%.2f%%), LoRA %lld (%.2f%%)\n", (long long)base, (long long)ttt,
              100.0 * ttt / base, (long long)lora, 100.0 * lora / base);
  const auto& layers = m.transformer->layer_ptrs;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& layer = layers[l];
    auto count = [](const torch::nn::Module& mod) {
      int64_t n = 0;
      for (const auto& p : mod.parameters()) n += p.numel();
      return n;
    };
    if (const auto* h = lm::hybrid_of(*layer))
      std::printf("  layer %zu hybrid TTT-%s: %lld\n", l, h->layer->config().ttt_layer_type.c_str(),
                  (long long)count(*h));
    for (const auto* a : lm::adapters_of(*layer)) {
      const int64_t in = a->down->in_features(), out = a->up->out_features(), r = a->layer->config().hidden_size;
      std::printf("  layer %zu TTT adapter on %s (%lld -> %lld, width %lld): %lld; LoRA of rank %lld there: %lld\n", l,
                  a->target.c_str(), (long long)in, (long long)out, (long long)r,
                  (long long)lm::adapter_parameters(in, out, a->layer->config()), (long long)r,
                  (long long)nn::lora_parameters(in, out, r));
    }
    if (const auto* ip = lm::inplace_of(*layer)) {
      const auto& f = ip->inner();
      const int64_t n = f.conv_weight.numel() + (f.proj_weight.defined() ? f.proj_weight.numel() : 0);
      std::printf("  layer %zu In-Place TTT target (conv + projection): %lld; fast weight %lld x %lld per stream\n", l,
                  (long long)n, (long long)f.cfg.dim, (long long)f.cfg.hidden);
    }
  }
}
// Kyutai's q8 linears: int8 `<name>` with float32 `<name>_scb` row scales.
void print_q8_summary(const io::SafeTensors& f) {
  int64_t n = 0, codes = 0, scales = 0, odd = 0;
  for (const auto& t : f.tensors()) {
    if (t.dtype != "I8") continue;
    if (!f.contains(t.name + "_scb")) {
      ++odd;
      continue;
    }
    ++n;
    codes += static_cast<int64_t>(t.end - t.begin);
    const auto& s = f.info(t.name + "_scb");
    scales += static_cast<int64_t>(s.end - s.begin);
  }
  if (n == 0 && odd == 0) return;
  std::printf(
      "q8 (Kyutai's int8 format, quantize: true): %lld quantised linears, %.1f MB of int8 codes + %.2f MB "
      "of float32 row scales (%.1f MB as float32)\n",
      (long long)n, codes / 1e6, scales / 1e6, 4.0 * codes / 1e6);
  if (odd) std::printf("warning: %lld int8 tensors without a *_scb scale tensor\n", (long long)odd);
}
}  // namespace

void add_inspect(CLI::App& app) {
  struct Opts {
    std::string file, config;
    bool all = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("inspect", "list a safetensors file's tensors, parameter count and implied LM config");
  sub->add_option("file", o->file, "a .safetensors file, or a model folder")->required();
  sub->add_flag("--all", o->all, "list every tensor (default: the first 60)");
  sub->add_option("--config", o->config,
                  "YAML model config (ttt: / lora:) the file is meant for (default: the folder's model.yaml)");
  set_handler(sub, [o]() {
    std::string path = o->file, yaml = o->config;
    if (fs::is_directory(path)) {
      if (yaml.empty() && fs::exists(fs::path(path) / "model.yaml")) yaml = (fs::path(path) / "model.yaml").string();
      path = (fs::path(path) / "model.safetensors").string();
    }
    io::SafeTensors f(path);
    std::printf("%s: %zu tensors, %zu metadata keys\n", path.c_str(), f.tensors().size(), f.metadata().size());
    std::vector<io::TensorInfo> ts = f.tensors();
    std::sort(ts.begin(), ts.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    size_t nw = 4;
    for (const auto& t : ts) nw = std::max(nw, t.name.size());
    nw = std::min<size_t>(nw, 70);
    std::printf("%-*s  %-5s  %s\n", (int)nw, "name", "dtype", "shape");
    int64_t params = 0, bytes = 0;
    std::map<std::string, int64_t> by_dtype;
    size_t shown = 0;
    for (const auto& t : ts) {
      params += t.numel();
      bytes += static_cast<int64_t>(t.end - t.begin);
      by_dtype[t.dtype] += t.numel();
      if (o->all || shown < 60) {
        std::printf("%-*s  %-5s  %s\n", (int)nw, t.name.c_str(), t.dtype.c_str(), shape_str(t.shape).c_str());
        ++shown;
      }
    }
    if (shown < ts.size()) std::printf("... %zu more (use --all)\n", ts.size() - shown);
    std::printf("parameters: %lld (%.3f M), %.1f MB", (long long)params, params / 1e6, bytes / 1e6);
    for (const auto& [d, n] : by_dtype) std::printf("  %s: %lld", d.c_str(), (long long)n);
    std::printf("\n");
    print_q8_summary(f);
    for (const auto& [k, v] : f.metadata()) std::printf("metadata %s = %s\n", k.c_str(), v.c_str());
    lm::LMConfig cfg;
    std::vector<std::string> notes;
    if (lm::infer_config(f, cfg, &notes)) {
      fs::path cj = fs::path(path).parent_path() / "config.json";
      if (fs::exists(cj)) {
        cfg = lm::LMConfig::from_file(cj.string());
        notes = {"config read from " + cj.string()};
      }
      std::printf("Moshi LM config:\n%s\n", cfg.to_json().dump(2).c_str());
      for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
      lm::TTTIntegrationConfig ttt;
      lm::LoRAConfig lora;
      if (!yaml.empty()) {
        lm::ModelConfigFile mc = lm::ModelConfigFile::load(yaml);
        ttt = mc.ttt;
        lora = mc.lora;
        std::printf("ttt / lora sections read from %s\n", yaml.c_str());
      }
      // Strict check that the file loads as this config.
      try {
        lm::LMModel m(cfg, ttt, lora);
        int64_t initialised = m->load(f);
        std::printf("loads strictly as this config: yes (%lld parameters%s)\n", (long long)m->num_parameters(),
                    initialised ? str(", ", initialised, " TTT/LoRA tensors absent: a base checkpoint").c_str() : "");
        print_added_parameters(*m);
      } catch (const std::exception& e) {
        std::printf("loads strictly as this config: no: %s\n", error_message(e).c_str());
      }
    }
    return 0;
  });
}

}  // namespace mt::cli
