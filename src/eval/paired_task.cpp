#include "eval/paired_task.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "audio/audio_io.h"
#include "eval/zr_score.h"
#include "io/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace mt::eval {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The folder that holds the task's files.
std::string task_folder(const PairedTaskOptions& o) {
  const fs::path d(o.data);
  MT_CHECK(fs::is_directory(d), o.data, ": not a folder");
  std::vector<fs::path> candidates;
  if (o.task == "swuggy")
    candidates = {d / "lexical" / o.split, d / o.split, d};
  else if (o.task == "sblimp")
    candidates = {d / "syntactic" / o.split, d / o.split, d};
  else if (o.task == "sstory")
    candidates = {d / "sstory", d / "sStoryCloze", d};
  else if (o.task == "tstory")
    candidates = {d / "tstory", d / "tStoryCloze", d};
  else
    fail("--task must be swuggy, sblimp, sstory or tstory, got '", o.task, "'");
  for (const auto& c : candidates) {
    if (!fs::is_directory(c)) continue;
    if (fs::exists(c / "gold.csv") || fs::exists(c / "manifest.csv")) return c.string();
    for (const auto& e : fs::directory_iterator(c))
      if (audio::is_audio_file(e.path().string())) return c.string();
  }
  std::string tried;
  for (const auto& c : candidates) tried += "\n  " + c.string();
  fail(o.data, ": no ", o.task, " data found; looked for gold.csv, manifest.csv or audio files in:", tried);
}

// The audio file of a stem (gold.csv names files without extension; accept one with it too).
std::string audio_path(const fs::path& dir, const std::string& name) {
  const fs::path p = dir / name;
  if (p.has_extension() && fs::exists(p)) return p.string();
  for (const char* ext : {".wav", ".flac", ".ogg"})
    if (fs::exists(dir / (name + ext))) return (dir / (name + ext)).string();
  return (dir / (name + ".wav")).string();  // reported as missing
}

std::string stem_of(const std::string& name) {
  return audio::is_audio_file(name) ? fs::path(name).stem().string() : name;
}

// Does the dataset say it is synthetic (a README beside the data or in a parent)?
std::string data_note(const fs::path& folder) {
  fs::path p = fs::absolute(folder);
  for (int up = 0; up < 4 && !p.empty(); ++up, p = p.parent_path()) {
    for (const char* name : {"README.md", "README.txt", "README"}) {
      std::ifstream in(p / name);
      if (!in) continue;
      std::stringstream ss;
      ss << in.rdbuf();
      if (lower(ss.str()).find("synthetic") != std::string::npos)
        return "synthetic (" + (p / name).string() + "): not comparable to published numbers";
      return "";
    }
    if (p == p.parent_path()) break;
  }
  return "";
}

std::string zr_name(const std::string& task) {
  return task == "swuggy" ? "lexical" : task == "sblimp" ? "syntactic" : task;
}

PairedResult score_task(const std::string& task, const std::vector<LexicalGold>& lex,
                        const std::vector<SyntacticGold>& syn, const std::vector<StoryPair>& pairs, const ItemScores& s,
                        int bootstrap, uint64_t seed) {
  if (task == "swuggy") return score_lexical(lex, s, bootstrap, seed);
  if (task == "sblimp") return score_syntactic(syn, s, bootstrap, seed);
  return score_story(task, pairs, s, bootstrap, seed);
}

size_t reduction_index(const std::string& reduction) {
  const auto red = std::find(kReductions.begin(), kReductions.end(), reduction);
  MT_CHECK(red != kReductions.end(), "--reduction must be mean, sum, semantic or weighted, got '", reduction, "'");
  return static_cast<size_t>(red - kReductions.begin());
}

// A task's items (the gold of its kind) and the files they name.
struct TaskItems {
  std::vector<LexicalGold> lex;
  std::vector<SyntacticGold> syn;
  std::vector<StoryPair> pairs;
  std::vector<std::string> names;  // file names (stems or with extension) to score, in a stable order
  bool has_gold = true;
};

