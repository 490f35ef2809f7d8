#include "tools/generate_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "app/duplex.h"
#include "audio/audio_io.h"
#include "io/safetensors.h"
#include "lm/lm_gen.h"
#include "mimi/mimi.h"
#include "report/plot.h"
#include "util/error.h"
#include "util/peak_memory.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::cli {

void GenerateOpts::add(CLI::App* sub) {
  sub->add_option("--steps", steps, "number of 80 ms steps")->capture_default_str();
  sub->add_option("--batch", batch, "parallel streams")->capture_default_str();
  sampling.add(sub);
  sub->add_option("--user-codes", user_codes, "safetensors file with user_codes [B, n_q - dep_q, S] (default: zeros)");
  sub->add_option("--out", out,
                  "write generated tokens [B, 1 + dep_q, S'] here (.safetensors), or with --user Moshi's audio (.wav)");
  sub->add_option("--user", user_wav,
                  "full duplex: the user's audio (wav/flac/ogg), streamed 80 ms at a time through Mimi");
  sub->add_option("--text", text_out, "full duplex: write Moshi's text stream here");
  sub->add_option("--tokenizer", tokenizer, "SentencePiece model to turn --text ids into words");
  sub->add_option("--mimi", mimi, "full duplex: Mimi weights (.safetensors)");
  sub->add_option("--mimi-config", mimi_config, "full duplex: Mimi config JSON (default: the released model)");
  sub->add_option("--run-dir", run_dir, "write metrics.jsonl (per-step latency) and summary.json here");
  sub->add_flag("-q,--quiet", quiet, "no progress lines");
}

