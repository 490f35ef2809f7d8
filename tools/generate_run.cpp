#include "tools/generate_run.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/lm_gen.h"
#include "util/error.h"
#include "util/plot.h"

namespace fs = std::filesystem;

namespace mt::cli {

void GenerateOpts::add(CLI::App* sub) {
  sub->add_option("--steps", steps, "number of 80 ms steps")->capture_default_str();
  sub->add_option("--batch", batch, "parallel streams")->capture_default_str();
  sub->add_flag("--greedy", greedy, "argmax decoding for text and audio");
  sub->add_option("--temp", temp, "audio temperature")->capture_default_str();
  sub->add_option("--temp-text", temp_text, "text temperature")->capture_default_str();
  sub->add_option("--top-k", top_k, "audio top-k")->capture_default_str();
  sub->add_option("--top-k-text", top_k_text, "text top-k")->capture_default_str();
  sub->add_option("--seed", seed, "sampling seed")->capture_default_str();
  sub->add_option("--user-codes", user_codes, "safetensors file with user_codes [B, n_q - dep_q, S] (default: zeros)");
  sub->add_option("--out", out, "write generated tokens [B, 1 + dep_q, S'] here (safetensors)");
  sub->add_option("--run-dir", run_dir, "write metrics.jsonl (per-step latency) and summary.json here");
  sub->add_flag("-q,--quiet", quiet, "no progress lines");
}

namespace {
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}
}  // namespace

int run_generate(const GenerateOpts& o) {
  MT_CHECK(o.steps > 0, "--steps must be > 0");
  MT_CHECK(o.batch > 0, "--batch must be > 0");
  std::string origin;
  lm::LMModel model = o.model.build(&origin);
  const auto& c = model->cfg;
  lm::SamplingConfig s;
  s.use_sampling = !o.greedy;
  s.temp = o.temp;
  s.temp_text = o.temp_text;
  s.top_k = o.top_k;
  s.top_k_text = o.top_k_text;
  s.seed = o.seed;
  lm::LMGen gen(model, s);
  at::Tensor user;
  int64_t batch = o.batch;
  if (!o.user_codes.empty()) {
    io::SafeTensors f(o.user_codes);
    user = f.get("user_codes");
    MT_CHECK(user.dim() == 3, o.user_codes, ": user_codes must be [B, n_q - dep_q, S], got ", shape_str(user.sizes().vec()));
    batch = user.size(0);
    MT_CHECK(user.size(2) >= o.steps, o.user_codes, ": holds ", user.size(2), " steps, --steps asks for ", o.steps);
  }
  lm::LMGenState st = gen.make_state(batch);
  std::printf("model: %s (%.2f M parameters, dim %lld, %lld layers, %lld streams)\n", origin.c_str(),
              model->num_parameters() / 1e6, (long long)c.dim, (long long)c.num_layers, (long long)c.num_codebooks());
  std::printf("generating %lld steps (%.1f s of audio at 12.5 Hz), batch %lld, %s\n", (long long)o.steps,
              o.steps / 12.5, (long long)batch, o.greedy ? "greedy" : "sampling");
  std::fflush(stdout);
  std::ofstream metrics;
  if (!o.run_dir.empty()) {
    fs::create_directories(o.run_dir);
    metrics.open((fs::path(o.run_dir) / "metrics.jsonl").string());
    MT_CHECK(metrics.good(), o.run_dir, ": cannot write metrics.jsonl");
  }
  const int64_t every = std::max<int64_t>(1, o.steps / 10);
  double total = 0;
  auto res = lm::generate(gen, st, o.steps, user, [&](int64_t t, double ms) {
    total += ms;
    if (metrics.is_open()) metrics << nlohmann::json{{"step", t}, {"ms", ms}}.dump() << "\n";
    if (!o.quiet && ((t + 1) % every == 0 || t + 1 == o.steps)) {
      double per = total / static_cast<double>(t + 1);
      std::printf("  step %5lld/%lld  %7.2f ms/step  %6.1f steps/s  (real time needs <= 80 ms)  ETA %.1f s\n",
                  (long long)(t + 1), (long long)o.steps, per, 1000.0 / per, per * static_cast<double>(o.steps - t - 1) / 1000.0);
      std::fflush(stdout);
    }
  });
  // Skip the first steps (allocation, warm-up) in the latency summary when there are enough.
  std::vector<double> ms(res.step_ms.begin() + std::min<size_t>(res.step_ms.size() / 10, 5), res.step_ms.end());
  double p50 = percentile(ms, 0.5), p90 = percentile(ms, 0.9);
  at::Tensor text = res.tokens.narrow(1, 0, 1);
  int64_t non_pad = 0;
  if (text.numel()) {
    at::Tensor pad = text.eq(c.existing_text_padding_id.value_or(-100)) | text.eq(c.existing_text_end_padding_id);
    non_pad = (~pad).sum().item<int64_t>();
  }
  std::printf("done: %lld frames out, median %.2f ms/step, p90 %.2f ms/step, %.1fx real time; %lld text tokens that are not padding\n",
              (long long)res.tokens.size(2), p50, p90, 80.0 / std::max(p50, 1e-9), (long long)non_pad);
  if (res.tokens.size(2) > 0) {
    int64_t show = std::min<int64_t>(16, res.tokens.size(2));
    std::printf("first frames of slot 0 (text | audio codebooks):\n");
    for (int64_t t = 0; t < show; ++t) {
      std::printf("  t=%-3lld %5lld |", (long long)t, (long long)res.tokens[0][0][t].item<int64_t>());
      for (int64_t k = 1; k < res.tokens.size(1); ++k) std::printf(" %4lld", (long long)res.tokens[0][k][t].item<int64_t>());
      std::printf("\n");
    }
  }
  if (!o.out.empty()) {
    io::save(o.out, std::vector<std::pair<std::string, at::Tensor>>{{"tokens", res.tokens}});
    std::printf("wrote %s\n", o.out.c_str());
  }
  if (!o.run_dir.empty()) {
    nlohmann::json j = {{"model", origin}, {"steps", o.steps}, {"batch", batch}, {"greedy", o.greedy},
                        {"median_ms_per_step", p50}, {"p90_ms_per_step", p90}, {"frames_out", res.tokens.size(2)},
                        {"text_tokens_not_padding", non_pad}};
    io::atomic_write((fs::path(o.run_dir) / "summary.json").string(), j.dump(2) + "\n");
    plot::Chart ch;
    ch.title = "Streaming step latency";
    ch.xlabel = "step (80 ms of audio each)";
    ch.ylabel = "ms per step";
    ch.series.push_back({"step time", {}, res.step_ms});
    ch.hlines.push_back({p50, str("median ", std::round(p50 * 100) / 100, " ms")});
    ch.ymin = 0;
    plot::write_png(ch, (fs::path(o.run_dir) / "latency.png").string());
    std::printf("wrote %s/{metrics.jsonl,summary.json,latency.png}\n", o.run_dir.c_str());
  }
  return 0;
}

}  // namespace mt::cli
