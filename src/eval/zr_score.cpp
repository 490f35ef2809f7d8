#include "eval/zr_score.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <unordered_set>
#include <utility>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/prng.h"

namespace mt::eval {

namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------
// Files

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MT_CHECK(f.good(), path, ": cannot open for reading: ", std::strerror(errno));
  std::ostringstream os;
  os << f.rdbuf();
  MT_CHECK(!f.bad(), path, ": read failed");
  return os.str();
}

// ---------------------------------------------------------------------------------------------------
// CSV (RFC 4180 as pandas reads it: quoted fields may hold commas, newlines and doubled quotes; LF or CRLF;
// a UTF-8 byte order mark and blank lines are skipped; a quote inside an unquoted field is kept literally).

struct Csv {
  std::string path;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<int64_t> lines;  // the line each row starts on (1-based, header = line 1 usually)

  std::optional<size_t> find(const std::string& name) const {
    for (size_t i = 0; i < header.size(); ++i)
      if (header[i] == name) return i;
    return std::nullopt;
  }
  size_t col(const std::string& name) const {
    auto i = find(name);
    if (!i) {
      std::string h;
      for (size_t k = 0; k < header.size(); ++k) h += (k ? "," : "") + header[k];
      fail(path, ": missing required column '", name, "' (header: ", h, ")");
    }
    return *i;
  }
  [[noreturn]] void bad(size_t r, size_t c, const std::string& what) const {
    fail(path, ":", lines[r], ": column '", header[c], "': ", what);
  }
};

Csv read_csv(const std::string& path) {
  const std::string text = read_text(path);
  Csv t;
  t.path = path;
  const size_t n = text.size();
  size_t i = (n >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) ? 3 : 0;
  int64_t line = 1;
  bool have_header = false;
  while (i < n) {
    const int64_t start_line = line;
    std::vector<std::string> rec;
    bool any_quoted = false;
    for (;;) {
      std::string field;
      if (i < n && text[i] == '"') {
        any_quoted = true;
        const int64_t qline = line;
        ++i;
        for (;;) {
          if (i >= n) fail(path, ":", qline, ": column ", rec.size() + 1, ": unterminated quoted field");
          char c = text[i++];
          if (c == '"') {
            if (i < n && text[i] == '"') {
              field += '"';
              ++i;
            } else {
              break;
            }
          } else {
            if (c == '\n') ++line;
            field += c;
          }
        }
        if (i < n && text[i] != ',' && text[i] != '\n' && text[i] != '\r')
          fail(path, ":", line, ": column ", rec.size() + 1, ": unexpected character '", text[i],
               "' after a closing quote");
      } else {
        while (i < n && text[i] != ',' && text[i] != '\n' && text[i] != '\r') field += text[i++];
      }
      rec.push_back(std::move(field));
      if (i >= n) break;
      if (text[i] == ',') {
        ++i;
        continue;
      }
      if (text[i] == '\r') ++i;
      if (i < n && text[i] == '\n') ++i;
      ++line;
      break;
    }
    if (rec.size() == 1 && rec[0].empty() && !any_quoted) continue;  // blank line
    if (!have_header) {
      t.header = std::move(rec);
      have_header = true;
      std::unordered_set<std::string> seen;
      for (const auto& h : t.header)
        MT_CHECK(seen.insert(h).second, path, ":", start_line, ": column '", h, "' appears twice in the header");
      continue;
    }
    MT_CHECK(rec.size() == t.header.size(), path, ":", start_line, ": ", rec.size(), " fields, the header has ",
             t.header.size());
    t.rows.push_back(std::move(rec));
    t.lines.push_back(start_line);
  }
  MT_CHECK(have_header, path, ": empty file (no header)");
  return t;
}

// CSV output field, quoted only when needed (as Python's csv.QUOTE_MINIMAL).
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q += '"';
    q += c;
  }
  return q + '"';
}