// The items: from gold.csv / the story pairs, or every audio file when there is no gold (test splits).
TaskItems read_items(const fs::path& folder, const std::string& task) {
  TaskItems r;
  if (task == "swuggy" || task == "sblimp") {
    if (fs::exists(folder / "gold.csv")) {
      if (task == "swuggy") {
        r.lex = read_lexical_gold((folder / "gold.csv").string());
        for (const auto& g : r.lex) r.names.push_back(g.filename);
      } else {
        r.syn = read_syntactic_gold((folder / "gold.csv").string());
        for (const auto& g : r.syn) r.names.push_back(g.filename);
      }
    } else {
      r.has_gold = false;
      for (const auto& e : fs::directory_iterator(folder)) {
        if (audio::is_audio_file(e.path().string())) r.names.push_back(e.path().filename().string());
      }
      std::sort(r.names.begin(), r.names.end());
    }
  } else {
    r.pairs = read_story_pairs(folder.string());
    for (const auto& p : r.pairs) {
      r.names.push_back(p.positive);
      r.names.push_back(p.negative);
    }
  }
  MT_CHECK(!r.names.empty(), folder.string(), ": no items to score");
  // Unique names; missing files become skipped items (the scorer names them), never silent drops.
  std::sort(r.names.begin(), r.names.end());
  r.names.erase(std::unique(r.names.begin(), r.names.end()), r.names.end());
  return r;
}

// The clips found on disk, in the order of the names, and the files that were not.
struct EncodedClips {
  std::vector<std::string> stems, missing;
  std::vector<at::Tensor> clips;  // [A, F] per stem
};

// Encodes the named files (or takes them from the cache), with a progress line at most every 5 s.
EncodedClips encode_items(const std::vector<std::string>& names, const fs::path& folder, CodesCache& cache, int64_t A,
                          bool quiet) {
  EncodedClips r;
  int64_t done = 0;
  auto last = std::chrono::steady_clock::now();
  for (const auto& n : names) {
    const std::string path = audio_path(folder, n);
    ++done;
    if (!fs::exists(path)) {
      r.missing.push_back(stem_of(n) + ": audio file " + path + " not found");
      continue;
    }
    at::Tensor c = cache.codes(path);
    MT_CHECK(c.size(0) == A, path, ": ", c.size(0), " codebooks, the LM scores ", A);
    r.clips.push_back(c);
    r.stems.push_back(stem_of(n));
    const auto now = std::chrono::steady_clock::now();
    if (!quiet && (std::chrono::duration<double>(now - last).count() >= 5.0 || done == (int64_t)names.size())) {
      last = now;
      std::fprintf(stderr, "[encode] %lld/%zu files (%lld encoded now, %lld cached)\n", (long long)done, names.size(),
                   (long long)cache.encoded(), (long long)cache.cached());
    }
  }
  return r;
}

// The clip scores by stem: one map per reduction, and the clip lengths (for the length confound).
struct StemScores {
  std::array<ItemScores, kReductions.size()> by_red;
  ItemScores frames;
};

StemScores scores_by_stem(const std::vector<ClipScore>& scores, const std::vector<std::string>& stems) {
  StemScores r;
  for (size_t i = 0; i < scores.size(); ++i) {
    for (size_t k = 0; k < kReductions.size(); ++k) r.by_red[k][stems[i]] = scores[i].score[k];
    r.frames[stems[i]] = static_cast<double>(scores[i].frames);
  }
  return r;
}

// items.csv: every clip and every reduction.
void write_items_csv(const fs::path& out, const std::vector<ClipScore>& scores, const std::vector<std::string>& stems) {
  std::string s = "stem,frames,tokens";
  for (const char* r : kReductions) s += std::string(",") + r;
  s += "\n";
  for (size_t i = 0; i < scores.size(); ++i) {
    s += str(stems[i], ",", scores[i].frames, ",", scores[i].tokens);
    for (double v : scores[i].score) {
      char b[32];
      std::snprintf(b, sizeof b, ",%.9g", v);
      s += b;
    }
    s += "\n";
  }
  io::atomic_write((out / "items.csv").string(), s);
}

