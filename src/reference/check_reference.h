#pragma once
// Reference cases: folders made by the public reference implementations (see shared/reference/README.md).
// Each kind (lm, ttt, ...) has a runner that compares our outputs with the stored ones, tensor by tensor,
// each with a tolerance written next to its reason.
#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mt::ref {

struct TensorCheck {
  std::string name;
  double max_abs_err = 0;  // max |got - want| over compared elements
  double worst_ratio = 0;  // max |got - want| / (atol + rtol |want|); pass iff <= 1
  double atol = 0, rtol = 0;
  std::string reason;  // why this tolerance
  bool pass = true;
  std::string note;  // e.g. "shape mismatch"
};

struct CaseResult {
  std::string name;  // folder name
  std::string kind;  // lm, ttt, mimi, ...
  bool skipped = false;
  std::string skip_reason;
  std::vector<TensorCheck> checks;
  bool pass() const;
  const TensorCheck* worst() const;  // the check with the largest worst_ratio (failed first)
};

struct RunOptions {
  std::string device = "cpu";
  bool verbose = false;
};

// Compares got with want (any float dtype; compared in float64). If mask is given (bool, broadcastable
// to want), only elements where it is true are compared. Shape mismatches fail with a note.
TensorCheck compare(const std::string& name, const at::Tensor& got, const at::Tensor& want, double atol, double rtol,
                    const std::string& reason, const std::optional<at::Tensor>& mask = {});
// A failed check that compared nothing (a tensor missing from the case, an unknown layout...).
TensorCheck failed_check(const std::string& name, const std::string& note);
// Exact equality (integer tensors).
TensorCheck compare_exact(const std::string& name, const at::Tensor& got, const at::Tensor& want,
                          const std::string& reason);

using CaseRunner = std::function<CaseResult(const std::string& dir, const RunOptions&)>;

// Registers a runner for a kind; `detect` says whether a folder is a case of that kind.
void register_kind(const std::string& kind, std::function<bool(const std::string& dir)> detect, CaseRunner run);
// Kind of the case in `dir` ("" if none matches).
std::string detect_kind(const std::string& dir);
// Runs one case folder (skipped with a reason for kinds without a runner).
CaseResult run_case(const std::string& dir, const RunOptions& opt);
// Finds case folders under `root` (root itself if it is a case), sorted.
std::vector<std::string> find_cases(const std::string& root);

// Registers the built-in runners (lm, ttt, ...). Safe to call more than once.
void register_builtin_kinds();

}  // namespace mt::ref