// %.4f, NaN as an empty cell (pandas to_csv(float_format='%.4f') with its default na_rep).
std::string f4(double v) {
  if (std::isnan(v)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

bool is_na(const std::string& v) {
  if (v.empty()) return true;
  std::string l;
  for (char c : v) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return l == "nan" || l == "na" || l == "<na>" || l == "null";
}

// A strict integer; an integral decimal such as "12.0" (what pandas writes for an integer column holding NaN)
// is accepted too.
std::optional<int64_t> parse_int(const std::string& v) {
  int64_t x = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), x);
  if (r.ec == std::errc() && r.ptr == v.data() + v.size() && !v.empty()) return x;
  double d = 0;
  auto rd = std::from_chars(v.data(), v.data() + v.size(), d, std::chars_format::fixed);
  if (rd.ec == std::errc() && rd.ptr == v.data() + v.size() && !v.empty() && std::isfinite(d) && d == std::floor(d) &&
      std::fabs(d) < 9.0e15)
    return static_cast<int64_t>(d);
  return std::nullopt;
}

int64_t cell_int(const Csv& t, size_t r, size_t c) {
  const std::string& v = t.rows[r][c];
  auto x = parse_int(v);
  if (!x) t.bad(r, c, mt::str("'", v, "' is not an integer"));
  return *x;
}

int cell_correct(const Csv& t, size_t r, size_t c) {
  const std::string& v = t.rows[r][c];
  auto x = parse_int(v);
  if (!x || (*x != 0 && *x != 1)) t.bad(r, c, mt::str("'", v, "' must be 0 or 1"));
  return static_cast<int>(*x);
}

std::string cell_nonempty(const Csv& t, size_t r, size_t c) {
  const std::string& v = t.rows[r][c];
  if (v.empty()) t.bad(r, c, "empty");
  return v;
}

// Python float(): optional sign, decimal or exponent form, nan / inf / infinity in any case.
std::optional<double> parse_float(std::string v) {
  if (v.empty()) return std::nullopt;
  if (v[0] == '+') {
    v.erase(0, 1);
    if (v.empty() || v[0] == '-' || v[0] == '+') return std::nullopt;
  }
  double d = 0;
  auto r = std::from_chars(v.data(), v.data() + v.size(), d);
  if (r.ec == std::errc::result_out_of_range && r.ptr == v.data() + v.size())
    return std::strtod(v.c_str(), nullptr);  // as Python: overflow gives +-inf, underflow 0 (or a subnormal)
  if (r.ec != std::errc() || r.ptr != v.data() + v.size()) return std::nullopt;
  return d;
}

// ---------------------------------------------------------------------------------------------------
// Ordering: pandas sorts integer ids numerically, strings lexically. Integers come before other strings.

bool natural_less(const std::string& a, const std::string& b) {
  int64_t x = 0, y = 0;
  auto ra = std::from_chars(a.data(), a.data() + a.size(), x);
  auto rb = std::from_chars(b.data(), b.data() + b.size(), y);
  bool ia = !a.empty() && ra.ec == std::errc() && ra.ptr == a.data() + a.size();
  bool ib = !b.empty() && rb.ec == std::errc() && rb.ptr == b.data() + b.size();
  if (ia && ib) return x != y ? x < y : a < b;
  if (ia != ib) return ia;
  return a < b;
}

// ---------------------------------------------------------------------------------------------------
// Statistics

