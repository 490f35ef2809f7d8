// moshi-ttt score: per-position, per-stream cross-entropy of a codes file, whole-sequence or streamed.
#include <cmath>
#include <cstdio>

#include "eval/position_loss.h"
#include "io/codes_file.h"
#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "lm/ttt_probes.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "util/error.h"

namespace mt::cli {

void add_score(CLI::App& app) {
  struct Opts {
    ModelArgs model;
    std::string codes, out;
    bool streaming = false, logits = false, diagnostics = false;
    std::string diagnostics_out;
    int64_t chunk = 1;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("score", "cross-entropy of a codes file per position and stream (whole or streamed)");
  o->model.add(sub);
  sub->add_option("--codes", o->codes, "safetensors with codes [B, 1 + n_q, T] (int64)")->required();
  sub->add_option("--out", o->out, "write ce [B, 1 + dep_q, T] (NaN where not scored), mask, and logits with --logits");
  sub->add_flag("--streaming", o->streaming,
                "run the temporal transformer step by step, carrying KV caches and TTT states");
  sub->add_option("--chunk", o->chunk, "steps per streaming call")->capture_default_str();
  sub->add_flag("--logits", o->logits, "also write logits and text_logits");
  sub->add_flag("--diagnostics", o->diagnostics,
                "print per TTT unit: gate, inner losses (W0 / before / after each update), state change |W-W0|");
  sub->add_option("--diagnostics-out", o->diagnostics_out, "write the TTT diagnostics as JSON (implies --diagnostics)");
  set_handler(sub, [o]() {
    std::string origin;
    lm::LMModel m = o->model.build(&origin);
    at::Tensor codes = io::read_codes(o->codes);  // [B, K, T] int64 ([K, T]: one file of a token dataset)
    MT_CHECK(codes.dim() == 3 && codes.size(1) == m->cfg.num_codebooks(), o->codes, ": codes: expected [B, ",
             m->cfg.num_codebooks(), ", T] (or [", m->cfg.num_codebooks(), ", T]), got ",
             shape_str(codes.sizes().vec()));
    MT_CHECK(((codes >= -1) & (codes <= std::max(m->cfg.card, m->cfg.text_card))).all().item<bool>(), o->codes,
             ": codes hold ids outside [-1, card]");
    MT_CHECK(o->chunk >= 1, "--chunk must be >= 1");
    codes = codes.to(m->text_linear->weight.device());
    lm::LMOutput out;
    const bool diag = o->diagnostics || !o->diagnostics_out.empty();
    MT_CHECK(!diag || m->transformer->has_addons(), "--diagnostics: this model has no TTT layer");
    std::vector<lm::LayerProbes> probes;
    {
      at::InferenceMode im;
      if (o->streaming) {
        lm::TransformerState st = m->make_state(codes.size(0), o->chunk);
        out = m->forward_streaming(codes, st, diag ? &probes : nullptr);
      } else {
        out = m->forward(codes, diag ? &probes : nullptr);
      }
    }
    const auto& c = m->cfg;
    at::Tensor ce = eval::stream_cross_entropy(c, out, codes).cpu();
    at::Tensor mask = out.text_mask.cpu();
    if (c.dep_q > 0) mask = at::cat({mask, out.mask.cpu()}, 1);
    std::printf("model: %s\nscored %lld sequences x %lld steps (%s)\n", origin.c_str(), (long long)codes.size(0),
                (long long)codes.size(2), o->streaming ? "streaming" : "whole sequence");
    for (int64_t k = 0; k < ce.size(1); ++k) {
      at::Tensor v = ce.select(1, k).masked_select(mask.select(1, k));
      std::printf("  %-8s mean CE %.4f nats over %lld positions\n", k == 0 ? "text" : str("audio ", k - 1).c_str(),
                  v.numel() ? v.mean().item<double>() : NAN, (long long)v.numel());
    }
    if (diag) {
      auto report = lm::ttt_report(*m, probes);
      std::printf("TTT diagnostics (%s):\n%s", o->streaming ? "streamed" : "whole sequence",
                  lm::format_report(report).c_str());
      if (!o->diagnostics_out.empty()) {
        io::atomic_write(o->diagnostics_out, lm::report_json(report).dump(2) + "\n");
        std::printf("wrote %s\n", o->diagnostics_out.c_str());
      }
    }
    if (!o->out.empty()) {
      std::vector<std::pair<std::string, at::Tensor>> t = {{"ce", ce}, {"mask", mask}};
      if (o->logits) {
        t.emplace_back("text_logits", out.text_logits.cpu());
        if (c.dep_q > 0) t.emplace_back("logits", out.logits.cpu());
      }
      io::save(o->out, t);
      std::printf("wrote %s\n", o->out.c_str());
    }
    return 0;
  });
}

}  // namespace mt::cli
