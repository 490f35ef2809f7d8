#include "report/report.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "io/safetensors.h"
#include "report/plot.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::report {

namespace {

// One section of the index page, rendered both as Markdown and as HTML.
struct Section {
  std::string title;
  std::vector<std::string> text;    // paragraphs
  std::vector<std::string> header;  // table header (empty: no table)
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> images;  // paths relative to report/
};

std::vector<nlohmann::json> read_jsonl(const fs::path& p, const std::string& kind) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && (kind.empty() || j.value("kind", "") == kind))
      out.push_back(std::move(j));
  }
  return out;
}

std::optional<nlohmann::json> read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return std::nullopt;
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

std::string fmt(const nlohmann::json& v, const char* f = "%.4f") {
  if (!v.is_number()) return "n/a";
  char b[48];
  std::snprintf(b, sizeof b, f, v.get<double>());
  return b;
}

std::string pct(const nlohmann::json& v) {
  if (!v.is_number()) return "n/a";
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", 100.0 * v.get<double>());
  return b;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else
      o += c;
  }
  return o;
}

// A Markdown table cell: '|' would end the cell.
std::string md_cell(const std::string& c) {
  std::string o;
  for (char ch : c) o += ch == '|' ? std::string("\\|") : std::string(1, ch);
  return o;
}

std::string render_md(const std::string& title, const std::vector<Section>& secs) {
  std::string s = "# " + title + "\n\n";
  for (const auto& sec : secs) {
    s += "## " + sec.title + "\n\n";
    for (const auto& t : sec.text) s += t + "\n\n";
    if (!sec.header.empty()) {
      s += "|";
      for (const auto& h : sec.header) s += " " + md_cell(h) + " |";
      s += "\n|";
      for (size_t i = 0; i < sec.header.size(); ++i) s += "---|";
      s += "\n";
      for (const auto& r : sec.rows) {
        s += "|";
        for (const auto& c : r) s += " " + md_cell(c) + " |";
        s += "\n";
      }
      s += "\n";
    }
    for (const auto& im : sec.images) s += "![" + im + "](" + im + ")\n\n";
  }
  return s;
}

std::string render_html(const std::string& title, const std::vector<Section>& secs) {
  std::string s =
      "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + html_escape(title) +
      "</title>\n<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
      "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
      "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;"
      "margin:0.5em 0}</style></head><body>\n<h1>" +
      html_escape(title) + "</h1>\n";
  for (const auto& sec : secs) {
    s += "<h2>" + html_escape(sec.title) + "</h2>\n";
    for (const auto& t : sec.text) s += "<p>" + html_escape(t) + "</p>\n";
    if (!sec.header.empty()) {
      s += "<table><tr>";
      for (const auto& h : sec.header) s += "<th>" + html_escape(h) + "</th>";
      s += "</tr>\n";
      for (const auto& r : sec.rows) {
        s += "<tr>";
        for (const auto& c : r) s += "<td>" + html_escape(c) + "</td>";
        s += "</tr>\n";
      }
      s += "</table>\n";
    }
    for (const auto& im : sec.images)
      s += "<p><a href=\"" + im + "\"><img src=\"" + im + "\" alt=\"" + im + "\"></a></p>\n";
  }
  return s + "</body></html>\n";
}

// Series of (step, value) from train records; key may be "a/b" for a nested object member.
plot::Series series_of(const std::vector<nlohmann::json>& recs, const std::string& key, const std::string& label,
                       const std::string& style = "line") {
  plot::Series s;
  s.label = label;
  s.style = style;
  const auto slash = key.find('/');
  for (const auto& j : recs) {
    const nlohmann::json* v = nullptr;
    if (slash == std::string::npos) {
      if (j.contains(key)) v = &j[key];
    } else if (j.contains(key.substr(0, slash)) && j[key.substr(0, slash)].is_object() &&
               j[key.substr(0, slash)].contains(key.substr(slash + 1))) {
      v = &j[key.substr(0, slash)][key.substr(slash + 1)];
    }
    if (v && v->is_number() && j.contains("step")) {
      s.x.push_back(j["step"].get<double>());
      s.y.push_back(v->get<double>());
    }
  }
  return s;
}