BandRow band(const std::string& label, const std::vector<double>& v) {
  BandRow b;
  b.label = label;
  b.n = static_cast<int64_t>(v.size());
  if (v.empty()) return b;
  double sum = 0;
  for (double x : v) sum += x;
  b.score = sum / static_cast<double>(v.size());
  if (v.size() >= 2) {
    double ss = 0;
    for (double x : v) ss += (x - b.score) * (x - b.score);
    b.std = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return b;
}

double mean(const std::vector<double>& v) {
  if (v.empty()) return NAN;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

// An index in [0, n) from the shared splitmix64 stream: the high 64 bits of next() * n (bias below
// n / 2^64, negligible here).
size_t draw_index(util::SplitMix64& rng, size_t n) {
  return static_cast<size_t>((static_cast<unsigned __int128>(rng.next()) * n) >> 64);
}

// 95% percentile-bootstrap interval of the mean of x, resampling its elements with replacement.
Interval bootstrap_ci(const std::vector<double>& x, int reps, uint64_t seed) {
  Interval ci;
  if (reps <= 0 || x.empty()) return ci;
  util::SplitMix64 rng(seed);
  std::vector<double> means(static_cast<size_t>(reps));
  const size_t n = x.size();
  for (auto& m : means) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += x[draw_index(rng, n)];
    m = s / static_cast<double>(n);
  }
  std::sort(means.begin(), means.end());
  ci.lo = sorted_percentile(means, 0.025);
  ci.hi = sorted_percentile(means, 0.975);
  return ci;
}

// ---------------------------------------------------------------------------------------------------
// The shared pair engine

struct Member {
  std::string stem, desc;  // desc: how a skip line names the row, e.g. "gold line 12; id 3, voice v1, word"
};

struct Candidate {
  size_t group;  // index into the groups
  std::string voice;
  Member pos, neg;
};

struct Group {
  std::string id, type, subtype, a, b;
  int64_t frequency = 0, length = 0;
  std::vector<double> scores;  // pair scores over voices
  bool labelled = false;
};

// Why a stem cannot be scored ("" if it can).
std::string score_problem(const ItemScores& s, const std::string& stem, double* out) {
  auto it = s.find(stem);
  if (it == s.end()) return "no score";
  if (std::isnan(it->second)) return "score is NaN";
  *out = it->second;
  return "";
}

// Scores the candidates into their groups; fills pairs, ties, skipped, by_voice. label(g, c) is called for the
// first scored pair of each group (the official code takes the labels of a group's first row).
template <class Label>
void run_pairs(PairedResult& r, std::vector<Group>& groups, const std::vector<Candidate>& cands, const ItemScores& s,
               Label label) {
  std::map<std::string, std::vector<double>> by_voice;
  for (size_t k = 0; k < cands.size(); ++k) {
    const Candidate& c = cands[k];
    double sp = 0, sn = 0;
    std::string pp = score_problem(s, c.pos.stem, &sp), pn = score_problem(s, c.neg.stem, &sn);
    if (!pp.empty() || !pn.empty()) {
      r.skipped.push_back(mt::str(c.pos.stem, " (", c.pos.desc,
                                  "): ", pp.empty() ? mt::str("partner ", c.neg.stem, " not scored (", pn, ")") : pp));
      r.skipped.push_back(mt::str(c.neg.stem, " (", c.neg.desc,
                                  "): ", pn.empty() ? mt::str("partner ", c.pos.stem, " not scored (", pp, ")") : pn));
      continue;
    }
    const double v = sp > sn ? 1.0 : (sp == sn ? 0.5 : 0.0);
    r.pairs += 1;
    r.ties += sp == sn;
    Group& g = groups[c.group];
    if (!g.labelled) {
      label(g, k);
      g.labelled = true;
    }
    g.scores.push_back(v);
    if (!c.voice.empty()) by_voice[c.voice].push_back(v);
  }
  for (const auto& [voice, v] : by_voice) r.by_voice.push_back(band(voice, v));
}

// Collects the unused-score count: stems in s that no gold row names.
int64_t count_unused(const ItemScores& s, const std::unordered_set<std::string>& named) {
  int64_t n = 0;
  for (const auto& [stem, v] : s) n += !named.count(stem);
  return n;
}

std::string stem_of(const std::string& filename) {
  std::string f = fs::path(filename).filename().string();
  if (f.size() > 4) {
    std::string ext = f.substr(f.size() - 4);
    for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (ext == ".wav") f.resize(f.size() - 4);
  }
  return f;
}

std::string where(int64_t line) { return line > 0 ? mt::str("gold line ", line, "; ") : std::string(); }

const char* kBands[] = {"oov", "1-5", "6-20", "21-100", ">100"};

void check_bootstrap(int bootstrap) { MT_CHECK(bootstrap >= 0, "bootstrap resamples must be >= 0, got ", bootstrap); }

nlohmann::json num(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

nlohmann::json interval_json(const Interval& i) { return {{"lo", num(i.lo)}, {"hi", num(i.hi)}}; }

nlohmann::json bands_json(const std::vector<BandRow>& rows) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& b : rows)
    a.push_back({{"label", b.label}, {"n", b.n}, {"score", num(b.score)}, {"std", num(b.std)}});
  return a;
}

std::string bands_csv(const std::string& first, const std::vector<BandRow>& rows) {
  std::string out = first + ",n,score,std\n";
  for (const auto& b : rows) out += mt::str(csv_field(b.label), ",", b.n, ",", f4(b.score), ",", f4(b.std), "\n");
  return out;
}

std::string pairs_csv(const std::string& a, const std::string& b, const std::vector<PairRow>& rows) {
  std::string out = a + "," + b + ",score\n";
  for (const auto& p : rows) out += mt::str(csv_field(p.a), ",", csv_field(p.b), ",", f4(p.score), "\n");
  return out;
}

}  // namespace