// The ZeroSpeech submission of the chosen reduction, in the official layout; returns its path.
fs::path write_task_submission(const fs::path& out, const PairedTaskOptions& o, const ItemScores& s) {
  const std::string sub_dir = (o.task == "swuggy" || o.task == "sblimp") ? zr_name(o.task) : o.task;
  const fs::path sub = out / "submission" / sub_dir / (o.split + ".txt");
  fs::create_directories(sub.parent_path());
  write_submission(s, sub.string());
  return sub;
}

// The summary's description of the run: data, settings and file counts.
nlohmann::json summary_header(const PairedTaskOptions& o, const fs::path& folder, int64_t A, const TaskItems& items,
                              const EncodedClips& enc, const CodesCache& cache, const fs::path& sub) {
  nlohmann::json j;
  j["task"] = o.task;
  j["split"] = o.split;
  j["data"] = folder.string();
  const std::string note = data_note(folder);
  if (!note.empty()) j["data_note"] = note;
  j["model"] = o.model_origin;
  j["settings"] = {{"placement", o.scoring.placement},
                   {"text", o.scoring.text},
                   {"reduction", o.reduction},
                   {"scored_codebooks", A},
                   {"ties", "0.5"},
                   {"bootstrap", o.bootstrap},
                   {"seed", o.seed}};
  j["files"] = {{"listed", items.names.size()},
                {"scored", enc.stems.size()},
                {"missing", enc.missing.size()},
                {"encoded_now", cache.encoded()},
                {"from_cache", cache.cached()}};
  if (!enc.missing.empty()) j["missing"] = enc.missing;
  j["submission"] = sub.string();
  return j;
}

// With gold: the headline under the chosen reduction (score files, bootstrap CI), the accuracy under every
// reduction (no bootstrap), and how often the longer clip wins.
void add_gold_scores(nlohmann::json& j, const TaskItems& items, const StemScores& s, size_t red_i,
                     const PairedTaskOptions& o, const fs::path& out) {
  PairedResult r = score_task(o.task, items.lex, items.syn, items.pairs, s.by_red[red_i], o.bootstrap, o.seed);
  write_score_files(r, out.string(), o.split);
  j["result"] = r.to_json();
  nlohmann::json all = nlohmann::json::object();
  for (size_t k = 0; k < kReductions.size(); ++k) {
    PairedResult rk = k == red_i ? r : score_task(o.task, items.lex, items.syn, items.pairs, s.by_red[k], 0, o.seed);
    nlohmann::json e = {{"score", rk.score}, {"ties", rk.ties}};
    if (o.task == "swuggy") e["invocab"] = rk.invocab;
    all[kReductions[k]] = e;
  }
  j["by_reduction"] = all;
  // Confound check: how often the longer clip wins (a benchmark a length cue can solve is not measuring the LM).
  PairedResult lr = score_task(o.task, items.lex, items.syn, items.pairs, s.frames, 0, o.seed);
  j["longer_clip_wins"] = {{"score", lr.score}, {"ties", lr.ties}};
}

// One line per run in OUT/eval/results.jsonl, which `moshi-ttt report` reads.
void append_result(const PairedTaskOptions& o, const fs::path& out, const nlohmann::json& j, bool has_gold) {
  std::ofstream rl(fs::path(o.out_dir) / "eval" / "results.jsonl", std::ios::app);
  MT_CHECK(rl, (fs::path(o.out_dir) / "eval" / "results.jsonl").string(), ": cannot append");
  nlohmann::json line = {
      {"kind", "paired"}, {"task", o.task}, {"split", o.split}, {"summary", (out / "summary.json").string()}};
  if (has_gold) {
    line["score"] = j["result"]["score"];
    line["ci"] = j["result"]["ci"];
  }
  rl << line.dump() << "\n";
}

}  // namespace