// Whether the chart's values are all positive and span more than a decade and a half: a log axis then
// shows the late part of a loss curve instead of flattening it against the floor.
bool spans_decades(const plot::Chart& c) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : c.series)
    for (double y : s.y)
      if (std::isfinite(y)) lo = std::min(lo, y), hi = std::max(hi, y);
  return lo > 0 && hi / lo > 30;
}

std::set<std::string> object_keys(const std::vector<nlohmann::json>& recs, const std::string& key) {
  std::set<std::string> k;
  for (const auto& j : recs)
    if (j.contains(key) && j[key].is_object())
      for (auto it = j[key].begin(); it != j[key].end(); ++it) k.insert(it.key());
  return k;
}

Section training_section(const fs::path& run, const fs::path& rep, std::vector<std::string>& written) {
  Section sec;
  sec.title = "Training";
  const auto train = read_jsonl(run / "metrics.jsonl", "train");
  const auto evals = read_jsonl(run / "metrics.jsonl", "eval");
  if (train.empty()) {
    sec.text.push_back("No training records (metrics.jsonl with kind \"train\") in " + run.string() + ".");
    return sec;
  }
  auto write = [&](plot::Chart& c, const std::string& name) {
    bool any = false;
    for (const auto& s : c.series) any = any || !s.y.empty();
    if (!any) return;
    plot::write_png(c, (rep / name).string());
    sec.images.push_back(name);
    written.push_back((rep / name).string());
  };
  {
    plot::Chart c;
    c.title = "training loss";
    c.xlabel = "step";
    c.ylabel = "loss (nats)";
    c.series.push_back(series_of(train, "loss", "train (weighted)"));
    c.series.push_back(series_of(train, "audio_loss", "audio"));
    c.series.push_back(series_of(train, "text_loss", "text"));
    c.series.push_back(series_of(evals, "eval_loss", "eval", "points"));
    c.logy = spans_decades(c);
    write(c, "training_curves.png");
  }
  {
    plot::Chart c;
    c.title = "learning rate per parameter group";
    c.xlabel = "step";
    c.ylabel = "learning rate";
    c.logy = true;
    for (const auto& g : object_keys(train, "lr")) c.series.push_back(series_of(train, "lr/" + g, g));
    write(c, "learning_rates.png");
  }
  {
    plot::Chart c;
    c.title = "gradient norm (before clipping)";
    c.xlabel = "step";
    c.ylabel = "L2 norm";
    c.logy = true;
    c.series.push_back(series_of(train, "grad_norm", "total"));
    for (const auto& g : object_keys(train, "grad_norm_groups"))
      c.series.push_back(series_of(train, "grad_norm_groups/" + g, g));
    write(c, "grad_norms.png");
  }
  {
    plot::Chart c;
    c.title = "TTT: gate mean |tanh alpha| and state change |W_t - W_0|";
    c.xlabel = "step";
    c.ylabel = "value";
    c.series.push_back(series_of(train, "alpha_mean_abs_tanh", "mean |tanh alpha|"));
    c.series.push_back(series_of(train, "ttt_state_change", "|W_t - W_0|"));
    write(c, "ttt_gates.png");
  }
  const auto& first = train.front();
  const auto& last = train.back();
  sec.header = {"", "first logged step", "last logged step"};
  sec.rows.push_back({"step", fmt(first["step"], "%.0f"), fmt(last["step"], "%.0f")});
  sec.rows.push_back({"loss", fmt(first.value("loss", nlohmann::json())), fmt(last.value("loss", nlohmann::json()))});
  if (last.contains("alpha_mean_abs_tanh"))
    sec.rows.push_back(
        {"mean |tanh alpha|", fmt(first["alpha_mean_abs_tanh"], "%.5f"), fmt(last["alpha_mean_abs_tanh"], "%.5f")});
  if (last.contains("frames_per_s"))
    sec.rows.push_back({"frames/s", fmt(first["frames_per_s"], "%.0f"), fmt(last["frames_per_s"], "%.0f")});
  if (!evals.empty())
    sec.rows.push_back({"eval loss", fmt(evals.front()["eval_loss"]), fmt(evals.back()["eval_loss"])});
  int64_t skipped = 0;
  for (const auto& j : train) skipped += j.value("skipped", false) ? 1 : 0;
  sec.text.push_back(
      std::to_string(train.size()) + " logged training steps" +
      (skipped ? ", " + std::to_string(skipped) + " of them skipped for a non-finite loss or gradient" : "") + ".");
  return sec;
}

