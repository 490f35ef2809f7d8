#include "eval/long_context.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>

#include "audio/audio_io.h"
#include "eval/position_loss.h"
#include "eval/zr_score.h"
#include "io/codes_file.h"
#include "io/safetensors.h"
#include "report/plot.h"
#include "util/error.h"
#include "util/prng.h"
#include "util/runtime.h"

namespace fs = std::filesystem;

namespace mt::eval {

namespace {

using audio::is_audio_file;

// Percentile of the finite values (bootstrap replicates of a bin with no data are NaN).
double percentile(std::vector<double> v, double q) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  std::sort(v.begin(), v.end());
  return sorted_percentile(v, q);
}

struct Variant {
  std::string name, kind;  // kind: persist | ttt-reset | reset | no-ttt
  int64_t every = 0;
};

Variant parse_variant(const std::string& v, int64_t chunk) {
  Variant r{v, v, 0};
  const auto colon = v.find(':');
  if (colon != std::string::npos) {
    r.kind = v.substr(0, colon);
    try {
      size_t used = 0;
      r.every = std::stoll(v.substr(colon + 1), &used);
      MT_CHECK(used == v.size() - colon - 1, "");
    } catch (const std::exception&) {
      fail("--control ", v, ": expected a frame count after ':'");
    }
  }
  if (r.kind == "persist" || r.kind == "no-ttt") {
    MT_CHECK(colon == std::string::npos, "--control ", v, ": ", r.kind, " takes no frame count");
  } else if (r.kind == "ttt-reset" || r.kind == "reset") {
    MT_CHECK(r.every >= 1, "--control ", v, ": expected ", r.kind, ":N with N >= 1 frames");
    MT_CHECK(r.every % chunk == 0, "--control ", v, ": N must be a multiple of --chunk (", chunk, ")");
  } else {
    fail("unknown control '", v, "': use persist, ttt-reset:N, reset:N or no-ttt");
  }
  return r;
}

// Per-file, per-position losses of one variant.
struct FileCurves {
  std::vector<double> audio, semantic, weighted, text;  // [T], NaN where not scored
};

// One TTT unit's probes accumulated per bin.
struct UnitProbes {
  std::string name;
  std::vector<double> l0, lprev, lafter, n;  // per bin sums and counts (tokens x files)
  std::vector<double> change, change_n;      // ‖W_t − W_0‖ at chunk ends, per bin
};

void grow(std::vector<double>& v, size_t n) {
  if (v.size() < n) v.resize(n, 0.0);
}

// Adds per-token probes [1, nh, c] of positions [start, start + c) to the unit's bins.
void add_tokens(UnitProbes& u, const ttt::TTTProbes& p, int64_t start, int64_t w) {
  if (!p.l0.defined() || p.l0.numel() == 0) return;
  auto mean_heads = [](const at::Tensor& t) { return t.to(at::kDouble).mean(1)[0].cpu().contiguous(); };
  const at::Tensor a = mean_heads(p.l0), b = mean_heads(p.lprev), c = mean_heads(p.lafter);
  const int64_t L = a.size(0);
  const double *pa = a.data_ptr<double>(), *pb = b.data_ptr<double>(), *pc = c.data_ptr<double>();
  for (int64_t i = 0; i < L; ++i) {
    const size_t bin = static_cast<size_t>((start + i) / w);
    grow(u.l0, bin + 1), grow(u.lprev, bin + 1), grow(u.lafter, bin + 1), grow(u.n, bin + 1);
    if (!std::isfinite(pa[i]) || !std::isfinite(pb[i]) || !std::isfinite(pc[i])) continue;
    u.l0[bin] += pa[i], u.lprev[bin] += pb[i], u.lafter[bin] += pc[i], u.n[bin] += 1;
  }
}

void add_change(UnitProbes& u, const at::Tensor& norm, int64_t end, int64_t w) {
  if (!norm.defined() || norm.numel() == 0) return;
  const size_t bin = static_cast<size_t>((end - 1) / w);
  grow(u.change, bin + 1), grow(u.change_n, bin + 1);
  u.change[bin] += norm.to(at::kDouble).mean().item<double>();
  u.change_n[bin] += 1;
}

std::vector<double> ratio(const std::vector<double>& s, const std::vector<double>& n) {
  std::vector<double> r(s.size(), NAN);
  for (size_t i = 0; i < s.size() && i < n.size(); ++i)
    if (n[i] > 0) r[i] = s[i] / n[i];
  return r;
}

// Mean over files and positions in [lo, hi) of one curve kind, for the files in `pick` (with repeats).
double window_mean(const std::vector<FileCurves>& files, const std::vector<size_t>& pick, int64_t lo, int64_t hi,
                   std::vector<double> FileCurves::*kind) {
  double s = 0, n = 0;
  for (size_t i : pick) {
    const auto& v = files[i].*kind;
    for (int64_t t = std::max<int64_t>(0, lo); t < std::min<int64_t>(hi, static_cast<int64_t>(v.size())); ++t)
      if (std::isfinite(v[static_cast<size_t>(t)])) s += v[static_cast<size_t>(t)], n += 1;
  }
  return n > 0 ? s / n : NAN;
}

std::vector<double> bin_curve(const std::vector<FileCurves>& files, const std::vector<size_t>& pick, int64_t w,
                              int64_t bins, std::vector<double> FileCurves::*kind) {
  std::vector<double> s(static_cast<size_t>(bins), 0.0), n(static_cast<size_t>(bins), 0.0);
  for (size_t i : pick) {
    const auto& v = files[i].*kind;
    for (size_t t = 0; t < v.size(); ++t)
      if (std::isfinite(v[t])) s[t / static_cast<size_t>(w)] += v[t], n[t / static_cast<size_t>(w)] += 1;
  }
  return ratio(s, n);
}

double fit_slope(const std::vector<double>& curve, int64_t w, int64_t fit_from) {
  std::vector<double> x, y;
  for (size_t b = 0; b < curve.size(); ++b) {
    if (static_cast<int64_t>(b) * w < fit_from) continue;
    x.push_back((static_cast<double>(b) + 0.5) * static_cast<double>(w));
    y.push_back(curve[b]);
  }
  return log2_slope(x, y);
}

std::string frames_key(int64_t p) { return p % 1000 == 0 ? str(p / 1000, "k") : str(p); }

nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

}  // namespace