// -------------------------------------------------------------------------------------------------------

std::string frequency_band(int64_t f) {
  MT_CHECK(f >= 0, "frequency must be >= 0, got ", f);
  if (f < 1) return kBands[0];
  if (f < 5) return kBands[1];
  if (f < 20) return kBands[2];
  if (f < 100) return kBands[3];
  return kBands[4];
}

nlohmann::json PairedResult::to_json() const {
  nlohmann::json j;
  j["task"] = task;
  j["score"] = num(score);
  j["ci"] = interval_json(ci);
  j["bootstrap"] = bootstrap;
  j["seed"] = seed;
  j["ids"] = ids;
  j["pairs"] = pairs;
  j["ties"] = ties;
  j["skipped"] = skipped;
  j["unused_scores"] = unused_scores;
  j["invocab"] = num(invocab);
  j["invocab_ci"] = interval_json(invocab_ci);
  j["invocab_ids"] = invocab_ids;
  j["by_frequency"] = bands_json(by_frequency);
  j["by_length"] = bands_json(by_length);
  j["by_type"] = bands_json(by_type);
  j["by_voice"] = bands_json(by_voice);
  j["by_pair"] = by_pair.size();
  return j;
}

std::vector<LexicalGold> read_lexical_gold(const std::string& path) {
  Csv t = read_csv(path);
  const size_t cid = t.col("id"), cfile = t.col("filename"), cvoice = t.col("voice"), cfreq = t.col("frequency"),
               cword = t.col("word"), clen = t.col("length"), ccorrect = t.col("correct");
  const std::optional<size_t> cphones = t.find("phones");
  std::vector<LexicalGold> out;
  out.reserve(t.rows.size());
  for (size_t r = 0; r < t.rows.size(); ++r) {
    LexicalGold g;
    g.line = t.lines[r];
    g.id = cell_nonempty(t, r, cid);
    g.filename = cell_nonempty(t, r, cfile);
    g.voice = t.rows[r][cvoice];
    g.word = t.rows[r][cword];
    if (cphones) g.phones = t.rows[r][*cphones];
    g.correct = cell_correct(t, r, ccorrect);
    // The official gold leaves frequency (NaN) empty on non-word rows; the word rows must have both numbers.
    if (g.correct == 0 && is_na(t.rows[r][cfreq])) {
      g.frequency = 0;
    } else {
      g.frequency = cell_int(t, r, cfreq);
      if (g.frequency < 0) t.bad(r, cfreq, mt::str("negative frequency ", g.frequency));
    }
    g.length = (g.correct == 0 && is_na(t.rows[r][clen])) ? 0 : cell_int(t, r, clen);
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<SyntacticGold> read_syntactic_gold(const std::string& path) {
  Csv t = read_csv(path);
  const size_t cid = t.col("id"), cfile = t.col("filename"), cvoice = t.col("voice"), ctype = t.col("type"),
               csub = t.col("subtype"), ccorrect = t.col("correct");
  const std::optional<size_t> ctr = t.find("transcription");
  std::vector<SyntacticGold> out;
  out.reserve(t.rows.size());
  for (size_t r = 0; r < t.rows.size(); ++r) {
    SyntacticGold g;
    g.line = t.lines[r];
    g.id = cell_nonempty(t, r, cid);
    g.filename = cell_nonempty(t, r, cfile);
    g.voice = t.rows[r][cvoice];
    g.type = t.rows[r][ctype];
    g.subtype = t.rows[r][csub];
    if (ctr) g.transcription = t.rows[r][*ctr];
    g.correct = cell_correct(t, r, ccorrect);
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<StoryPair> read_story_pairs(const std::string& dir) {
  MT_CHECK(fs::is_directory(dir), dir, ": not a folder");
  const fs::path manifest = fs::path(dir) / "manifest.csv";
  std::vector<StoryPair> out;
  if (fs::exists(manifest)) {
    Csv t = read_csv(manifest.string());
    const size_t cid = t.col("id"), cpos = t.col("positive"), cneg = t.col("negative");
    std::unordered_set<std::string> ids;
    for (size_t r = 0; r < t.rows.size(); ++r) {
      StoryPair p{cell_nonempty(t, r, cid), stem_of(cell_nonempty(t, r, cpos)), stem_of(cell_nonempty(t, r, cneg))};
      if (!ids.insert(p.id).second) t.bad(r, cid, mt::str("duplicate id '", p.id, "'"));
      if (p.positive == p.negative) t.bad(r, cneg, mt::str("the negative is the positive ('", p.positive, "')"));
      out.push_back(std::move(p));
    }
    MT_CHECK(!out.empty(), manifest.string(), ": no pairs");
    return out;
  }
  // Official flat layout (slamkit's reader): <int>_<suffix>.wav, sorted by the integer prefix; files 2k and
  // 2k+1 form pair k, the first (2k) being the positive (correct) story, the second the negative.
  std::vector<std::pair<uint64_t, std::string>> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    const std::string stem = stem_of(name);
    if (stem == name) continue;  // not a .wav
    const size_t us = stem.find('_');
    const std::string prefix = us == std::string::npos ? std::string() : stem.substr(0, us);
    uint64_t k = 0;
    auto r = std::from_chars(prefix.data(), prefix.data() + prefix.size(), k);
    MT_CHECK(!prefix.empty() && r.ec == std::errc() && r.ptr == prefix.data() + prefix.size(),
             (fs::path(dir) / name).string(),
             ": StoryCloze file names must be <int>_<suffix>.wav (or give the folder a manifest.csv with columns "
             "id,positive,negative)");
    files.emplace_back(k, name);
  }
  MT_CHECK(!files.empty(), dir, ": no .wav files and no manifest.csv");
  std::sort(files.begin(), files.end());
  for (size_t i = 1; i < files.size(); ++i)
    MT_CHECK(files[i].first != files[i - 1].first, (fs::path(dir) / files[i].second).string(),
             ": same integer prefix as ", files[i - 1].second, "; the pair order would be ambiguous");
  MT_CHECK(files.size() % 2 == 0, (fs::path(dir) / files.back().second).string(), ": has no partner (", files.size(),
           " wav files, an odd count)");
  for (size_t i = 0; i < files.size(); i += 2)
    out.push_back({std::to_string(i / 2), stem_of(files[i].second), stem_of(files[i + 1].second)});
  return out;
}

PairedResult score_lexical(const std::vector<LexicalGold>& gold, const ItemScores& s, int bootstrap, uint64_t seed) {
  check_bootstrap(bootstrap);
  PairedResult r;
  r.task = "lexical";
  r.bootstrap = bootstrap;
  r.seed = seed;
  // The official code (lexical.load_data) pairs the i-th word row with the i-th non-word row by position;
  // here word and non-word rows are joined on (id, voice), which gives the same pairs on a well-formed gold
  // and does not silently mismatch on a reordered one.
  // If every non-word row's `word` is empty, the non-word is labelled by its `phones`.
  bool nonword_words_empty = true;
  for (const auto& g : gold)
    if (g.correct == 0 && !g.word.empty()) nonword_words_empty = false;

  std::unordered_set<std::string> named;
  std::unordered_map<std::string, size_t> key_index;  // (id, voice) -> slot
  std::vector<std::pair<int64_t, int64_t>> slots;     // word row, non-word row (-1: none)
  for (size_t i = 0; i < gold.size(); ++i) {
    const LexicalGold& g = gold[i];
    const std::string stem = stem_of(g.filename);
    MT_CHECK(named.insert(stem).second, "lexical gold: file '", g.filename, "' appears twice (", where(g.line), "id ",
             g.id, ")");
    MT_CHECK(g.correct == 0 || g.correct == 1, "lexical gold: ", where(g.line), "correct must be 0 or 1");
    const std::string key = g.id + '\x1f' + g.voice;
    auto [it, fresh] = key_index.emplace(key, slots.size());
    if (fresh) slots.emplace_back(-1, -1);
    int64_t& slot = g.correct ? slots[it->second].first : slots[it->second].second;
    MT_CHECK(slot < 0, "lexical gold: two ", g.correct ? "words" : "non-words", " for id ", g.id, ", voice ", g.voice,
             ": ", gold[slot].filename, " (", where(gold[slot].line), ") and ", g.filename, " (", where(g.line), ")");
    slot = static_cast<int64_t>(i);
  }
  auto desc = [&](const LexicalGold& g) {
    return mt::str(where(g.line), "id ", g.id, ", voice ", g.voice, g.correct ? ", word" : ", non-word");
  };

  std::vector<Group> groups;
  std::unordered_map<std::string, size_t> group_of;
  std::vector<Candidate> cands;
  std::vector<std::pair<size_t, size_t>> cand_rows;
  for (const auto& [w, nw] : slots) {
    if (w < 0 || nw < 0) {
      const LexicalGold& g = gold[w >= 0 ? w : nw];
      r.skipped.push_back(mt::str(stem_of(g.filename), " (", desc(g), "): no ", w >= 0 ? "non-word" : "word",
                                  " with the same id and voice"));
      continue;
    }
    const LexicalGold& gw = gold[w];
    auto [it, fresh] = group_of.emplace(gw.id, groups.size());
    if (fresh) {
      groups.emplace_back();
      groups.back().id = gw.id;
    }
    cands.push_back(
        {it->second, gw.voice, {stem_of(gw.filename), desc(gw)}, {stem_of(gold[nw].filename), desc(gold[nw])}});
    cand_rows.emplace_back(w, nw);
  }
  run_pairs(r, groups, cands, s, [&](Group& g, size_t k) {
    const LexicalGold& gw = gold[cand_rows[k].first];
    const LexicalGold& gn = gold[cand_rows[k].second];
    g.a = gw.word;
    g.b = nonword_words_empty ? gn.phones : gn.word;
    g.frequency = gw.frequency;
    g.length = gw.length;
  });
  r.unused_scores = count_unused(s, named);

  std::vector<const Group*> done;
  for (const auto& g : groups)
    if (!g.scores.empty()) done.push_back(&g);
  std::sort(done.begin(), done.end(), [](const Group* a, const Group* b) { return natural_less(a->id, b->id); });

  std::vector<double> all, invocab;
  std::map<std::string, std::vector<double>> bands;
  std::map<int64_t, std::vector<double>> lengths;
  for (const Group* g : done) {
    const double v = mean(g->scores);
    r.by_pair.push_back({g->a, g->b, v, g->id, "", ""});
    all.push_back(v);
    const std::string b = frequency_band(g->frequency);
    bands[b].push_back(v);
    if (g->frequency >= 1) invocab.push_back(v);
    lengths[g->length].push_back(v);
  }
  r.ids = static_cast<int64_t>(all.size());
  r.score = mean(all);
  r.ci = bootstrap_ci(all, bootstrap, seed);
  r.invocab_ids = static_cast<int64_t>(invocab.size());
  r.invocab = mean(invocab);
  r.invocab_ci = bootstrap_ci(invocab, bootstrap, seed);
  // Every band, even an empty one (n 0, NaN), as pandas' groupby over a categorical.
  for (const char* b : kBands) r.by_frequency.push_back(band(b, bands[b]));
  for (const auto& [len, v] : lengths) r.by_length.push_back(band(std::to_string(len), v));
  return r;
}

PairedResult score_syntactic(const std::vector<SyntacticGold>& gold, const ItemScores& s, int bootstrap,
                             uint64_t seed) {
  check_bootstrap(bootstrap);
  PairedResult r;
  r.task = "syntactic";
  r.bootstrap = bootstrap;
  r.seed = seed;
  // The official code (syntactic.load_data) pairs the i-th correct==1 row with the i-th correct==0 row by
  // position and never compares their ids. Here the two rows are joined on (id, voice, type, subtype), which
  // gives the same pairs when gold.csv is well formed (its rows come in matching order) and does not
  // silently mismatch when it is not. Voices are then averaged within (type, subtype, id), as officially.
  std::unordered_set<std::string> named;
  std::unordered_map<std::string, size_t> key_index;
  std::vector<std::pair<int64_t, int64_t>> slots;  // grammatical row, ungrammatical row
  for (size_t i = 0; i < gold.size(); ++i) {
    const SyntacticGold& g = gold[i];
    const std::string stem = stem_of(g.filename);
    MT_CHECK(named.insert(stem).second, "syntactic gold: file '", g.filename, "' appears twice (", where(g.line), "id ",
             g.id, ")");
    MT_CHECK(g.correct == 0 || g.correct == 1, "syntactic gold: ", where(g.line), "correct must be 0 or 1");
    const std::string key = g.id + '\x1f' + g.voice + '\x1f' + g.type + '\x1f' + g.subtype;
    auto [it, fresh] = key_index.emplace(key, slots.size());
    if (fresh) slots.emplace_back(-1, -1);
    int64_t& slot = g.correct ? slots[it->second].first : slots[it->second].second;
    MT_CHECK(slot < 0, "syntactic gold: two ", g.correct ? "grammatical" : "ungrammatical", " rows for id ", g.id,
             ", voice ", g.voice, ", type ", g.type, ", subtype ", g.subtype, ": ", gold[slot].filename, " (",
             where(gold[slot].line), ") and ", g.filename, " (", where(g.line), ")");
    slot = static_cast<int64_t>(i);
  }
  auto desc = [&](const SyntacticGold& g) {
    return mt::str(where(g.line), "id ", g.id, ", voice ", g.voice, ", ", g.type, "/", g.subtype,
                   g.correct ? ", grammatical" : ", ungrammatical");
  };

  std::vector<Group> groups;
  std::unordered_map<std::string, size_t> group_of;
  std::vector<Candidate> cands;
  std::vector<std::pair<size_t, size_t>> cand_rows;
  for (const auto& [c, nc] : slots) {
    if (c < 0 || nc < 0) {
      const SyntacticGold& g = gold[c >= 0 ? c : nc];
      r.skipped.push_back(mt::str(stem_of(g.filename), " (", desc(g), "): no ",
                                  c >= 0 ? "ungrammatical" : "grammatical",
                                  " row with the same id, voice, type and subtype"));
      continue;
    }
    const SyntacticGold& gc = gold[c];
    auto [it, fresh] = group_of.emplace(gc.type + '\x1f' + gc.subtype + '\x1f' + gc.id, groups.size());
    if (fresh) {
      groups.emplace_back();
      groups.back().id = gc.id;
      groups.back().type = gc.type;
      groups.back().subtype = gc.subtype;
    }
    cands.push_back(
        {it->second, gc.voice, {stem_of(gc.filename), desc(gc)}, {stem_of(gold[nc].filename), desc(gold[nc])}});
    cand_rows.emplace_back(c, nc);
  }
  run_pairs(r, groups, cands, s, [&](Group& g, size_t k) {
    const SyntacticGold& gc = gold[cand_rows[k].first];
    const SyntacticGold& gn = gold[cand_rows[k].second];
    const bool have_text = !gc.transcription.empty() && !gn.transcription.empty();
    g.a = have_text ? gc.transcription : gc.filename;
    g.b = have_text ? gn.transcription : gn.filename;
  });
  r.unused_scores = count_unused(s, named);

  std::vector<const Group*> done;
  for (const auto& g : groups)
    if (!g.scores.empty()) done.push_back(&g);
  std::sort(done.begin(), done.end(), [](const Group* a, const Group* b) {
    if (a->type != b->type) return a->type < b->type;
    if (a->subtype != b->subtype) return a->subtype < b->subtype;
    return natural_less(a->id, b->id);
  });
  std::vector<double> all;
  std::map<std::string, std::vector<double>> types;
  for (const Group* g : done) {
    const double v = mean(g->scores);
    r.by_pair.push_back({g->a, g->b, v, g->id, g->type, g->subtype});
    all.push_back(v);
    types[g->type].push_back(v);
  }
  r.ids = static_cast<int64_t>(all.size());
  r.score = mean(all);
  r.ci = bootstrap_ci(all, bootstrap, seed);
  for (const auto& [type, v] : types) r.by_type.push_back(band(type, v));
  return r;
}

PairedResult score_story(const std::string& task, const std::vector<StoryPair>& pairs, const ItemScores& s,
                         int bootstrap, uint64_t seed) {
  check_bootstrap(bootstrap);
  auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; };
  MT_CHECK(!task.empty() && std::all_of(task.begin(), task.end(), name_char),
           "story task name must be letters, digits, '_' or '-' (e.g. sstory, tstory), got '", task, "'");
  PairedResult r;
  r.task = task;
  r.bootstrap = bootstrap;
  r.seed = seed;
  std::unordered_set<std::string> named, ids;
  std::vector<Group> groups;
  std::vector<Candidate> cands;
  for (const auto& p : pairs) {
    MT_CHECK(ids.insert(p.id).second, task, ": pair id '", p.id, "' appears twice");
    MT_CHECK(!p.positive.empty() && !p.negative.empty() && p.positive != p.negative, task, ": pair ", p.id,
             ": positive and negative must be two different files");
    named.insert(p.positive);
    named.insert(p.negative);
    groups.emplace_back();
    groups.back().id = p.id;
    cands.push_back({groups.size() - 1,
                     "",
                     {p.positive, mt::str("pair ", p.id, ", positive")},
                     {p.negative, mt::str("pair ", p.id, ", negative")}});
  }
  run_pairs(r, groups, cands, s, [&](Group& g, size_t k) {
    g.a = cands[k].pos.stem;
    g.b = cands[k].neg.stem;
  });
  r.unused_scores = count_unused(s, named);
  std::vector<double> all;
  for (const auto& g : groups) {  // pair order, as given
    if (g.scores.empty()) continue;
    const double v = mean(g.scores);
    r.by_pair.push_back({g.a, g.b, v, g.id, "", ""});
    all.push_back(v);
  }
  r.ids = static_cast<int64_t>(all.size());
  r.score = mean(all);
  r.ci = bootstrap_ci(all, bootstrap, seed);
  return r;
}

void write_score_files(const PairedResult& r, const std::string& out_dir, const std::string& split) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  MT_CHECK(fs::is_directory(out_dir), out_dir, ": cannot create the folder: ", ec.message());
  const fs::path d(out_dir);
  if (r.task == "lexical") {
    const std::string base = "score_lexical_" + split;
    atomic_write((d / (base + "_by_pair.csv")).string(), pairs_csv("word", "non word", r.by_pair));
    atomic_write((d / (base + "_by_frequency.csv")).string(), bands_csv("frequency", r.by_frequency));
    atomic_write((d / (base + "_by_length.csv")).string(), bands_csv("length", r.by_length));
  } else if (r.task == "syntactic") {
    const std::string base = "score_syntactic_" + split;
    atomic_write((d / (base + "_by_pair.csv")).string(), pairs_csv("sentence", "non sentence", r.by_pair));
    atomic_write((d / (base + "_by_type.csv")).string(), bands_csv("type", r.by_type));
  } else {
    MT_CHECK(!r.task.empty() && r.task.find('/') == std::string::npos, "write_score_files: bad task name '", r.task,
             "'");
    atomic_write((d / ("score_" + r.task + "_by_pair.csv")).string(), pairs_csv("positive", "negative", r.by_pair));
  }
}

void write_submission(const ItemScores& s, const std::string& path) {
  std::vector<std::pair<std::string, double>> items(s.begin(), s.end());
  std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string out;
  out.reserve(items.size() * 32);
  for (const auto& [stem, v] : items) {
    MT_CHECK(!stem.empty() && stem.find_first_of(" \t\r\n") == std::string::npos, path, ": stem '", stem,
             "' is empty or holds whitespace");
    char buf[64];
    if (std::isnan(v)) {
      out += stem + " nan\n";
      continue;
    }
    auto res = std::to_chars(buf, buf + sizeof buf, v);  // shortest text that reads back to the same double
    MT_CHECK(res.ec == std::errc(), path, ": cannot format the score of ", stem);
    out += stem;
    out += ' ';
    out.append(buf, res.ptr);
    out += '\n';
  }
  atomic_write(path, out);
}

ItemScores read_submission(const std::string& path) {
  const std::string text = read_text(path);
  ItemScores out;
  std::unordered_map<std::string, int64_t> line_of;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string l = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    ++line;
    // As the official validator: strip surrounding whitespace, then exactly "<stem> <score>".
    const size_t b = l.find_first_not_of(" \t\r\f\v");
    const size_t e = l.find_last_not_of(" \t\r\f\v");
    l = b == std::string::npos ? std::string() : l.substr(b, e - b + 1);
    const size_t sp = l.find(' ');
    MT_CHECK(!l.empty() && sp != std::string::npos && sp > 0 && l.find(' ', sp + 1) == std::string::npos &&
                 sp + 1 < l.size(),
             path, ":", line, ": must be \"<stem> <score>\" (one space), got \"", l, "\"");
    const std::string stem = l.substr(0, sp), score = l.substr(sp + 1);
    auto v = parse_float(score);
    MT_CHECK(v.has_value(), path, ":", line, ": score of ", stem, " is not a float: \"", score, "\"");
    auto [it, fresh] = line_of.emplace(stem, line);
    MT_CHECK(fresh, path, ":", line, ": ", stem, " appears twice (first on line ", it->second, ")");
    out.emplace(stem, *v);
  }
  return out;
}

double sorted_percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return NAN;
  double pos = q * static_cast<double>(sorted.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace mt::eval