Section paired_section(const fs::path& run, const fs::path& rep, std::vector<std::string>& written) {
  Section sec;
  sec.title = "Paired benchmarks";
  std::vector<nlohmann::json> sums;
  for (const char* task : {"swuggy", "sblimp", "sstory", "tstory"})
    if (auto j = read_json(run / "eval" / task / "summary.json"); j && (*j)["result"].is_object()) sums.push_back(*j);
  if (sums.empty()) {
    sec.text.push_back("No paired benchmark results (run `moshi-ttt eval paired --task ... --out " + run.string() +
                       "`).");
    return sec;
  }
  sec.header = {"task", "accuracy", "95% CI", "ids", "ties", "skipped", "longer clip wins", "reduction", "data"};
  plot::Chart c;
  c.title = "paired benchmarks: accuracy with bootstrap 95% interval";
  c.ylabel = "accuracy (%)";
  c.ymin = 0;
  c.ymax = 100;
  c.hlines.push_back({50, "chance"});
  plot::Series bars{"accuracy (whiskers: 95% interval)", {}, {}, "bar"};
  bool synthetic = false;
  for (size_t i = 0; i < sums.size(); ++i) {
    const auto& j = sums[i];
    const auto& r = j["result"];
    std::string label = j["task"].get<std::string>();
    if (label == "swuggy" && r.contains("invocab") && r["invocab"].is_number()) label += " (all)";
    const bool syn = j.contains("data_note");
    synthetic = synthetic || syn;
    sec.rows.push_back({label, pct(r["score"]), pct(r["ci"]["lo"]) + " - " + pct(r["ci"]["hi"]),
                        std::to_string(r.value("ids", 0)), std::to_string(r.value("ties", 0)),
                        std::to_string(r.contains("skipped") ? r["skipped"].size() : 0),
                        pct(j["longer_clip_wins"]["score"]), j["settings"]["reduction"].get<std::string>(),
                        syn ? "synthetic" : "as given"});
    if (j["task"] == "swuggy" && r.contains("invocab") && r["invocab"].is_number())
      sec.rows.push_back({"swuggy (in-vocab)", pct(r["invocab"]),
                          pct(r["invocab_ci"]["lo"]) + " - " + pct(r["invocab_ci"]["hi"]),
                          std::to_string(r.value("invocab_ids", 0)), "", "", "",
                          j["settings"]["reduction"].get<std::string>(), syn ? "synthetic" : "as given"});
    const double x = static_cast<double>(i);
    bars.x.push_back(x);
    bars.y.push_back(r["score"].is_number() ? 100 * r["score"].get<double>() : NAN);
    const bool ci = r["ci"]["lo"].is_number() && r["ci"]["hi"].is_number();
    bars.lower.push_back(ci ? 100 * r["ci"]["lo"].get<double>() : NAN);
    bars.upper.push_back(ci ? 100 * r["ci"]["hi"].get<double>() : NAN);
    c.xticks.push_back({x, label});
  }
  c.xmin = -0.7;
  c.xmax = static_cast<double>(sums.size()) - 0.3;
  c.series = {bars};
  plot::write_png(c, (rep / "paired_benchmarks.png").string());
  written.push_back((rep / "paired_benchmarks.png").string());
  sec.images.push_back("paired_benchmarks.png");
  if (synthetic)
    sec.text.push_back(
        "Rows marked synthetic were scored on espeak-ng sets made by `moshi-ttt eval make-sets`: they test the "
        "pipeline and are not comparable to published numbers.");
  sec.text.push_back(
      "Ties count 0.5. \"longer clip wins\" is the accuracy a length cue alone would get; near 50% means the "
      "benchmark does not give the answer away by duration.");
  return sec;
}