nlohmann::json run_paired_task(const lm::LMModelImpl& m, CodesCache& cache, const PairedTaskOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t red_i = reduction_index(o.reduction);
  MT_CHECK(!o.out_dir.empty(), "eval paired: --out RUN_DIR is required");
  const fs::path folder = task_folder(o);
  const TaskItems items = read_items(folder, o.task);
  const int64_t A = clip_codebooks(m.cfg, o.scoring.placement);
  const EncodedClips enc = encode_items(items.names, folder, cache, A, o.scoring.quiet);
  const std::vector<ClipScore> scores = score_clips(m, enc.clips, o.scoring);
  const StemScores by_stem = scores_by_stem(scores, enc.stems);

  const fs::path out = fs::path(o.out_dir) / "eval" / o.task;
  fs::create_directories(out);
  write_items_csv(out, scores, enc.stems);
  const fs::path sub = write_task_submission(out, o, by_stem.by_red[red_i]);
  nlohmann::json j = summary_header(o, folder, A, items, enc, cache, sub);
  if (items.has_gold) {
    add_gold_scores(j, items, by_stem, red_i, o, out);
  } else {
    j["result"] = nullptr;
    j["note"] = "no gold.csv in " + folder.string() + ": submission written, nothing scored";
  }
  j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  io::atomic_write((out / "summary.json").string(), j.dump(2) + "\n");
  append_result(o, out, j, items.has_gold);
  return j;
}

std::string format_paired_summary(const nlohmann::json& j) {
  std::ostringstream os;
  auto pct = [](const nlohmann::json& v) {
    if (!v.is_number()) return std::string("n/a");
    char b[32];
    std::snprintf(b, sizeof b, "%.1f%%", 100.0 * v.get<double>());
    return std::string(b);
  };
  os << j["task"].get<std::string>() << " (" << j["split"].get<std::string>() << ") on " << j["data"].get<std::string>()
     << "\n";
  if (j.contains("data_note")) os << "  data: " << j["data_note"].get<std::string>() << "\n";
  const auto& s = j["settings"];
  os << "  scoring: placement " << s["placement"].get<std::string>() << ", text " << s["text"].get<std::string>()
     << ", reduction " << s["reduction"].get<std::string>() << ", " << s["scored_codebooks"].get<int64_t>()
     << " codebooks, ties = 0.5\n";
  const auto& f = j["files"];
  os << "  files: " << f["scored"].get<int64_t>() << " scored, " << f["missing"].get<int64_t>() << " missing, "
     << f["encoded_now"].get<int64_t>() << " encoded now, " << f["from_cache"].get<int64_t>() << " from the cache\n";
  if (j["result"].is_null()) {
    os << "  " << j["note"].get<std::string>() << "\n";
    return os.str();
  }
  const auto& r = j["result"];
  os << "  accuracy " << pct(r["score"]) << " [95% CI " << pct(r["ci"]["lo"]) << " - " << pct(r["ci"]["hi"])
     << "] over " << r["ids"].get<int64_t>() << " ids (" << r["pairs"].get<int64_t>() << " pairs, "
     << r["ties"].get<int64_t>() << " ties, " << (r.contains("skipped") ? r["skipped"].size() : 0) << " skipped)\n";
  if (j["task"] == "swuggy" && r.contains("invocab"))
    os << "  in-vocab " << pct(r["invocab"]) << " over " << r["invocab_ids"].get<int64_t>() << " ids\n";
  os << "  by reduction:";
  for (auto it = j["by_reduction"].begin(); it != j["by_reduction"].end(); ++it)
    os << " " << it.key() << " " << pct(it.value()["score"]);
  os << "\n  longer clip wins: " << pct(j["longer_clip_wins"]["score"])
     << " (a length cue; near 50% is what you want)\n";
  return os.str();
}

}  // namespace mt::eval
