#pragma once
// Helpers shared by the tests.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/runtime.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

// Skips the test (from its body) without CUDA; with CUDA, turns TF32 off so fp32 compares tightly.
#define REQUIRE_CUDA()                                             \
  do {                                                             \
    if (!::mt::cuda_available()) GTEST_SKIP() << "no CUDA device"; \
    at::globalContext().setAllowTF32CuBLAS(false);                 \
    at::globalContext().setAllowTF32CuDNN(false);                  \
  } while (0)

namespace mt::test {

inline std::string reference_dir() { return MT_REFERENCE_DIR; }

// A whole file's bytes ("" when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return {};
  std::string s;
  char buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
  std::fclose(f);
  return s;
}
inline std::string cli() { return MT_CLI; }

// A fresh temporary folder, removed when the object goes away.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    // TMPDIR (or /tmp), else the working folder; never a null path (mkdtemp can fail in sandboxes).
    std::error_code ec;
    std::filesystem::path base = std::filesystem::temp_directory_path(ec);
    for (const auto& b : {base, std::filesystem::current_path(ec)}) {
      if (b.empty()) continue;
      std::string tmpl = (b / "moshi-ttt-test-XXXXXX").string();
      if (mkdtemp(tmpl.data())) {
        path = tmpl;
        return;
      }
    }
    throw std::runtime_error("TempDir: cannot create a temporary folder");
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// Runs fn, expects mt::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const mt::Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no mt::Error thrown (expected one mentioning '" << parts.front() << "')";
}

// Runs a shell command, returns exit code; output captured into *out.
inline int run(const std::string& cmd, std::string* out = nullptr) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::string o;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) o.append(buf, n);
  int rc = pclose(p);
  if (out) *out = o;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// The records of one kind ("train", "eval", "summary", ...) of a run folder's metrics.jsonl.
inline std::vector<nlohmann::json> run_metrics(const std::string& run_dir, const std::string& kind = "train") {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      auto j = nlohmann::json::parse(line);
      if (j.value("kind", "") == kind) out.push_back(j);
    }
  return out;
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace mt::test
