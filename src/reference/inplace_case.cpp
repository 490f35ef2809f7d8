// check-reference for "inplace" cases (shared/reference/README.md, section inplace/): the In-Place TTT
// FFN of ByteDance's official code, run in float64 there and stored as float32. We run the module as it
// is used (float32), compare the output and every gradient of sum(y * grad_out), then decode batch
// row 0 one token at a time through the streaming state.
#include <ATen/ATen.h>

#include <filesystem>
#include <set>

#include "io/safetensors.h"
#include "reference/check_reference.h"
#include "reference/inplace_case.h"
#include "ttt/inplace.h"
#include "util/error.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::ttt {

namespace {

bool is_inplace_case(const std::string& dir) {
  for (const char* f : {"config.json", "weights.safetensors", "inputs.safetensors", "outputs.safetensors"})
    if (!fs::exists(fs::path(dir) / f)) return false;
  try {
    return io::SafeTensors((fs::path(dir) / "weights.safetensors").string()).contains("ttt_conv.weight");
  } catch (const std::exception&) {
    return false;  // an unreadable weights file is reported by the runner of whatever kind claims it
  }
}

// Tolerances are relative to the tensor's largest magnitude: the reference is exact to float32
// storage (float64 arithmetic), so our error is float32 rounding of sums whose terms are of the order
// of the largest entries; an entry near zero carries the absolute error of those terms.
ref::TensorCheck scaled(const std::string& name, const at::Tensor& got, const at::Tensor& want, double k,
                        const std::string& reason) {
  const double scale = std::max(want.abs().max().item<double>(), 1e-30);
  return ref::compare(name, got, want, k * scale, 0.0, str(reason, " (atol = ", k, " x max|want|)"));
}

ref::CaseResult run_inplace_case(const std::string& dir, const ref::RunOptions& opt) {
  ref::CaseResult r;
  const fs::path d(dir);
  InPlaceConfig cfg = InPlaceConfig::from_json_file((d / "config.json").string());
  const c10::Device dev = parse_device(opt.device);
  InPlaceFFN m(cfg);
  m->load_file((d / "weights.safetensors").string());
  m->to(dev);
  io::SafeTensors in_f((d / "inputs.safetensors").string());
  io::SafeTensors out_f((d / "outputs.safetensors").string());
  at::Tensor x = in_f.get("x").to(dev, at::kFloat).requires_grad_(true);
  at::Tensor t = in_f.get("t").to(dev, at::kFloat).requires_grad_(true);
  at::Tensor g = in_f.get("grad_out").to(dev, at::kFloat);
  MT_CHECK(x.sizes() == t.sizes() && x.sizes() == g.sizes(), dir, ": x, t, grad_out must share a shape; got ",
           shape_str(x.sizes().vec()), ", ", shape_str(t.sizes().vec()), ", ", shape_str(g.sizes().vec()));
  std::set<std::string> compared;
  auto want = [&](const std::string& name) {
    compared.insert(name);
    return out_f.get(name);
  };

  const std::string fwd = "fp32 forward vs float64 reference: float32 rounding of H-long and chunk-long sums";
  at::Tensor y = m->forward(x, t);
  r.checks.push_back(scaled("y", y.detach().cpu(), want("y"), 2e-6, fwd));
  (y * g).sum().backward();
  const std::string bwd = "fp32 backward: sums over B*T tokens and over chunks, float32 rounding";
  // A leaf the loss does not reach (t and the target weights when T fits in one chunk) has no grad.
  auto grad_of = [](const at::Tensor& v) { return v.grad().defined() ? v.grad().cpu() : at::zeros(v.sizes()); };
  r.checks.push_back(scaled("grad.x", grad_of(x), want("grad.x"), 4e-6, bwd));
  r.checks.push_back(scaled("grad.t", grad_of(t), want("grad.t"), 4e-6, bwd));
  for (const auto& kv : m->named_parameters())
    r.checks.push_back(scaled("grad." + kv.key(), grad_of(kv.value()), want("grad." + kv.key()), 4e-6, bwd));

  // Streaming: batch row 0, one token at a time through the per-stream state.
  {
    at::NoGradGuard ng;
    InPlaceState st = m->make_state(1);
    std::vector<at::Tensor> ys;
    at::Tensor x0 = x.detach().narrow(0, 0, 1), t0 = t.detach().narrow(0, 0, 1);
    for (int64_t i = 0; i < x.size(1); ++i) ys.push_back(m->step(x0.narrow(1, i, 1), t0.narrow(1, i, 1), st));
    const std::string why = "fp32 token-by-token decode (running ΔW instead of the sequence form)";
    r.checks.push_back(scaled("y_stream", at::cat(ys, 1).cpu(), want("y_stream"), 2e-6, why));
    r.checks.push_back(
        scaled("w_final", st.w_final(0).cpu(), want("w_final"), 2e-6, "fp32 sum of the completed chunks' updates"));
  }
  // Every stored output must have been compared: a tensor we do not produce is a failure, not a skip.
  for (const auto& name : out_f.names())
    if (!compared.count(name))
      r.checks.push_back(
          ref::failed_check(name, "stored in outputs.safetensors but not produced by the module (use_proj mismatch?)"));
  return r;
}

}  // namespace

}  // namespace mt::ttt

namespace mt::ref {
void register_inplace_case() { register_kind("inplace", ttt::is_inplace_case, ttt::run_inplace_case); }
}  // namespace mt::ref