double log2_slope(const std::vector<double>& x, const std::vector<double>& y) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0, n = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    if (!std::isfinite(y[i]) || !(x[i] > 0)) continue;
    const double lx = std::log2(x[i]);
    sx += lx, sy += y[i], sxx += lx * lx, sxy += lx * y[i], n += 1;
  }
  const double den = n * sxx - sx * sx;
  if (n < 2 || std::abs(den) < 1e-12) return NAN;
  return (n * sxy - sx * sy) / den;
}

std::vector<std::string> read_file_list(const std::string& p) {
  std::vector<std::string> out;
  if (fs::is_directory(p)) {
    for (const auto& e : fs::directory_iterator(p))
      if (e.is_regular_file() && (is_audio_file(e.path().string()) || e.path().extension() == ".safetensors"))
        out.push_back(e.path().string());
    std::sort(out.begin(), out.end());
    MT_CHECK(!out.empty(), p, ": no audio or .safetensors files in this folder");
    return out;
  }
  if (is_audio_file(p) || fs::path(p).extension() == ".safetensors") {  // one file
    MT_CHECK(fs::exists(p), p, ": not found");
    return {p};
  }
  std::ifstream in(p);
  MT_CHECK(in, p, ": cannot open the file list");
  const fs::path base = fs::path(p).parent_path();
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    const auto a = line.find_first_not_of(" \t\r");
    if (a == std::string::npos || line[a] == '#') continue;
    const auto b = line.find_last_not_of(" \t\r");
    fs::path f(line.substr(a, b - a + 1));
    if (!f.is_absolute()) f = base / f;
    MT_CHECK(fs::exists(f), p, ":", n, ": ", f.string(), " not found");
    out.push_back(f.lexically_normal().string());
  }
  MT_CHECK(!out.empty(), p, ": the file list is empty");
  return out;
}

