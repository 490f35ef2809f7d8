// moshi-ttt inspect FILE: tensor table, parameter count, and the LM config it implies.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "tools/commands.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::cli {

void add_inspect(CLI::App& app) {
  struct Opts {
    std::string file;
    bool all = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("inspect", "list a safetensors file's tensors, parameter count and implied LM config");
  sub->add_option("file", o->file, "a .safetensors file, or a model folder")->required();
  sub->add_flag("--all", o->all, "list every tensor (default: the first 60)");
  set_handler(sub, [o]() {
    std::string path = o->file;
    if (fs::is_directory(path)) path = (fs::path(path) / "model.safetensors").string();
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
      // Strict check that the file loads as this config.
      try {
        lm::LMModel m(cfg);
        m->load(f);
        std::printf("loads strictly as this config: yes (%lld parameters)\n", (long long)m->num_parameters());
      } catch (const std::exception& e) {
        std::printf("loads strictly as this config: no: %s\n", error_message(e).c_str());
      }
    }
    return 0;
  });
}

}  // namespace mt::cli
