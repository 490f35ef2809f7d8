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

namespace {

using CurveKind = std::vector<double> FileCurves::*;

// Everything the variants share: the encoded inputs and the binning and scoring settings derived from them.
struct Plan {
  std::vector<Variant> variants;
  std::vector<at::Tensor> inputs;  // [1 + n_q, T] per file
  int64_t T_max = 0;               // the longest file
  int64_t w = 0, bins = 0;         // bin / window width and bin count
  std::vector<int64_t> positions;  // window centres
  bool auto_positions = false;
  int64_t context = 0, fit_from = 0;  // attention window (0: none) and first frame of the slope fit
  CurveKind headline = nullptr;       // the --loss curve
  int64_t A = 0, cb0 = 0;             // scored audio codebooks and the first of them
};

// Resident memory at three points of the first variant's first file: loading, warm-up and the streaming
// itself are reported apart so that a leak in the streaming cannot hide behind the inputs.
struct Rss {
  double loaded = NAN;
  double warm = NAN;      // after the first tenth of the first file (allocations of the first chunks done)
  double streamed = NAN;  // after the last chunk of the first file, before its losses are aggregated
};

// Parses --control and refuses, before any file is read, controls the model cannot run.
std::vector<Variant> checked_variants(const lm::LMModelImpl& m, const LongContextOptions& o) {
  std::vector<Variant> variants;
  for (const auto& v : o.variants) variants.push_back(parse_variant(v, o.chunk));
  MT_CHECK(!variants.empty(), "eval long-context: no variant to run");
  const bool has_ttt = m.transformer->has_addons();
  for (const auto& v : variants)
    MT_CHECK(has_ttt || (v.kind != "ttt-reset" && v.kind != "no-ttt"), "--control ", v.name,
             ": this model has no TTT layer");
  MT_CHECK(!o.probes || has_ttt, "TTT probes: this model has no TTT layer");
  return variants;
}

// Reads (and encodes) every file once for all variants, truncated to --max-frames.
void read_inputs(Plan& p, const lm::LMModelImpl& m, const std::vector<std::string>& files, CodesCache* cache,
                 const LongContextOptions& o) {
  for (const auto& f : files) {
    at::Tensor c = long_context_input(m, f, cache, o.scoring);
    if (o.max_frames > 0 && c.size(1) > o.max_frames) c = c.narrow(1, 0, o.max_frames);
    MT_CHECK(c.size(1) >= 2, f, ": only ", c.size(1), " frames");
    p.T_max = std::max(p.T_max, c.size(1));
    p.inputs.push_back(c.contiguous());
  }
}

// Window centres: the usual 1k..24k frames when at least three fit the longest file; shorter files get
// five centres spread over their length instead, so that a small run still shows a curve.
std::vector<int64_t> window_positions(const LongContextOptions& o, int64_t T_max, int64_t w, bool& automatic) {
  automatic = false;
  std::vector<int64_t> positions = o.positions;
  if (!positions.empty()) return positions;
  for (int64_t p : {1000, 2000, 4000, 8000, 16000, 24000})
    if (p + w / 2 <= T_max) positions.push_back(p);
  if (positions.size() >= 3) return positions;
  positions.clear();
  for (int64_t d : {16, 8, 4, 2}) positions.push_back(std::max<int64_t>(w / 2 + 1, T_max / d));
  positions.push_back(T_max - w / 2);
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  automatic = true;
  return positions;
}

CurveKind headline_of(const std::string& loss) {
  if (loss == "audio") return &FileCurves::audio;
  if (loss == "semantic") return &FileCurves::semantic;
  if (loss == "weighted") return &FileCurves::weighted;
  if (loss == "text") return &FileCurves::text;
  fail("--loss must be audio, semantic, weighted or text, got '", loss, "'");
}

// Binning and scoring settings. Bins of 1000 frames (80 s) on long files, about 32 bins on short ones; the
// slope is fitted from the attention window on, where only a memory beyond attention can still help.
void derive_settings(Plan& p, const lm::LMConfig& cfg, const LongContextOptions& o) {
  p.w = o.window > 0 ? o.window : (p.T_max >= 16000 ? 1000 : std::max<int64_t>(1, p.T_max / 32));
  p.bins = (p.T_max + p.w - 1) / p.w;
  p.positions = window_positions(o, p.T_max, p.w, p.auto_positions);
  p.context = cfg.context.value_or(0);
  p.fit_from = o.fit_from > 0 ? o.fit_from : (p.context > 0 && p.context < p.T_max / 2 ? p.context : p.w);
  p.headline = headline_of(o.loss);
  p.A = clip_codebooks(cfg, o.scoring.placement);
  p.cb0 = o.scoring.placement == "user" ? cfg.n_q / 2 : 0;
}

// The part of summary.json known before any streaming (what was run, and how).
nlohmann::json summary_header(const std::vector<std::string>& files, const Plan& p, const LongContextOptions& o) {
  nlohmann::json summary;
  summary["files"] = files;
  summary["frames"] = {{"max", p.T_max}, {"window", p.w}, {"bins", p.bins}};
  summary["attention_window"] = p.context > 0 ? nlohmann::json(p.context) : nlohmann::json(nullptr);
  summary["model"] = o.model_origin;
  summary["settings"] = {{"placement", o.scoring.placement},
                         {"text", o.scoring.text},
                         {"chunk", o.chunk},
                         {"scored_codebooks", p.A},
                         {"fit_from", p.fit_from},
                         {"bootstrap", o.bootstrap},
                         {"seed", o.seed},
                         {"positions_auto", p.auto_positions},
                         {"headline", o.loss},
                         {"loss",
                          "nats per token: mean CE over the scored audio codebooks (semantic: codebook 0; "
                          "weighted: semantic x100 : acoustic x1)"}};
  return summary;
}

// The unit called `name`, added at the end the first time it reports (so units keep their first-seen order).
UnitProbes& unit_named(std::vector<UnitProbes>& units, const std::string& name) {
  auto it = std::find_if(units.begin(), units.end(), [&](const UnitProbes& u) { return u.name == name; });
  if (it != units.end()) return *it;
  units.push_back(UnitProbes{name, {}, {}, {}, {}, {}, {}});
  return units.back();
}

// Adds one chunk's probes, frames [start, end), of every TTT unit of every layer to the units' bins.
void record_probes(std::vector<UnitProbes>& units, const lm::LMModelImpl& m, const std::vector<lm::LayerProbes>& probes,
                   int64_t start, int64_t end, int64_t w) {
  for (size_t l = 0; l < probes.size(); ++l) {
    const auto& p = probes[l];
    if (p.hybrid.l0.defined()) {
      UnitProbes& u = unit_named(units, str("layer ", l, " hybrid"));
      add_tokens(u, p.hybrid, start, w);
      add_change(u, p.hybrid.w_delta_norm, end, w);
    }
    for (size_t j = 0; j < p.adapters.size(); ++j) {
      if (!p.adapters[j].l0.defined()) continue;
      UnitProbes& u = unit_named(
          units, str("layer ", l, " adapter ", lm::adapters_of(*m.transformer->layer_ptrs[l]).at(j)->target));
      add_tokens(u, p.adapters[j], start, w);
      add_change(u, p.adapters[j].w_delta_norm, end, w);
    }
    if (p.inplace_dw_norm.defined())
      add_change(unit_named(units, str("layer ", l, " inplace")), p.inplace_dw_norm, end, w);
  }
}

// Per-position losses of one file from its CE [S, T]: the mean over the scored audio codebooks, the
// semantic one, the 100:1 weighted mean and the text stream (NaN where nothing is scored).
FileCurves file_curves(const at::Tensor& ce, int64_t A, int64_t cb0) {
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
  return f;
}

// Streams file i through the model under variant v (teacher-forced, state carried over the whole file),
// applying the variant's resets after each chunk; `first`: the first variant, which measures memory and,
// with --probes, records the probes into `units`.
FileCurves stream_file(const lm::LMModelImpl& m, const Plan& p, const Variant& v, bool first, size_t i,
                       const LongContextOptions& o, std::vector<UnitProbes>& units, Rss& rss) {
  const bool probe_this = o.probes && first;
  at::Tensor codes = p.inputs[i].unsqueeze(0).to(m.text_linear->weight.device());
  lm::TransformerState st = m.make_state(1, o.chunk);
  const int64_t warm_at = std::max<int64_t>(o.chunk, codes.size(2) / 10);
  auto after = [&](int64_t end, const std::vector<lm::LayerProbes>& probes) {
    if (i == 0 && first && end >= warm_at && end - o.chunk < warm_at) rss.warm = rss_mb();
    if (i == 0 && first && end == codes.size(2)) rss.streamed = rss_mb();
    // Chunks start at multiples of --chunk.
    if (probe_this) record_probes(units, m, probes, (end - 1) / o.chunk * o.chunk, end, p.w);
    // Resets come after the chunk that ends on the period, so the next chunk starts from them.
    if (v.kind == "ttt-reset" && end % v.every == 0)
      for (auto& t : st.addons) t.reset();
    if (v.kind == "reset" && end % v.every == 0) st.reset();
  };
  at::Tensor ce;
  {
    at::InferenceMode im;
    ce = streaming_cross_entropy(m, codes, st, probe_this, after)[0].to(at::kDouble).contiguous();  // [S, T]
  }
  return file_curves(ce, p.A, p.cb0);
}

// Streams every file under variant v, with a progress line at most every 5 s (and after the last file).
std::vector<FileCurves> stream_variant(const lm::LMModelImpl& m, const Plan& p, const Variant& v, bool first,
                                       const LongContextOptions& o, std::vector<UnitProbes>& units, Rss& rss,
                                       std::chrono::steady_clock::time_point t0) {
  const int64_t total_frames = std::accumulate(p.inputs.begin(), p.inputs.end(), int64_t{0},
                                               [](int64_t a, const at::Tensor& c) { return a + c.size(1); });
  std::vector<FileCurves> fc;
  int64_t frames_done = 0;
  auto last_print = t0;
  for (size_t i = 0; i < p.inputs.size(); ++i) {
    fc.push_back(stream_file(m, p, v, first, i, o, units, rss));
    frames_done += static_cast<int64_t>(fc.back().audio.size());
    const auto now = std::chrono::steady_clock::now();
    if (!o.quiet && (std::chrono::duration<double>(now - last_print).count() >= 5.0 || i + 1 == p.inputs.size())) {
      last_print = now;
      const double secs = std::chrono::duration<double>(now - t0).count();
      const double rate = static_cast<double>(frames_done) / std::max(secs, 1e-9);
      std::fprintf(stderr, "[long-context %s] file %zu/%zu, %.0f frames/s, ETA %.0f s\n", v.name.c_str(), i + 1,
                   p.inputs.size(), rate, static_cast<double>(total_frames - frames_done) / std::max(rate, 1e-9));
    }
  }
  return fc;
}

// Bootstrap replicates of the slope and of each window's mean loss. Files are resampled, not positions:
// positions within a file are correlated, files are the independent units.
struct Bootstrap {
  std::vector<double> slopes;
  std::vector<std::vector<double>> at_pos;  // per window centre
};

Bootstrap bootstrap_files(const std::vector<FileCurves>& fc, const Plan& p, const LongContextOptions& o) {
  Bootstrap r;
  r.at_pos.resize(p.positions.size());
  util::SplitMix64 rng(o.seed ^ 0x5EEDull);
  for (int b = 0; b < o.bootstrap && fc.size() > 1; ++b) {
    std::vector<size_t> pick(fc.size());
    for (auto& i : pick) i = static_cast<size_t>(rng.next() % fc.size());
    r.slopes.push_back(fit_slope(bin_curve(fc, pick, p.w, p.bins, p.headline), p.w, p.fit_from));
    for (size_t k = 0; k < p.positions.size(); ++k) {
      const int64_t lo = p.positions[k] - p.w / 2;
      r.at_pos[k].push_back(window_mean(fc, pick, lo, lo + p.w, p.headline));
    }
  }
  return r;
}

// The windowed means around centre k over all files, every loss kind, with the headline's bootstrap CI.
nlohmann::json window_entry(const std::vector<FileCurves>& fc, const std::vector<size_t>& all, const Plan& p, size_t k,
                            const std::vector<double>& boot) {
  const int64_t lo = p.positions[k] - p.w / 2, hi = lo + p.w;
  nlohmann::json e = {{"frames", p.positions[k]},
                      {"window", {lo, hi}},
                      {"loss", num(window_mean(fc, all, lo, hi, p.headline))},
                      {"audio", num(window_mean(fc, all, lo, hi, &FileCurves::audio))},
                      {"semantic", num(window_mean(fc, all, lo, hi, &FileCurves::semantic))},
                      {"weighted", num(window_mean(fc, all, lo, hi, &FileCurves::weighted))},
                      {"text", num(window_mean(fc, all, lo, hi, &FileCurves::text))}};
  if (!boot.empty()) e["ci"] = {num(percentile(boot, 0.025)), num(percentile(boot, 0.975))};
  e["key"] = frames_key(p.positions[k]);
  return e;
}

// One variant's aggregates over its files: the per-bin curves of every loss kind go to `curves` (for
// curve.csv and the plot); the windowed means, the slope and its interval make the returned summary.
nlohmann::json variant_summary(const std::vector<FileCurves>& fc, const Plan& p, const Variant& v,
                               const LongContextOptions& o, std::map<std::string, std::vector<double>>& curves) {
  std::vector<size_t> all(fc.size());
  std::iota(all.begin(), all.end(), size_t{0});
  nlohmann::json j;
  for (auto [kname, kind] : {std::pair{"audio", &FileCurves::audio}, std::pair{"semantic", &FileCurves::semantic},
                             std::pair{"weighted", &FileCurves::weighted}, std::pair{"text", &FileCurves::text}})
    curves[v.name + "/" + kname] = bin_curve(fc, all, p.w, p.bins, kind);
  const double slope = fit_slope(curves[v.name + "/" + o.loss], p.w, p.fit_from);
  const Bootstrap boot = bootstrap_files(fc, p, o);
  nlohmann::json at_pos = nlohmann::json::array();
  for (size_t k = 0; k < p.positions.size(); ++k) {
    const nlohmann::json e = window_entry(fc, all, p, k, boot.at_pos[k]);
    at_pos.push_back(e);
    if (p.positions[k] % 1000 == 0)  // the names the report compares across runs
      j["librilight_loss_" + frames_key(p.positions[k])] = num(e["loss"].is_null() ? NAN : e["loss"].get<double>());
  }
  j["at"] = at_pos;
  j["slope_per_doubling"] = num(slope);
  j["librilight_slope"] = num(slope);
  if (!boot.slopes.empty())
    j["slope_ci"] = {num(percentile(boot.slopes, 0.025)), num(percentile(boot.slopes, 0.975))};
  else
    j["slope_ci"] = "needs at least 2 files";
  j["mean_loss"] = num(window_mean(fc, all, 0, p.T_max, p.headline));
  return j;
}

// Runs one variant end to end; no-ttt switches the TTT units off for its duration only.
nlohmann::json run_variant(lm::LMModelImpl& m, const Plan& p, const Variant& v, const LongContextOptions& o,
                           std::map<std::string, std::vector<double>>& curves, std::vector<UnitProbes>& units,
                           Rss& rss) {
  std::unique_ptr<lm::ScopedTTTOff> off;
  if (v.kind == "no-ttt") off = std::make_unique<lm::ScopedTTTOff>(*m.transformer);
  const bool first = &v == &p.variants.front();
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<FileCurves> fc = stream_variant(m, p, v, first, o, units, rss, t0);
  nlohmann::json j = variant_summary(fc, p, v, o, curves);
  j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  j["name"] = v.name;
  return j;
}

// curve.csv: one row per bin, one column per variant and loss kind (empty where nothing was scored).
void write_curve_csv(const fs::path& out, const Plan& p, const std::map<std::string, std::vector<double>>& curves) {
  std::ostringstream s;
  s << "bin_start,bin_end";
  for (const auto& [k, c] : curves) s << "," << k;
  s << "\n";
  for (int64_t b = 0; b < p.bins; ++b) {
    s << b * p.w << "," << std::min(p.T_max, (b + 1) * p.w);
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

// Centres of the first n bins (the x of the plots).
std::vector<double> bin_centers(size_t n, int64_t w) {
  std::vector<double> x(n);
  for (size_t b = 0; b < n; ++b) x[b] = (static_cast<double>(b) + 0.5) * static_cast<double>(w);
  return x;
}

// loss_by_position.png: the headline curve of every variant; the attention window is marked because
// beyond it only the TTT state can carry context.
void write_loss_plot(const fs::path& out, const Plan& p, const LongContextOptions& o,
                     std::map<std::string, std::vector<double>>& curves, nlohmann::json& summary) {
  plot::Chart c;
  c.title = "loss by position (mean over files, bins of " + std::to_string(p.w) + " frames)";
  c.xlabel = "position (frames, 12.5 per second)";
  c.ylabel = o.loss + " CE (nats per token)";
  for (const auto& v : p.variants) {
    const auto& y = curves[v.name + "/" + o.loss];
    c.series.push_back({v.name, bin_centers(y.size(), p.w), y});
  }
  if (p.context > 0 && p.context < p.T_max) c.vlines.push_back({static_cast<double>(p.context), "attention window"});
  plot::write_png(c, (out / "loss_by_position.png").string());
  summary["plots"] = {"loss_by_position.png"};
}

// A unit's per-bin probe means.
struct UnitCurves {
  std::vector<double> l0, lprev, lafter, change;
};

UnitCurves unit_curves(const UnitProbes& u) {
  return {ratio(u.l0, u.n), ratio(u.lprev, u.n), ratio(u.lafter, u.n), ratio(u.change, u.change_n)};
}

// Mean over all bins, weighted by their counts (NaN without any).
double pooled_mean(const std::vector<double>& s, const std::vector<double>& n) {
  const double a = std::accumulate(s.begin(), s.end(), 0.0), b = std::accumulate(n.begin(), n.end(), 0.0);
  return b > 0 ? a / b : NAN;
}

// probes.csv rows of one unit: one per bin.
void probe_csv_rows(std::ostringstream& csv, const UnitProbes& u, const UnitCurves& c, const Plan& p) {
  const size_t nb = std::max({c.l0.size(), c.change.size()});
  for (size_t b = 0; b < nb; ++b) {
    auto at = [&](const std::vector<double>& v) {
      return b < v.size() && std::isfinite(v[b]) ? str(v[b]) : std::string();
    };
    csv << '"' << u.name << "\"," << b * static_cast<size_t>(p.w) << "," << std::min<int64_t>(p.T_max, (b + 1) * p.w)
        << "," << at(c.l0) << "," << at(c.lprev) << "," << at(c.lafter) << "," << (b < u.n.size() ? u.n[b] : 0) << ","
        << at(c.change) << "\n";
  }
}

// A unit's summary entry: pooled inner losses and the state change at the end.
nlohmann::json probe_entry(const UnitProbes& u, const UnitCurves& c) {
  nlohmann::json e = {{"unit", u.name},
                      {"l0", num(pooled_mean(u.l0, u.n))},
                      {"lprev", num(pooled_mean(u.lprev, u.n))},
                      {"lafter", num(pooled_mean(u.lafter, u.n))},
                      {"state_change_end", num(c.change.empty() ? NAN : c.change.back())}};
  if (!c.l0.empty()) {
    // Does the state carry what was learned? lprev < l0: the state before a token's update already
    // predicts it better than W_0; lafter < lprev: the update itself fits it.
    const double l0 = pooled_mean(u.l0, u.n), lprev = pooled_mean(u.lprev, u.n), lafter = pooled_mean(u.lafter, u.n);
    e["lprev_below_l0"] = std::isfinite(lprev) && lprev < l0;
    e["lafter_below_lprev"] = std::isfinite(lafter) && lafter < lprev;
  }
  return e;
}

// The unit's name as a file name: anything but letters and digits becomes '_'.
std::string file_safe(std::string s) {
  for (auto& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

// The unit's plots: inner losses by position, and the state change with the reset periods marked.
void probe_plots(const fs::path& out, const UnitProbes& u, const UnitCurves& uc, const Plan& p,
                 nlohmann::json& summary) {
  const std::string safe = file_safe(u.name);
  if (!uc.l0.empty()) {
    plot::Chart c;
    c.title = "TTT inner loss, " + u.name + " (" + p.variants.front().name + ")";
    c.xlabel = "position (frames)";
    c.ylabel = "inner loss (mean over heads)";
    c.series.push_back({"l0: with W_0", bin_centers(uc.l0.size(), p.w), uc.l0});
    c.series.push_back({"lprev: state before the update", bin_centers(uc.lprev.size(), p.w), uc.lprev});
    c.series.push_back({"lafter: state after the update", bin_centers(uc.lafter.size(), p.w), uc.lafter});
    plot::write_png(c, (out / ("ttt_probe_" + safe + ".png")).string());
    summary["plots"].push_back("ttt_probe_" + safe + ".png");
  }
  if (!uc.change.empty()) {
    plot::Chart c;
    c.title = "TTT state change |W_t - W_0|, " + u.name;
    c.xlabel = "position (frames)";
    c.ylabel = "Frobenius norm";
    c.series.push_back({"", bin_centers(uc.change.size(), p.w), uc.change, "points"});
    for (const auto& v : p.variants)
      if (v.kind == "ttt-reset" || v.kind == "reset") c.vlines.push_back({static_cast<double>(v.every), v.name});
    plot::write_png(c, (out / ("ttt_state_" + safe + ".png")).string());
    summary["plots"].push_back("ttt_state_" + safe + ".png");
  }
}

// probes.csv, the probe plots and summary["probes"] (the probes are the first variant's).
void write_probes(const fs::path& out, const Plan& p, const std::vector<UnitProbes>& units, nlohmann::json& summary) {
  nlohmann::json pj = nlohmann::json::array();
  std::ostringstream csv;
  csv << "unit,bin_start,bin_end,l0,lprev,lafter,tokens,state_change\n";
  for (const auto& u : units) {
    const UnitCurves c = unit_curves(u);
    probe_csv_rows(csv, u, c, p);
    pj.push_back(probe_entry(u, c));
    probe_plots(out, u, c, p, summary);
  }
  io::atomic_write((out / "probes.csv").string(), csv.str());
  summary["probes"] = {{"variant", p.variants.front().name}, {"units", pj}};
}

// One line per run in OUT/eval/results.jsonl, which `moshi-ttt report` reads.
void append_result(const std::string& out_dir, const fs::path& summary_path) {
  std::ofstream rl(fs::path(out_dir) / "eval" / "results.jsonl", std::ios::app);
  MT_CHECK(rl, (fs::path(out_dir) / "eval" / "results.jsonl").string(), ": cannot append");
  rl << nlohmann::json{{"kind", "long_context"}, {"summary", summary_path.string()}}.dump() << "\n";
}

}  // namespace

nlohmann::json run_long_context(lm::LMModelImpl& m, const std::vector<std::string>& files, CodesCache* cache,
                                const LongContextOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  MT_CHECK(!files.empty(), "eval long-context: no files");
  MT_CHECK(!o.out_dir.empty(), "eval long-context: --out RUN_DIR is required");
  MT_CHECK(o.chunk >= 1, "--chunk must be >= 1");
  Plan p;
  p.variants = checked_variants(m, o);
  read_inputs(p, m, files, cache, o);
  Rss rss;
  rss.loaded = rss_mb();
  derive_settings(p, m.cfg, o);
  nlohmann::json summary = summary_header(files, p, o);
  const fs::path out = fs::path(o.out_dir) / "eval" / "long_context";
  fs::create_directories(out);

  std::map<std::string, std::vector<double>> curves;  // "<variant>/<kind>" -> per-bin mean
  std::vector<UnitProbes> units;
  nlohmann::json vj = nlohmann::json::array();
  for (const auto& v : p.variants) vj.push_back(run_variant(m, p, v, o, curves, units, rss));
  summary["variants"] = vj;
  summary["rss_mb"] = {{"after_loading", num(rss.loaded)},
                       {"after_warmup", num(rss.warm)},
                       {"after_streaming", num(rss.streamed)},
                       {"end", num(rss_mb())}};
  write_curve_csv(out, p, curves);
  write_loss_plot(out, p, o, curves, summary);
  if (o.probes) write_probes(out, p, units, summary);
  summary["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  io::atomic_write((out / "summary.json").string(), summary.dump(2) + "\n");
  append_result(o.out_dir, out / "summary.json");
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