at::Tensor long_context_input(const lm::LMModelImpl& m, const std::string& path, CodesCache* cache,
                              const ScoringOptions& o) {
  const auto& cfg = m.cfg;
  if (is_audio_file(path)) {
    MT_CHECK(cache, path, ": an audio file needs the codec (--mimi)");
    return place_clip(cfg, cache->codes(path), o);
  }
  at::Tensor c = io::read_codes(path)[0];          // [K, T]; Mimi codes of `encode` are [C, K, T]: channel 0
  if (c.size(0) == cfg.num_codebooks()) return c;  // an LM token shard
  const int64_t A = clip_codebooks(cfg, o.placement);
  MT_CHECK(c.size(0) >= A, path, ": ", c.size(0), " codebooks; the LM needs ", A, " (Mimi codes) or ",
           cfg.num_codebooks(), " (a token shard)");
  return place_clip(cfg, c.narrow(0, 0, A).contiguous(), o);
}

nlohmann::json run_long_context(lm::LMModelImpl& m, const std::vector<std::string>& files, CodesCache* cache,
                                const LongContextOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  MT_CHECK(!files.empty(), "eval long-context: no files");
  MT_CHECK(!o.out_dir.empty(), "eval long-context: --out RUN_DIR is required");
  MT_CHECK(o.chunk >= 1, "--chunk must be >= 1");
  const auto& cfg = m.cfg;
  std::vector<Variant> variants;
  for (const auto& v : o.variants) variants.push_back(parse_variant(v, o.chunk));
  MT_CHECK(!variants.empty(), "eval long-context: no variant to run");
  const bool has_ttt = m.transformer->has_addons();
  for (const auto& v : variants)
    MT_CHECK(has_ttt || (v.kind != "ttt-reset" && v.kind != "no-ttt"), "--control ", v.name,
             ": this model has no TTT layer");
  MT_CHECK(!o.probes || has_ttt, "TTT probes: this model has no TTT layer");

  // Inputs.
  std::vector<at::Tensor> inputs;
  int64_t T_max = 0;
  for (const auto& f : files) {
    at::Tensor c = long_context_input(m, f, cache, o.scoring);
    if (o.max_frames > 0 && c.size(1) > o.max_frames) c = c.narrow(1, 0, o.max_frames);
    MT_CHECK(c.size(1) >= 2, f, ": only ", c.size(1), " frames");
    T_max = std::max(T_max, c.size(1));
    inputs.push_back(c.contiguous());
  }
  const double rss_loaded = rss_mb();
  double rss_warm = NAN;      // after the first tenth of the first file (allocations of the first chunks done)
  double rss_streamed = NAN;  // after the last chunk of the first file, before its losses are aggregated
  const int64_t w = o.window > 0 ? o.window : (T_max >= 16000 ? 1000 : std::max<int64_t>(1, T_max / 32));
  const int64_t bins = (T_max + w - 1) / w;
  std::vector<int64_t> positions = o.positions;
  bool auto_positions = false;
  if (positions.empty()) {
    for (int64_t p : {1000, 2000, 4000, 8000, 16000, 24000})
      if (p + w / 2 <= T_max) positions.push_back(p);
    if (positions.size() < 3) {
      positions.clear();
      for (int64_t d : {16, 8, 4, 2}) positions.push_back(std::max<int64_t>(w / 2 + 1, T_max / d));
      positions.push_back(T_max - w / 2);
      std::sort(positions.begin(), positions.end());
      positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
      auto_positions = true;
    }
  }
  const int64_t context = cfg.context.value_or(0);
  const int64_t fit_from = o.fit_from > 0 ? o.fit_from : (context > 0 && context < T_max / 2 ? context : w);

  std::vector<double> FileCurves::*headline = nullptr;
  if (o.loss == "audio")
    headline = &FileCurves::audio;
  else if (o.loss == "semantic")
    headline = &FileCurves::semantic;
  else if (o.loss == "weighted")
    headline = &FileCurves::weighted;
  else if (o.loss == "text")
    headline = &FileCurves::text;
  else
    fail("--loss must be audio, semantic, weighted or text, got '", o.loss, "'");
  const int64_t A = clip_codebooks(cfg, o.scoring.placement);
  const int64_t cb0 = o.scoring.placement == "user" ? cfg.n_q / 2 : 0;
  const at::Device dev = m.text_linear->weight.device();

  nlohmann::json summary;
  summary["files"] = files;
  summary["frames"] = {{"max", T_max}, {"window", w}, {"bins", bins}};
  summary["attention_window"] = context > 0 ? nlohmann::json(context) : nlohmann::json(nullptr);
  summary["model"] = o.model_origin;
  summary["settings"] = {{"placement", o.scoring.placement},
                         {"text", o.scoring.text},
                         {"chunk", o.chunk},
                         {"scored_codebooks", A},
                         {"fit_from", fit_from},
                         {"bootstrap", o.bootstrap},
                         {"seed", o.seed},
                         {"positions_auto", auto_positions},
                         {"headline", o.loss},
                         {"loss",
                          "nats per token: mean CE over the scored audio codebooks (semantic: codebook 0; "
                          "weighted: semantic x100 : acoustic x1)"}};
  const fs::path out = fs::path(o.out_dir) / "eval" / "long_context";
  fs::create_directories(out);

  std::map<std::string, std::vector<double>> curves;  // "<variant>/<kind>" -> per-bin mean
  std::vector<UnitProbes> units;
  nlohmann::json vj = nlohmann::json::array();
  const int64_t total_frames = std::accumulate(inputs.begin(), inputs.end(), int64_t{0},
                                               [](int64_t a, const at::Tensor& c) { return a + c.size(1); });
  for (const auto& v : variants) {
    std::unique_ptr<lm::ScopedTTTOff> off;
    if (v.kind == "no-ttt") off = std::make_unique<lm::ScopedTTTOff>(*m.transformer);
    const bool probe_this = o.probes && &v == &variants.front();
    std::vector<FileCurves> fc;
    const auto t0 = std::chrono::steady_clock::now();
    int64_t frames_done = 0;
    auto last_print = t0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      at::Tensor codes = inputs[i].unsqueeze(0).to(dev);
      lm::TransformerState st = m.make_state(1, o.chunk);
      const int64_t warm_at = std::max<int64_t>(o.chunk, codes.size(2) / 10);
      auto after = [&](int64_t end, const std::vector<lm::LayerProbes>& probes) {
        if (i == 0 && &v == &variants.front() && end >= warm_at && end - o.chunk < warm_at) rss_warm = rss_mb();
        if (i == 0 && &v == &variants.front() && end == codes.size(2)) rss_streamed = rss_mb();
        if (probe_this) {
          const int64_t start = (end - 1) / o.chunk * o.chunk;  // chunks start at multiples of --chunk
          for (size_t l = 0; l < probes.size(); ++l) {
            const auto& p = probes[l];
            auto unit = [&](const std::string& name) -> UnitProbes& {
              auto it = std::find_if(units.begin(), units.end(), [&](const UnitProbes& u) { return u.name == name; });
              if (it != units.end()) return *it;
              units.push_back(UnitProbes{name, {}, {}, {}, {}, {}, {}});
              return units.back();
            };
            if (p.hybrid.l0.defined()) {
              UnitProbes& u = unit(str("layer ", l, " hybrid"));
              add_tokens(u, p.hybrid, start, w);
              add_change(u, p.hybrid.w_delta_norm, end, w);
            }
            for (size_t j = 0; j < p.adapters.size(); ++j) {
              if (!p.adapters[j].l0.defined()) continue;
              UnitProbes& u =
                  unit(str("layer ", l, " adapter ", lm::adapters_of(*m.transformer->layer_ptrs[l]).at(j)->target));
              add_tokens(u, p.adapters[j], start, w);
              add_change(u, p.adapters[j].w_delta_norm, end, w);
            }
            if (p.inplace_dw_norm.defined()) add_change(unit(str("layer ", l, " inplace")), p.inplace_dw_norm, end, w);
          }
        }
        if (v.kind == "ttt-reset" && end % v.every == 0)
          for (auto& t : st.addons) t.reset();
        if (v.kind == "reset" && end % v.every == 0) st.reset();
      };
      at::Tensor ce;
      {
        at::InferenceMode im;
        ce = streaming_cross_entropy(m, codes, st, probe_this, after)[0].to(at::kDouble).contiguous();  // [S, T]
      }
      const int64_t T = ce.size(1);
      FileCurves f;
      f.audio.assign(static_cast<size_t>(T), NAN);
      f.semantic = f.weighted = f.text = f.audio;
      const at::Tensor audio = ce.narrow(0, 1 + cb0, A);
      const at::Tensor valid = audio.isfinite();
      const at::Tensor z = at::where(valid, audio, at::zeros({}, audio.options()));
      const at::Tensor n = valid.to(at::kDouble).sum(0), s = z.sum(0);
      const at::Tensor wts = at::ones({A, 1}, audio.options());
      wts[0].fill_(100.0);
      const at::Tensor wn = (valid.to(at::kDouble) * wts).sum(0), ws = (z * wts).sum(0);
      const at::Tensor mean = at::where(n.gt(0), s / n.clamp_min(1), at::full({}, NAN, s.options())).contiguous();
      const at::Tensor wmean = at::where(wn.gt(0), ws / wn.clamp_min(1), at::full({}, NAN, s.options())).contiguous();
      const at::Tensor sem = audio[0].contiguous(), txt = ce[0].contiguous();
      for (int64_t t = 0; t < T; ++t) {
        f.audio[static_cast<size_t>(t)] = mean.data_ptr<double>()[t];
        f.weighted[static_cast<size_t>(t)] = wmean.data_ptr<double>()[t];
        f.semantic[static_cast<size_t>(t)] = sem.data_ptr<double>()[t];
        f.text[static_cast<size_t>(t)] = txt.data_ptr<double>()[t];
      }
      fc.push_back(std::move(f));
      frames_done += T;
      const auto now = std::chrono::steady_clock::now();
      if (!o.quiet && (std::chrono::duration<double>(now - last_print).count() >= 5.0 || i + 1 == inputs.size())) {
        last_print = now;
        const double secs = std::chrono::duration<double>(now - t0).count();
        const double rate = static_cast<double>(frames_done) / std::max(secs, 1e-9);
        std::fprintf(stderr, "[long-context %s] file %zu/%zu, %.0f frames/s, ETA %.0f s\n", v.name.c_str(), i + 1,
                     inputs.size(), rate, static_cast<double>(total_frames - frames_done) / std::max(rate, 1e-9));
      }
    }
    // Aggregates.
    std::vector<size_t> all(fc.size());
    std::iota(all.begin(), all.end(), size_t{0});
    nlohmann::json j;
    for (auto [kname, kind] : {std::pair{"audio", &FileCurves::audio}, std::pair{"semantic", &FileCurves::semantic},
                               std::pair{"weighted", &FileCurves::weighted}, std::pair{"text", &FileCurves::text}})
      curves[v.name + "/" + kname] = bin_curve(fc, all, w, bins, kind);
    const std::vector<double>& curve = curves[v.name + "/" + o.loss];
    const double slope = fit_slope(curve, w, fit_from);
    // Bootstrap over files.
    std::vector<double> slopes, boot_means_per_pos;
    std::vector<std::vector<double>> pos_boot(positions.size());
    util::SplitMix64 rng(o.seed ^ 0x5EEDull);
    for (int b = 0; b < o.bootstrap && fc.size() > 1; ++b) {
      std::vector<size_t> pick(fc.size());
      for (auto& p : pick) p = static_cast<size_t>(rng.next() % fc.size());
      slopes.push_back(fit_slope(bin_curve(fc, pick, w, bins, headline), w, fit_from));
      for (size_t k = 0; k < positions.size(); ++k)
        pos_boot[k].push_back(window_mean(fc, pick, positions[k] - w / 2, positions[k] - w / 2 + w, headline));
    }
    nlohmann::json at_pos = nlohmann::json::array();
    for (size_t k = 0; k < positions.size(); ++k) {
      const int64_t lo = positions[k] - w / 2;
      nlohmann::json e = {{"frames", positions[k]},
                          {"window", {lo, lo + w}},
                          {"loss", num(window_mean(fc, all, lo, lo + w, headline))},
                          {"audio", num(window_mean(fc, all, lo, lo + w, &FileCurves::audio))},
                          {"semantic", num(window_mean(fc, all, lo, lo + w, &FileCurves::semantic))},
                          {"weighted", num(window_mean(fc, all, lo, lo + w, &FileCurves::weighted))},
                          {"text", num(window_mean(fc, all, lo, lo + w, &FileCurves::text))}};
      if (!pos_boot[k].empty()) e["ci"] = {num(percentile(pos_boot[k], 0.025)), num(percentile(pos_boot[k], 0.975))};
      e["key"] = frames_key(positions[k]);
      at_pos.push_back(e);
      if (positions[k] % 1000 == 0)
        j["librilight_loss_" + frames_key(positions[k])] = num(e["loss"].is_null() ? NAN : e["loss"].get<double>());
    }
    j["at"] = at_pos;
    j["slope_per_doubling"] = num(slope);
    j["librilight_slope"] = num(slope);
    if (!slopes.empty())
      j["slope_ci"] = {num(percentile(slopes, 0.025)), num(percentile(slopes, 0.975))};
    else
      j["slope_ci"] = "needs at least 2 files";
    j["mean_loss"] = num(window_mean(fc, all, 0, T_max, headline));
    j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    j["name"] = v.name;
    vj.push_back(j);
  }
  summary["variants"] = vj;
  summary["rss_mb"] = {{"after_loading", num(rss_loaded)},
                       {"after_warmup", num(rss_warm)},
                       {"after_streaming", num(rss_streamed)},
                       {"end", num(rss_mb())}};

  // curve.csv: one row per bin, columns per variant and loss kind.
  {
    std::ostringstream s;
    s << "bin_start,bin_end";
    for (const auto& [k, c] : curves) s << "," << k;
    s << "\n";
    for (int64_t b = 0; b < bins; ++b) {
      s << b * w << "," << std::min(T_max, (b + 1) * w);
      for (const auto& [k, c] : curves) {
        const double v = c[static_cast<size_t>(b)];
        char buf[32];
        std::snprintf(buf, sizeof buf, std::isfinite(v) ? ",%.6f" : ",", v);
        s << buf;
      }
      s << "\n";
    }
    io::atomic_write((out / "curve.csv").string(), s.str());
  }
  // Plots: loss by position per variant, the attention window marked.
  auto centers = [&](size_t n) {
    std::vector<double> x(n);
    for (size_t b = 0; b < n; ++b) x[b] = (static_cast<double>(b) + 0.5) * static_cast<double>(w);
    return x;
  };
  {
    plot::Chart c;
    c.title = "loss by position (mean over files, bins of " + std::to_string(w) + " frames)";
    c.xlabel = "position (frames, 12.5 per second)";
    c.ylabel = o.loss + " CE (nats per token)";
    for (const auto& v : variants) {
      const auto& y = curves[v.name + "/" + o.loss];
      c.series.push_back({v.name, centers(y.size()), y});
    }
    if (context > 0 && context < T_max) c.vlines.push_back({static_cast<double>(context), "attention window"});
    plot::write_png(c, (out / "loss_by_position.png").string());
    summary["plots"] = {"loss_by_position.png"};
  }
  if (o.probes) {
    nlohmann::json pj = nlohmann::json::array();
    std::ostringstream csv;
    csv << "unit,bin_start,bin_end,l0,lprev,lafter,tokens,state_change\n";
    for (const auto& u : units) {
      const auto l0 = ratio(u.l0, u.n), lp = ratio(u.lprev, u.n), la = ratio(u.lafter, u.n),
                 ch = ratio(u.change, u.change_n);
      const size_t nb = std::max({l0.size(), ch.size()});
      for (size_t b = 0; b < nb; ++b) {
        auto at = [&](const std::vector<double>& v) {
          return b < v.size() && std::isfinite(v[b]) ? str(v[b]) : std::string();
        };
        csv << '"' << u.name << "\"," << b * static_cast<size_t>(w) << "," << std::min<int64_t>(T_max, (b + 1) * w)
            << "," << at(l0) << "," << at(lp) << "," << at(la) << "," << (b < u.n.size() ? u.n[b] : 0) << "," << at(ch)
            << "\n";
      }
      auto tot = [](const std::vector<double>& s, const std::vector<double>& n) {
        const double a = std::accumulate(s.begin(), s.end(), 0.0), b = std::accumulate(n.begin(), n.end(), 0.0);
        return b > 0 ? a / b : NAN;
      };
      nlohmann::json e = {{"unit", u.name},
                          {"l0", num(tot(u.l0, u.n))},
                          {"lprev", num(tot(u.lprev, u.n))},
                          {"lafter", num(tot(u.lafter, u.n))},
                          {"state_change_end", num(ch.empty() ? NAN : ch.back())}};
      if (!l0.empty()) {
        // Does the state carry what was learned? lprev < l0: the state before a token's update already
        // predicts it better than W_0; lafter < lprev: the update itself fits it.
        e["lprev_below_l0"] = std::isfinite(tot(u.lprev, u.n)) && tot(u.lprev, u.n) < tot(u.l0, u.n);
        e["lafter_below_lprev"] = std::isfinite(tot(u.lafter, u.n)) && tot(u.lafter, u.n) < tot(u.lprev, u.n);
      }
      pj.push_back(e);
      const std::string safe = [&] {
        std::string s = u.name;
        for (auto& ch2 : s)
          if (!std::isalnum(static_cast<unsigned char>(ch2))) ch2 = '_';
        return s;
      }();
      if (!l0.empty()) {
        plot::Chart c;
        c.title = "TTT inner loss, " + u.name + " (" + variants.front().name + ")";
        c.xlabel = "position (frames)";
        c.ylabel = "inner loss (mean over heads)";
        c.series.push_back({"l0: with W_0", centers(l0.size()), l0});
        c.series.push_back({"lprev: state before the update", centers(lp.size()), lp});
        c.series.push_back({"lafter: state after the update", centers(la.size()), la});
        plot::write_png(c, (out / ("ttt_probe_" + safe + ".png")).string());
        summary["plots"].push_back("ttt_probe_" + safe + ".png");
      }
      if (!ch.empty()) {
        plot::Chart c;
        c.title = "TTT state change |W_t - W_0|, " + u.name;
        c.xlabel = "position (frames)";
        c.ylabel = "Frobenius norm";
        c.series.push_back({"", centers(ch.size()), ch, "points"});
        for (const auto& v : variants)
          if (v.kind == "ttt-reset" || v.kind == "reset") c.vlines.push_back({static_cast<double>(v.every), v.name});
        plot::write_png(c, (out / ("ttt_state_" + safe + ".png")).string());
        summary["plots"].push_back("ttt_state_" + safe + ".png");
      }
    }
    io::atomic_write((out / "probes.csv").string(), csv.str());
    summary["probes"] = {{"variant", variants.front().name}, {"units", pj}};
  }
  summary["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  io::atomic_write((out / "summary.json").string(), summary.dump(2) + "\n");
  {
    std::ofstream rl(fs::path(o.out_dir) / "eval" / "results.jsonl", std::ios::app);
    MT_CHECK(rl, (fs::path(o.out_dir) / "eval" / "results.jsonl").string(), ": cannot append");
    rl << nlohmann::json{{"kind", "long_context"}, {"summary", (out / "summary.json").string()}}.dump() << "\n";
  }
  return summary;
}