namespace {
lm::SamplingConfig sampling_config(const GenerateOpts& o) { return o.sampling.resolve(o.model); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

// What a run measured, for the printed lines and summary.json.
struct StreamStats {
  // Memory over a long stream: RSS after the warm-up steps and at the end (it must stay flat).
  int64_t warm = 0;
  double rss_start = 0, rss_end = NAN;
  std::vector<double> rss_x, rss_y;  // RSS every 500 steps and at the last one, for memory.png
  double p50 = 0, p90 = 0;           // ms per step
  int64_t non_pad = 0;               // text tokens that are not padding
};

// The codec options only mean something in full duplex: refuse them here rather than ignore them.
void check_generate_opts(const GenerateOpts& o) {
  MT_CHECK(o.text_out.empty() && o.mimi.empty(), "--text and --mimi need --user IN.wav (full-duplex mode)");
  MT_CHECK(o.steps > 0, "--steps must be > 0");
  MT_CHECK(o.batch > 0, "--batch must be > 0");
}

// The user streams of --user-codes (undefined without it: the LM then feeds zeros). A file fixes the
// batch to its own.
at::Tensor read_user_codes(const GenerateOpts& o, int64_t* batch) {
  at::Tensor user;
  if (o.user_codes.empty()) return user;
  io::SafeTensors f(o.user_codes);
  user = f.get("user_codes");
  MT_CHECK(user.dim() == 3, o.user_codes, ": user_codes must be [B, n_q - dep_q, S], got ",
           shape_str(user.sizes().vec()));
  *batch = user.size(0);
  MT_CHECK(user.size(2) >= o.steps, o.user_codes, ": holds ", user.size(2), " steps, --steps asks for ", o.steps);
  return user;
}

void print_start(const GenerateOpts& o, const std::string& origin, const lm::LMModelImpl& model, int64_t batch) {
  const auto& c = model.cfg;
  std::printf("model: %s (%.2f M parameters, dim %lld, %lld layers, %lld streams)\n", origin.c_str(),
              model.num_parameters() / 1e6, (long long)c.dim, (long long)c.num_layers, (long long)c.num_codebooks());
  std::printf("generating %lld steps (%.1f s of audio at 12.5 Hz), batch %lld, %s\n", (long long)o.steps,
              o.steps / 12.5, (long long)batch, o.sampling.greedy ? "greedy" : "sampling");
  std::fflush(stdout);
}

// metrics.jsonl in the run folder; not open without --run-dir.
std::ofstream open_metrics(const GenerateOpts& o) {
  std::ofstream metrics;
  if (o.run_dir.empty()) return metrics;
  fs::create_directories(o.run_dir);
  metrics.open((fs::path(o.run_dir) / "metrics.jsonl").string());
  MT_CHECK(metrics.good(), o.run_dir, ": cannot write metrics.jsonl");
  return metrics;
}

// The LMGen loop: one metrics line per step, RSS now and then, a progress line every tenth of the run.
lm::GenerationResult stream_steps(const lm::LMGen& gen, lm::LMGenState& st, const at::Tensor& user,
                                  const GenerateOpts& o, std::ofstream& metrics, StreamStats& s) {
  const int64_t every = std::max<int64_t>(1, o.steps / 10);
  double total = 0;
  s.warm = std::min<int64_t>(o.steps - 1, 100);
  s.rss_start = rss_mb();
  return lm::generate(gen, st, o.steps, user, [&](int64_t t, double ms) {
    total += ms;
    if (t == s.warm) s.rss_start = rss_mb();
    nlohmann::json m = {{"step", t}, {"ms", ms}};
    if (t % 500 == 0 || t + 1 == o.steps) {
      const double r = rss_mb();
      m["rss_mb"] = r;
      s.rss_x.push_back(static_cast<double>(t));
      s.rss_y.push_back(r);
      if (t + 1 == o.steps) s.rss_end = r;
    }
    if (metrics.is_open()) metrics << m.dump() << "\n";
    if (!o.quiet && ((t + 1) % every == 0 || t + 1 == o.steps)) {
      double per = total / static_cast<double>(t + 1);
      std::printf("  step %5lld/%lld  %7.2f ms/step  %6.1f steps/s  (real time needs <= 80 ms)  ETA %.1f s\n",
                  (long long)(t + 1), (long long)o.steps, per, 1000.0 / per,
                  per * static_cast<double>(o.steps - t - 1) / 1000.0);
      std::fflush(stdout);
    }
  });
}

// Latency percentiles and the count of text tokens that are not padding (did the model say anything?).
void summarize(const lm::GenerationResult& res, const lm::LMConfig& c, StreamStats& s) {
  // Skip the first steps (allocation, warm-up) in the latency summary when there are enough.
  std::vector<double> ms(res.step_ms.begin() + std::min<size_t>(res.step_ms.size() / 10, 5), res.step_ms.end());
  s.p50 = percentile(ms, 0.5);
  s.p90 = percentile(ms, 0.9);
  at::Tensor text = res.tokens.narrow(1, 0, 1);
  if (text.numel()) {
    at::Tensor pad = text.eq(c.existing_text_padding_id.value_or(-100)) | text.eq(c.existing_text_end_padding_id);
    s.non_pad = (~pad).sum().item<int64_t>();
  }
}

void print_results(const GenerateOpts& o, const lm::GenerationResult& res, const StreamStats& s) {
  std::printf(
      "done: %lld frames out, median %.2f ms/step, p90 %.2f ms/step, %.1fx real time; %lld text tokens that are not "
      "padding\n",
      (long long)res.tokens.size(2), s.p50, s.p90, 80.0 / std::max(s.p50, 1e-9), (long long)s.non_pad);
  std::printf(
      "memory: RSS %.1f MB after %lld steps, %.1f MB at the end (%+.1f MB over %.1f min of audio); peak RSS %.1f MB\n",
      s.rss_start, (long long)s.warm + 1, s.rss_end, s.rss_end - s.rss_start,
      static_cast<double>(o.steps) * 0.08 / 60.0, peak_rss_mb());
  if (res.tokens.size(2) == 0) return;
  // A glimpse of the tokens, so that a run that emits only padding or one code shows at once.
  int64_t show = std::min<int64_t>(16, res.tokens.size(2));
  std::printf("first frames of slot 0 (text | audio codebooks):\n");
  for (int64_t t = 0; t < show; ++t) {
    std::printf("  t=%-3lld %5lld |", (long long)t, (long long)res.tokens[0][0][t].item<int64_t>());
    for (int64_t k = 1; k < res.tokens.size(1); ++k)
      std::printf(" %4lld", (long long)res.tokens[0][k][t].item<int64_t>());
    std::printf("\n");
  }
}

// latency.png (every step against its median) and memory.png (RSS over the stream) in the run folder.
void plot_run(const std::string& run_dir, const lm::GenerationResult& res, const StreamStats& s) {
  plot::Chart ch;
  ch.title = "Streaming step latency";
  ch.xlabel = "step (80 ms of audio each)";
  ch.ylabel = "ms per step";
  ch.series.push_back({"step time", {}, res.step_ms});
  ch.hlines.push_back({s.p50, str("median ", std::round(s.p50 * 100) / 100, " ms")});
  ch.ymin = 0;
  plot::write_png(ch, (fs::path(run_dir) / "latency.png").string());
  plot::Chart mc;
  mc.title = "Resident memory over the stream";
  mc.xlabel = "step (80 ms of audio each)";
  mc.ylabel = "RSS (MB)";
  mc.series.push_back({"RSS", s.rss_x, s.rss_y, "points"});
  plot::write_png(mc, (fs::path(run_dir) / "memory.png").string());
}

// The run folder's summary.json and charts (metrics.jsonl was written while streaming).
void write_run_dir(const GenerateOpts& o, const std::string& origin, int64_t batch, const lm::GenerationResult& res,
                   const StreamStats& s) {
  nlohmann::json j = {{"model", origin},
                      {"steps", o.steps},
                      {"batch", batch},
                      {"greedy", o.sampling.greedy},
                      {"median_ms_per_step", s.p50},
                      {"p90_ms_per_step", s.p90},
                      {"frames_out", res.tokens.size(2)},
                      {"text_tokens_not_padding", s.non_pad},
                      {"rss_mb_after_warmup", s.rss_start},
                      {"rss_mb_end", s.rss_end},
                      {"peak_rss_mb", peak_rss_mb()},
                      {"rss_warmup_step", s.warm + 1}};
  io::atomic_write((fs::path(o.run_dir) / "summary.json").string(), j.dump(2) + "\n");
  plot_run(o.run_dir, res, s);
  std::printf("wrote %s/{metrics.jsonl,summary.json,latency.png,memory.png}\n", o.run_dir.c_str());
}
}  // namespace

int run_generate(const GenerateOpts& o) {
  if (!o.user_wav.empty()) return run_full_duplex(o);
  check_generate_opts(o);
  std::string origin;
  lm::LMModel model = o.model.build(&origin);
  lm::LMGen gen(model, sampling_config(o));
  int64_t batch = o.batch;
  const at::Tensor user = read_user_codes(o, &batch);
  lm::LMGenState st = gen.make_state(batch);
  print_start(o, origin, *model, batch);
  std::ofstream metrics = open_metrics(o);
  StreamStats stats;
  const lm::GenerationResult res = stream_steps(gen, st, user, o, metrics, stats);
  summarize(res, model->cfg, stats);
  print_results(o, res, stats);
  if (!o.out.empty()) {
    io::save(o.out, std::vector<std::pair<std::string, at::Tensor>>{{"tokens", res.tokens}});
    std::printf("wrote %s\n", o.out.c_str());
  }
  if (!o.run_dir.empty()) write_run_dir(o, origin, batch, res, stats);
  return 0;
}

int run_full_duplex(const GenerateOpts& opts) {
  GenerateOpts o = opts;
  o.model.repo_files(o.mimi, o.tokenizer);  // --hf-repo supplies the codec and tokenizer
  MT_CHECK(!o.mimi.empty(), "--user needs --mimi WEIGHTS.safetensors (the codec) or --hf-repo");
  MT_CHECK(o.batch == 1, "--user streams one conversation: --batch must be 1");
  std::string origin;
  lm::LMModel model = o.model.build(&origin);
  app::Duplex duplex(model, mimi::load_mimi(o.mimi, o.mimi_config), sampling_config(o), 1, o.mimi);
  std::unique_ptr<text::Tokenizer> tok;
  if (!o.tokenizer.empty()) tok = std::make_unique<text::Tokenizer>(o.tokenizer);
  audio::Audio in = audio::read_audio_24k(o.user_wav);
  // The user is one speaker: a stereo file is mixed down.
  at::Tensor user = in.samples.mean(0, true).unsqueeze(0);  // [1, 1, N]
  const int64_t fs = duplex.frame_size();
  const int64_t frames = (user.size(2) + fs - 1) / fs;
  user = at::constant_pad_nd(user, {0, frames * fs - user.size(2)}).to(duplex.device());
  std::printf("full duplex: %s (%.2f s, %lld frames of 80 ms) -> %s; model %s\n", o.user_wav.c_str(), in.duration_sec(),
              (long long)frames, o.out.empty() ? "(no audio out)" : o.out.c_str(), origin.c_str());
  std::fflush(stdout);
  at::InferenceMode im;
  std::vector<at::Tensor> audio_out, text_out;  // text tokens stay on the device until the end (no per-frame sync)
  std::vector<double> step_ms;
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t every = std::max<int64_t>(1, frames / 10);
  for (int64_t f = 0; f < frames; ++f) {
    const auto t0 = std::chrono::steady_clock::now();
    if (auto out = duplex.step(user.narrow(2, f * fs, fs))) {
      audio_out.push_back(out->audio);
      text_out.push_back(out->text);
    }
    step_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    if (!o.quiet && ((f + 1) % every == 0 || f + 1 == frames)) {
      const double per = std::accumulate(step_ms.begin(), step_ms.end(), 0.0) / static_cast<double>(step_ms.size());
      std::printf("  frame %5lld/%lld  %7.2f ms/frame (real time needs <= 80)\n", (long long)(f + 1), (long long)frames,
                  per);
      std::fflush(stdout);
    }
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  const double audio_s = static_cast<double>(frames) * 0.08;
  at::Tensor wav = audio_out.empty() ? at::zeros({1, 0}) : at::cat(audio_out, 2).squeeze(1).cpu();
  if (!o.out.empty()) audio::write_wav(o.out, wav, duplex.sample_rate());
  if (!o.text_out.empty()) {
    std::vector<int64_t> ids;
    if (!text_out.empty()) {
      at::Tensor t = at::cat(text_out).cpu();
      ids.assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
    }
    io::atomic_write(o.text_out, app::text_of(ids, model->cfg, tok.get()) + "\n");
  }
  std::printf(
      "done: %.2f s of audio in %.2f s: real-time factor %.2f (%.1f ms per 80 ms frame); %zu frames out (the LM's "
      "delay holds back the first ones)%s%s\n",
      audio_s, wall, audio_s / std::max(wall, 1e-9), 1000.0 * wall / static_cast<double>(frames), audio_out.size(),
      o.out.empty() ? "" : ", wrote ", o.out.c_str());
  return 0;
}

}  // namespace mt::cli