Section long_context_section(const fs::path& run, const fs::path& rep, std::vector<std::string>& written) {
  Section sec;
  sec.title = "Long context: loss by position and TTT probes";
  const fs::path dir = run / "eval" / "long_context";
  auto j = read_json(dir / "summary.json");
  if (!j) {
    sec.text.push_back("No long-context results (run `moshi-ttt eval long-context` or `eval ttt-probe` with --out " +
                       run.string() + ").");
    return sec;
  }
  const auto& s = *j;
  std::string att =
      s["attention_window"].is_number() ? std::to_string(s["attention_window"].get<int64_t>()) + " frames" : "none";
  sec.text.push_back(std::to_string(s["files"].size()) + " file(s), up to " +
                     std::to_string(s["frames"]["max"].get<int64_t>()) + " frames; attention window " + att +
                     "; windowed means over " + std::to_string(s["frames"]["window"].get<int64_t>()) +
                     " frames; loss: " + s["settings"].value("headline", std::string("audio")) +
                     " CE in nats per token.");
  // Table: one row per variant, a column per position.
  std::vector<std::string> keys;
  if (!s["variants"].empty())
    for (const auto& p : s["variants"][0]["at"]) keys.push_back(p["key"].get<std::string>());
  sec.header = {"variant"};
  for (const auto& k : keys) sec.header.push_back("@" + k);
  sec.header.push_back("slope per doubling [95% CI]");
  for (const auto& v : s["variants"]) {
    std::vector<std::string> row{v["name"].get<std::string>()};
    for (const auto& k : keys) {
      std::string cell;
      for (const auto& p : v["at"])
        if (p["key"] == k) cell = fmt(p["loss"]);
      row.push_back(cell);
    }
    std::string sl = fmt(v["slope_per_doubling"], "%+.4f");
    if (v["slope_ci"].is_array())
      sl += " [" + fmt(v["slope_ci"][0], "%+.4f") + ", " + fmt(v["slope_ci"][1], "%+.4f") + "]";
    row.push_back(sl);
    sec.rows.push_back(row);
  }
  if (s.contains("plots"))
    for (const auto& p : s["plots"]) {
      const std::string name = p.get<std::string>();
      if (!fs::exists(dir / name)) continue;
      // Copied beside the index so the report folder stands on its own.
      fs::copy_file(dir / name, rep / name, fs::copy_options::overwrite_existing);
      written.push_back((rep / name).string());
      sec.images.push_back(name);
    }
  if (s.contains("probes")) {
    std::string t =
        "TTT probes (" + s["probes"]["variant"].get<std::string>() +
        "): l0 = inner loss with W_0, lprev = with the state before each token's update, lafter = after it. "
        "lprev below l0 means the state carries what earlier tokens taught it.";
    for (const auto& u : s["probes"]["units"])
      t += " " + u["unit"].get<std::string>() + ": " + fmt(u["l0"]) + " / " + fmt(u["lprev"]) + " / " +
           fmt(u["lafter"]) + ", |W_t - W_0| " + fmt(u["state_change_end"]) + ".";
    sec.text.push_back(t);
  }
  return sec;
}

}  // namespace

std::vector<std::string> write_report(const std::string& run_dir) {
  const fs::path run(run_dir);
  MT_CHECK(fs::is_directory(run), run_dir, ": not a folder (expected a run folder of `train` or `eval`)");
  const fs::path rep = run / "report";
  fs::create_directories(rep);
  std::vector<std::string> written;
  std::vector<Section> secs;
  secs.push_back(training_section(run, rep, written));
  secs.push_back(paired_section(run, rep, written));
  secs.push_back(long_context_section(run, rep, written));
  const std::string title = "moshi-ttt report: " + fs::absolute(run).lexically_normal().string();
  io::atomic_write((rep / "index.md").string(), render_md(title, secs));
  io::atomic_write((rep / "index.html").string(), render_html(title, secs));
  written.push_back((rep / "index.md").string());
  written.push_back((rep / "index.html").string());
  return written;
}

}  // namespace mt::report
