// check-reference for mimi cases (shared/reference/README.md, mimi/): Kyutai's MimiModel encode (latent
// and codes), decode of the reference codes, and streaming encode fed one 1920-sample frame at a time.
#include "reference/mimi_case.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "mimi/mimi.h"
#include "reference/check_reference.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::mimi {

namespace {

bool is_mimi_case(const std::string& dir) {
  for (const char* f : {"config.json", "model.safetensors", "io.safetensors"})
    if (!fs::exists(fs::path(dir) / f)) return false;
  return true;
}

}  // namespace

CodeCheck check_codes(const Mimi& m, const at::Tensor& latent, const at::Tensor& got, const at::Tensor& want,
                      double tie_rel) {
  CodeCheck c;
  MT_CHECK(got.sizes() == want.sizes(), "codes: got shape ", shape_str(got.sizes().vec()), ", reference ",
           shape_str(want.sizes().vec()));
  c.total = want.numel();
  c.matches = got.eq(want).sum().item<int64_t>();
  // Walk the residual along the reference's codes; a mismatch counts as a tie when the reference's
  // choice is within tie_rel (relative to |r|^2 + |c_best|^2) of our best distance.
  auto group = [&](const ResidualVQ& g, int64_t first_k, int64_t n) {
    at::Tensor r = g->input_proj->forward(latent.to(at::kFloat)).transpose(1, 2).to(at::kDouble);  // [B, T, D]
    for (int64_t i = 0; i < n; ++i) {
      const auto& book = g->book(i);
      at::Tensor cen = book->centroids().to(at::kDouble);                                      // [N, D]
      at::Tensor d = (r * r).sum(-1, true) - 2 * at::matmul(r, cen.t()) + (cen * cen).sum(1);  // [B, T, N]
      at::Tensor ref = want.select(1, first_k + i);                                            // [B, T]
      at::Tensor best = std::get<0>(d.min(-1));
      at::Tensor dref = d.gather(-1, ref.unsqueeze(-1)).squeeze(-1);
      at::Tensor scale = (r * r).sum(-1) + best.abs() + 1e-12;
      at::Tensor mism = got.select(1, first_k + i).ne(ref);
      at::Tensor clear = mism & ((dref - best) / scale > tie_rel);
      c.clear_mismatches += clear.sum().item<int64_t>();
      r = r - at::embedding(cen, ref);
    }
  };
  const int64_t k = want.size(1);
  group(m->quantizer->rvq_first, 0, 1);
  if (k > 1) group(m->quantizer->rvq_rest, 1, k - 1);
  return c;
}

namespace {

ref::TensorCheck code_check(const std::string& name, const CodeCheck& c, double min_rate, double tie_rel) {
  ref::TensorCheck t;
  t.name = name;
  const double rate = c.total ? static_cast<double>(c.matches) / static_cast<double>(c.total) : 1.0;
  t.max_abs_err = 1.0 - rate;
  t.atol = 1.0 - min_rate;
  t.worst_ratio = t.atol > 0 ? (1.0 - rate) / t.atol : (rate < 1 ? 1e9 : 0);
  t.reason =
      str("codes by match rate >= ", min_rate,
          " and exactly where the reference's centroid is not a near-tie (distance within ", tie_rel, " relative)");
  t.note = str(c.matches, "/", c.total, " match, ", c.clear_mismatches, " outside near-ties");
  if (c.clear_mismatches > 0) t.worst_ratio = std::max(t.worst_ratio, 1e9);
  t.pass = t.worst_ratio <= 1.0;
  return t;
}

ref::CaseResult run(const std::string& dir, const ref::RunOptions& opt) {
  ref::CaseResult r;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  Mimi m = load_mimi((fs::path(dir) / "model.safetensors").string(), cfg_path);
  at::Device dev(opt.device);
  // The reference ran in full float32: cuDNN's TF32 convolutions (PyTorch's default) would move the
  // latent by ~1e-3 and flip codes. Restored when the case ends.
  struct Tf32Off {
    bool prev = at::globalContext().allowTF32CuDNN();
    Tf32Off() { at::globalContext().setAllowTF32CuDNN(false); }
    ~Tf32Off() { at::globalContext().setAllowTF32CuDNN(prev); }
  } tf32_off;
  m->to(dev);
  m->quantizer->refresh();
  auto io = io::load_all((fs::path(dir) / "io.safetensors").string());
  auto need = [&](const char* k) {
    auto it = io.find(k);
    MT_CHECK(it != io.end(), dir, "/io.safetensors: missing tensor '", k, "'");
    return it->second;
  };
  at::InferenceMode im;
  at::Tensor wav = need("wav").to(dev);
  at::Tensor latent = m->encode_latent(wav);
  // float32 convolutions and attention in a different order (oneDNN / cuDNN vs PyTorch's choice) over a
  // 15-conv SEANet, 2x transformer and a stride-2 conv: errors of ~1e-6 of the latent's scale.
  r.checks.push_back(ref::compare("latent", latent, need("latent"), 1e-4, 1e-3,
                                  "float32 SEANet + transformer, other conv algorithms and summation order"));
  at::Tensor codes = m->quantizer->encode(latent, m->cfg.num_codebooks);
  at::Tensor want_codes = need("codes").to(dev);
  r.checks.push_back(code_check("codes", check_codes(m, latent, codes, want_codes, 1e-4), 0.9, 1e-4));
  // Decode the reference's codes so that a flipped code does not count twice.
  r.checks.push_back(ref::compare("decoded", m->decode(want_codes), need("decoded"), 1e-4, 1e-3,
                                  "float32 decoder (transformer + transposed convs), other summation order"));
  if (io.count("codes_stream")) {
    const int64_t fs = m->cfg.frame_size();
    auto stream = [&](bool exact) {
      MimiState st = m->make_state(wav.size(0), 1, exact);
      std::vector<at::Tensor> lat;
      for (int64_t s = 0; s + fs <= wav.size(2); s += fs)
        lat.push_back(m->encode_latent_step(wav.narrow(2, s, fs), st));
      return at::cat(lat, 2);
    };
    // Kyutai's streaming (KV rings of `context` entries), frame by frame.
    at::Tensor lat_s = stream(false);
    at::Tensor cs = m->quantizer->encode(lat_s, m->cfg.num_codebooks);
    // Near-tie margin 1e-2: the reference stores no streaming latent to start the residual walk from, and
    // the deepest codebooks quantize residuals so small that float32 differences weigh 100x more there
    // (measured: one flip, on the 8th codebook, at 3e-3 relative).
    r.checks.push_back(
        code_check("codes_stream", check_codes(m, lat_s, cs, need("codes_stream").to(dev), 1e-2), 0.9, 1e-2));
    // Exact streaming equals our whole-signal latent (the reference stores no streaming latent).
    r.checks.push_back(
        ref::compare("latent_stream_exact_vs_whole", stream(true), latent, 1e-4, 1e-3,
                     "exact streaming = whole signal up to float32 rounding (same math, other chunking)"));
  }
  return r;
}

}  // namespace

}  // namespace mt::mimi

namespace mt::ref {
void register_mimi_case() { register_kind("mimi", mimi::is_mimi_case, mimi::run); }
}  // namespace mt::ref
