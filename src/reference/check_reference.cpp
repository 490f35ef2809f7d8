#include "reference/check_reference.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>

#include "io/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::ref {

bool CaseResult::pass() const {
  if (skipped) return true;
  if (checks.empty()) return false;
  return std::all_of(checks.begin(), checks.end(), [](const TensorCheck& c) { return c.pass; });
}

const TensorCheck* CaseResult::worst() const {
  const TensorCheck* w = nullptr;
  for (const auto& c : checks) {
    if (!w || (!c.pass && w->pass) || (c.pass == w->pass && c.worst_ratio > w->worst_ratio)) w = &c;
  }
  return w;
}

namespace {
// Marks c failed with a note when the shapes differ.
bool shape_mismatch(TensorCheck& c, const at::Tensor& got, const at::Tensor& want) {
  if (got.sizes() == want.sizes()) return false;
  c.pass = false;
  c.worst_ratio = INFINITY;
  c.note = str("shape mismatch: expected ", shape_str(want.sizes().vec()), ", got ", shape_str(got.sizes().vec()));
  return true;
}
}  // namespace

TensorCheck failed_check(const std::string& name, const std::string& note) {
  TensorCheck c;
  c.name = name;
  c.pass = false;
  c.note = note;
  return c;
}

TensorCheck compare(const std::string& name, const at::Tensor& got, const at::Tensor& want, double atol, double rtol,
                    const std::string& reason, const std::optional<at::Tensor>& mask) {
  TensorCheck c;
  c.name = name;
  c.atol = atol;
  c.rtol = rtol;
  c.reason = reason;
  if (shape_mismatch(c, got, want)) return c;
  auto g = got.detach().to(at::kCPU, at::kDouble);
  auto w = want.detach().to(at::kCPU, at::kDouble);
  auto err = (g - w).abs();
  auto bound = atol + rtol * w.abs();
  auto ratio = err / bound;
  // NaN in ours where the reference is finite is a failure: treat as infinite error.
  ratio = at::where(at::isnan(ratio), at::full({}, INFINITY, ratio.options()), ratio);
  err = at::where(at::isnan(err), at::full({}, INFINITY, err.options()), err);
  if (mask) {
    auto m = mask->to(at::kCPU, at::kBool);
    while (m.dim() < w.dim()) m = m.unsqueeze(-1);  // a [B, K, T] mask over [B, K, T, N] logits
    m = m.expand_as(w);
    auto zero = at::zeros({}, ratio.options());
    ratio = at::where(m, ratio, zero);
    err = at::where(m, err, zero);
  }
  if (err.numel() > 0) {
    c.max_abs_err = err.max().item<double>();
    c.worst_ratio = ratio.max().item<double>();
  }
  c.pass = c.worst_ratio <= 1.0;
  return c;
}

TensorCheck compare_exact(const std::string& name, const at::Tensor& got, const at::Tensor& want,
                          const std::string& reason) {
  TensorCheck c;
  c.name = name;
  c.reason = reason;
  if (shape_mismatch(c, got, want)) return c;
  auto ne = got.to(at::kCPU, at::kLong).ne(want.to(at::kCPU, at::kLong));
  int64_t n = ne.sum().item<int64_t>();
  c.max_abs_err = static_cast<double>(n);
  c.worst_ratio = n > 0 ? INFINITY : 0.0;
  c.pass = n == 0;
  if (n) c.note = str(n, " of ", want.numel(), " values differ");
  return c;
}

namespace {
struct Kind {
  std::string name;
  std::function<bool(const std::string&)> detect;
  CaseRunner run;
};
std::vector<Kind>& kinds() {
  static std::vector<Kind> k;
  return k;
}
// Kinds we know by their files but have no runner for yet: skipped with a message.
const std::vector<std::pair<std::string, std::vector<std::string>>> kKnownLayouts = {
    {"lm", {"config.json", "model.safetensors", "codes.safetensors", "out.safetensors"}},
    {"ttt", {"config.json", "weights.safetensors", "inputs.safetensors", "outputs.safetensors"}},  // also inplace
    {"mimi", {"config.json", "model.safetensors", "io.safetensors"}},
    {"train", {"config.json", "train.json", "model.safetensors", "batches.safetensors", "out.safetensors"}},
};
bool has_files(const std::string& dir, const std::vector<std::string>& files) {
  for (const auto& f : files)
    if (!fs::exists(fs::path(dir) / f)) return false;
  return true;
}
std::string layout_kind(const std::string& dir) {
  // train before lm: a train case also has model + out files.
  for (auto it = kKnownLayouts.rbegin(); it != kKnownLayouts.rend(); ++it) {
    if (!has_files(dir, it->second)) continue;
    // In-Place TTT cases share the ttt layout; their weights hold the FFN's depthwise target conv.
    if (it->first == "ttt") {
      try {
        if (io::SafeTensors((fs::path(dir) / "weights.safetensors").string()).contains("ttt_conv.weight"))
          return "inplace";
      } catch (const std::exception&) {}
    }
    return it->first;
  }
  return "";
}
}  // namespace

void register_kind(const std::string& kind, std::function<bool(const std::string&)> detect, CaseRunner run) {
  for (auto& k : kinds())
    if (k.name == kind) {
      k.detect = std::move(detect);
      k.run = std::move(run);
      return;
    }
  kinds().push_back({kind, std::move(detect), std::move(run)});
}

std::string detect_kind(const std::string& dir) {
  for (const auto& k : kinds())
    if (k.detect(dir)) return k.name;
  return layout_kind(dir);
}

CaseResult run_case(const std::string& dir, const RunOptions& opt) {
  CaseResult r;
  r.name = fs::path(dir).filename().string();
  if (r.name.empty()) r.name = fs::path(dir).parent_path().filename().string();
  r.kind = detect_kind(dir);
  for (const auto& k : kinds())
    if (k.name == r.kind) {
      CaseResult out = k.run(dir, opt);
      out.name = r.name;
      out.kind = r.kind;
      return out;
    }
  if (r.kind.empty()) {
    // A folder with a config.json that matches no known layout is an error, never a silent skip.
    r.checks.push_back(failed_check(
        "(layout)", "unknown case layout (expected the files of an lm, ttt, inplace, mimi or train case)"));
    return r;
  }
  r.skipped = true;
  r.skip_reason = str("known kind '", r.kind, "', no runner for it yet");
  return r;
}

std::vector<std::string> find_cases(const std::string& root) {
  MT_CHECK(fs::exists(root), root, ": no such folder");
  MT_CHECK(fs::is_directory(root), root, ": not a folder");
  std::vector<std::string> out;
  if (fs::exists(fs::path(root) / "config.json")) return {root};
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    if (it->is_directory() && fs::exists(it->path() / "config.json")) {
      out.push_back(it->path().string());
      it.disable_recursion_pending();
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace mt::ref
