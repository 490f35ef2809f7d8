// moshi-ttt download REPO_ID [FILES...]: files of a Hugging Face hub repo into the shared hub cache
// (the Python client's layout), one local path printed per file.
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hub.h"
#include "tools/commands.h"
#include "util/error.h"

namespace mt::cli {

namespace {

struct DownloadArgs {
  std::string repo_id, revision = "main", repo_type = "model";
  std::vector<std::string> files;
};

// A config.json entry naming a file: a bare name is in the repo itself, hf:// names another repo's file.
io::hub::FileRef named_file(const io::hub::FileRef& repo, const std::string& name) {
  if (io::hub::is_hub_path(name)) return io::hub::parse_hub_path(name);
  io::hub::FileRef ref = repo;
  ref.filename = name;
  return ref;
}

// Kyutai's set: config.json when the repo has one, then the LM, Mimi and tokenizer files it names
// (moshi's loader defaults when it names none or is absent).
std::vector<std::string> kyutai_set(const io::hub::FileRef& repo, const io::hub::Settings& s) {
  io::hub::FileRef config = repo;
  config.filename = "config.json";
  nlohmann::json j = nlohmann::json::object();
  std::vector<std::string> paths;
  if (const auto path = io::hub::try_download(config, s)) {
    std::ifstream in(*path);
    j = nlohmann::json::parse(in, nullptr, false);
    MT_CHECK(j.is_object(), *path, ": config.json of ", repo.repo_id, " is not a JSON object");
    paths.push_back(*path);
  }
  for (const auto& [key, fallback] : {std::pair<const char*, const char*>{"moshi_name", "model.safetensors"},
                                      {"mimi_name", "tokenizer-e351c8d8-checkpoint125.safetensors"},
                                      {"tokenizer_name", "tokenizer_spm_32k_3.model"}}) {
    const auto it = j.find(key);
    const std::string name = it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
    if (!io::hub::is_file_url(name)) paths.push_back(io::hub::download(named_file(repo, name), s));
  }
  return paths;
}

}  // namespace

void add_download(CLI::App& app) {
  auto a = std::make_shared<DownloadArgs>();
  auto* sub = app.add_subcommand(
      "download",
      "download files of a Hugging Face hub repo into the hub cache (shared with the Python hub client) and print "
      "their local paths, one per line. Without FILES: Kyutai's set (config.json when present, then the LM, Mimi "
      "and tokenizer files it names, else model.safetensors, tokenizer-e351c8d8-checkpoint125.safetensors, "
      "tokenizer_spm_32k_3.model). Honours HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE / HF_HOME, HF_HUB_OFFLINE");
  sub->add_option("repo_id", a->repo_id, "repo id, e.g. kyutai/moshiko-pytorch-bf16")->required();
  sub->add_option("files", a->files, "files in the repo (paths inside it)");
  sub->add_option("--revision", a->revision, "branch, tag or commit")->capture_default_str();
  sub->add_option("--repo-type", a->repo_type, "repo type")
      ->check(CLI::IsMember({"model", "dataset", "space"}))
      ->capture_default_str();
  set_handler(sub, [a]() {
    const io::hub::Settings s = io::hub::Settings::from_environment();
    io::hub::FileRef repo{a->repo_id, "", a->revision, a->repo_type};
    std::vector<std::string> paths;
    if (a->files.empty()) paths = kyutai_set(repo, s);
    for (const auto& f : a->files) paths.push_back(io::hub::download(named_file(repo, f), s));
    for (const auto& p : paths) std::printf("%s\n", p.c_str());
    return 0;
  });
}

}  // namespace mt::cli