std::string format_long_context_summary(const nlohmann::json& j) {
  std::ostringstream os;
  os << "long-context loss over " << j["files"].size() << " file(s), up to " << j["frames"]["max"].get<int64_t>()
     << " frames; windows of " << j["frames"]["window"].get<int64_t>() << " frames; "
     << j["settings"].value("headline", std::string("audio")) << " CE";
  if (j["attention_window"].is_number())
    os << "; attention window " << j["attention_window"].get<int64_t>() << " frames";
  os << "\n";
  auto f = [](const nlohmann::json& v, const char* fmt = "%.4f") {
    if (!v.is_number()) return std::string("n/a");
    char b[32];
    std::snprintf(b, sizeof b, fmt, v.get<double>());
    return std::string(b);
  };
  for (const auto& v : j["variants"]) {
    os << "  " << v["name"].get<std::string>() << ":";
    for (const auto& p : v["at"]) os << "  @" << p["key"].get<std::string>() << " " << f(p["loss"]);
    os << "\n    slope " << f(v["slope_per_doubling"], "%+.4f") << " nats per doubling";
    if (v["slope_ci"].is_array())
      os << " [95% CI " << f(v["slope_ci"][0], "%+.4f") << ", " << f(v["slope_ci"][1], "%+.4f") << "]";
    os << ", mean " << f(v["mean_loss"]) << "\n";
  }
  if (j.contains("probes")) {
    os << "  TTT probes (" << j["probes"]["variant"].get<std::string>()
       << "): unit, l0 / lprev / lafter, |W_t - W_0| at the end\n";
    for (const auto& u : j["probes"]["units"])
      os << "    " << u["unit"].get<std::string>() << ": " << f(u["l0"]) << " / " << f(u["lprev"]) << " / "
         << f(u["lafter"]) << ", " << f(u["state_change_end"]) << "\n";
  }
  return os.str();
}

}  // namespace mt::eval
