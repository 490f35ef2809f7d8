// Synthetic espeak-ng test sets (src/eval/synthetic_sets.h): official layouts, pairing, non-word rules,
// story manifests, wav format and determinism. Needs the espeak-ng binary; skipped without it.
#include "eval/synthetic_sets.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "util/error.h"
#include "util/prng.h"

namespace fs = std::filesystem;
using mt::eval::SyntheticOptions;

namespace {

// A fresh folder under the system temp dir, removed when the helper goes out of scope.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("mt_synthetic_sets_test_" + std::to_string(::getpid()) + "_" + tag);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

using Row = std::map<std::string, std::string>;

// Minimal CSV reader (quoted cells with "" escapes, no newlines inside cells).
std::vector<std::string> csv_cells(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool q = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (q) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cur += '"';
        ++i;
      } else if (c == '"') {
        q = false;
      } else {
        cur += c;
      }
    } else if (c == '"') {
      q = true;
    } else if (c == ',') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

// Returns the header line and the rows as column -> cell.
std::pair<std::string, std::vector<Row>> read_csv(const fs::path& p) {
  std::ifstream f(p);
  std::string header, line;
  std::getline(f, header);
  auto cols = csv_cells(header);
  std::vector<Row> rows;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    auto cells = csv_cells(line);
    EXPECT_EQ(cells.size(), cols.size()) << p << ": " << line;
    Row r;
    for (size_t i = 0; i < cols.size() && i < cells.size(); ++i) r[cols[i]] = cells[i];
    rows.push_back(r);
  }
  return {header, rows};
}

std::vector<std::string> split_ws(const std::string& s) {
  std::istringstream is(s);
  std::vector<std::string> r;
  std::string w;
  while (is >> w) r.push_back(w);
  return r;
}

uint32_t le(const std::string& d, size_t at, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(d[at + size_t(i)]);
  return v;
}

// A canonical 16-bit PCM mono wav at espeak-ng's 22,050 Hz (what the README promises), whole.
void expect_wav(const fs::path& p) {
  ASSERT_TRUE(fs::exists(p)) << p;
  std::string d = slurp(p);
  ASSERT_GT(d.size(), 44u) << p;
  EXPECT_EQ(d.substr(0, 4), "RIFF") << p;
  EXPECT_EQ(d.substr(8, 8), "WAVEfmt ") << p;
  EXPECT_EQ(le(d, 20, 2), 1u) << p << ": PCM";
  EXPECT_EQ(le(d, 22, 2), 1u) << p << ": channels";
  EXPECT_EQ(le(d, 24, 4), 22050u) << p << ": sample rate";
  EXPECT_EQ(le(d, 34, 2), 16u) << p << ": bits";
  EXPECT_EQ(d.substr(36, 4), "data") << p;
  EXPECT_EQ(le(d, 40, 4), d.size() - 44) << p << ": data size";
}

// All regular files under root (relative paths, sorted).
std::vector<std::string> listing(const fs::path& root) {
  std::vector<std::string> r;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) r.push_back(fs::relative(e.path(), root).string());
  std::sort(r.begin(), r.end());
  return r;
}

// The last sentence of a story text.
std::string last_sentence(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '.') t.pop_back();
  size_t k = t.rfind(". ");
  return k == std::string::npos ? text : text.substr(k + 2);
}

std::string context_part(const std::string& text) {
  std::string t = text;
  while (!t.empty() && t.back() == '.') t.pop_back();
  size_t k = t.rfind(". ");
  return k == std::string::npos ? "" : text.substr(0, k + 1);
}

SyntheticOptions small_options(uint64_t seed) {
  SyntheticOptions o;
  o.voices = {"en-us+m3", "en-us+f3"};
  o.lexical_words = 6;
  o.syntactic_pairs = 4;
  o.stories = 3;
  o.seed = seed;
  o.quiet = true;
  return o;
}

// Every (id, voice) has exactly one correct and one incorrect row; the official positional pairing
// (i-th correct row with i-th incorrect row) matches them up.
void check_pairing(const std::vector<Row>& rows, size_t n_voices, size_t n_ids) {
  std::map<std::pair<std::string, std::string>, std::pair<int, int>> counts;
  std::vector<const Row*> good, bad;
  for (const auto& r : rows) {
    auto& c = counts[{r.at("id"), r.at("voice")}];
    if (r.at("correct") == "1") {
      ++c.first;
      good.push_back(&r);
    } else {
      EXPECT_EQ(r.at("correct"), "0");
      ++c.second;
      bad.push_back(&r);
    }
  }
  EXPECT_EQ(counts.size(), n_voices * n_ids);
  for (const auto& [k, c] : counts) {
    EXPECT_EQ(c.first, 1) << "id " << k.first << " voice " << k.second;
    EXPECT_EQ(c.second, 1) << "id " << k.first << " voice " << k.second;
  }
  ASSERT_EQ(good.size(), bad.size());
  for (size_t i = 0; i < good.size(); ++i) {
    EXPECT_EQ(good[i]->at("id"), bad[i]->at("id"));
    EXPECT_EQ(good[i]->at("voice"), bad[i]->at("voice"));
  }
}

}  // namespace

TEST(SyntheticSets, SplitmixIdsAreLettersAndDeterministic) {
  mt::util::SplitMix64 a(42), b(42), c(43);
  std::string x = mt::eval::random_letters_id(a), y = mt::eval::random_letters_id(b),
              z = mt::eval::random_letters_id(c);
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
  EXPECT_NE(mt::eval::random_letters_id(a), x);  // the stream moves on
  ASSERT_EQ(x.size(), 11u);
  for (char ch : x) EXPECT_TRUE((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) << x;
  EXPECT_EQ(mt::eval::random_letters_id(a, 4).size(), 4u);
  // The sets draw from util/prng.h's generator: reference values of splitmix64 from state 0.
  mt::util::SplitMix64 s(0);
  EXPECT_EQ(s.next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(s.next(), 0x6E789E6AA1B965F4ull);
}

TEST(SyntheticSets, LayoutsPairsNonwordsStoriesAndDeterminism) {
  if (!mt::eval::espeak_available()) GTEST_SKIP() << "espeak-ng is not installed";
  TempDir tmp("main");
  const fs::path a = tmp.path / "a", b = tmp.path / "b", c = tmp.path / "c";
  const SyntheticOptions o = small_options(7);
  auto sum = mt::eval::make_synthetic_sets(a.string(), o);
  EXPECT_EQ(sum.lexical_files, 6 * 2 * 2);
  EXPECT_EQ(sum.syntactic_files, 4 * 2 * 2);
  EXPECT_EQ(sum.story_pairs, 3);
  EXPECT_TRUE(fs::exists(a / "README.md"));
  EXPECT_NE(slurp(a / "README.md").find("SYNTHETIC"), std::string::npos);
  EXPECT_NE(slurp(a / "README.md").find("seed = 7"), std::string::npos);
  EXPECT_FALSE(fs::exists(a / ".work"));

  // ---- lexical
  {
    const fs::path dir = a / "lexical" / "dev";
    auto [header, rows] = read_csv(dir / "gold.csv");
    EXPECT_EQ(header, "id,filename,voice,frequency,word,phones,length,correct");
    ASSERT_EQ(rows.size(), 24u);
    std::set<std::string> stems;
    for (const auto& r : rows) {
      EXPECT_EQ(r.at("filename").size(), 11u);
      EXPECT_TRUE(stems.insert(r.at("filename")).second) << "duplicate " << r.at("filename");
      expect_wav(dir / (r.at("filename") + ".wav"));
      EXPECT_EQ(std::to_string(split_ws(r.at("phones")).size()), r.at("length"));
    }
    EXPECT_EQ(listing(dir).size(), rows.size() + 1);  // the wavs and gold.csv, nothing else
    check_pairing(rows, 2, 6);
    // Non-words: same phoneme count as their word, exactly one phoneme different, not a real word's
    // phonemes, no spelling; the same non-word across voices.
    std::set<std::string> real;
    std::map<std::string, std::string> word_phones, nonword_phones;
    std::set<int> bands;
    for (const auto& r : rows) {
      if (r.at("correct") == "1") {
        EXPECT_FALSE(r.at("word").empty());
        real.insert(r.at("phones"));
        word_phones[r.at("id")] = r.at("phones");
        long f = std::stol(r.at("frequency"));
        bands.insert(f == 0 ? 0 : f < 5 ? 1 : f < 20 ? 2 : f < 100 ? 3 : 4);
      } else {
        EXPECT_TRUE(r.at("word").empty());
        auto [it, fresh] = nonword_phones.insert({r.at("id"), r.at("phones")});
        if (!fresh) {
          EXPECT_EQ(it->second, r.at("phones"));
        }
      }
    }
    EXPECT_EQ(bands.size(), 5u) << "every frequency band should appear";
    ASSERT_EQ(nonword_phones.size(), 6u);
    for (const auto& [id, nw] : nonword_phones) {
      EXPECT_EQ(real.count(nw), 0u) << "non-word " << nw << " is a real word's phonemes";
      auto w = split_ws(word_phones.at(id)), n = split_ws(nw);
      ASSERT_EQ(w.size(), n.size()) << word_phones.at(id) << " vs " << nw;
      int diff = 0;
      for (size_t i = 0; i < w.size(); ++i) diff += w[i] != n[i];
      EXPECT_EQ(diff, 1) << word_phones.at(id) << " vs " << nw;
    }
  }

  // ---- syntactic
  {
    const fs::path dir = a / "syntactic" / "dev";
    auto [header, rows] = read_csv(dir / "gold.csv");
    EXPECT_EQ(header, "id,filename,voice,type,subtype,correct,transcription");
    ASSERT_EQ(rows.size(), 16u);
    std::set<std::string> types;
    for (const auto& r : rows) {
      EXPECT_EQ(r.at("filename").size(), 11u);
      expect_wav(dir / (r.at("filename") + ".wav"));
      EXPECT_FALSE(r.at("subtype").empty());
      EXPECT_FALSE(r.at("transcription").empty());
      types.insert(r.at("type"));
    }
    EXPECT_EQ(types, (std::set<std::string>{"subject_verb_agreement", "determiner_noun_agreement", "anaphor_agreement",
                                            "irregular_forms"}));
    check_pairing(rows, 2, 4);
    for (size_t i = 0; i + 1 < rows.size(); i += 2) {
      EXPECT_NE(rows[i].at("transcription"), rows[i + 1].at("transcription"));
      EXPECT_EQ(rows[i].at("type"), rows[i + 1].at("type"));
    }
  }

  // ---- stories
  std::map<std::string, std::string> s_text, t_text;
  for (const char* set : {"sstory", "tstory"}) {
    const fs::path dir = a / set;
    auto [header, rows] = read_csv(dir / "manifest.csv");
    EXPECT_EQ(header, "id,positive,negative");
    ASSERT_EQ(rows.size(), 3u);
    for (const auto& r : rows) {
      expect_wav(dir / (r.at("positive") + ".wav"));
      expect_wav(dir / (r.at("negative") + ".wav"));
      EXPECT_EQ(r.at("positive"), r.at("id") + "_pos");
      EXPECT_EQ(r.at("negative"), r.at("id") + "_neg");
    }
    auto [th, trows] = read_csv(dir / "transcripts.csv");
    EXPECT_EQ(th, "filename,transcription");
    for (const auto& r : trows)
      (std::string(set) == "sstory" ? s_text : t_text)[r.at("filename")] = r.at("transcription");
  }
  for (int n = 0; n < 3; ++n) {
    const std::string pos = std::to_string(n) + "_pos", neg = std::to_string(n) + "_neg";
    // Same four context sentences; different endings.
    EXPECT_EQ(context_part(s_text.at(pos)), context_part(s_text.at(neg)));
    EXPECT_NE(last_sentence(s_text.at(pos)), last_sentence(s_text.at(neg)));
    EXPECT_EQ(t_text.at(pos), s_text.at(pos));
    EXPECT_EQ(context_part(t_text.at(neg)), context_part(t_text.at(pos)));
    // tstory: the wrong ending is the correct ending of another story.
    const std::string ending = last_sentence(t_text.at(neg));
    bool other = false;
    for (int m = 0; m < 3; ++m)
      if (m != n && last_sentence(s_text.at(std::to_string(m) + "_pos")) == ending) other = true;
    EXPECT_TRUE(other) << "tstory " << n << " negative ending '" << ending << "' is no other story's ending";
    EXPECT_NE(ending, last_sentence(t_text.at(pos)));
  }

  // ---- determinism: the same seed gives identical files; another seed different ids.
  mt::eval::make_synthetic_sets(b.string(), o);
  EXPECT_EQ(listing(a), listing(b));
  for (const auto& rel : listing(a)) EXPECT_EQ(slurp(a / rel), slurp(b / rel)) << rel;  // csv, README, wavs
  mt::eval::make_synthetic_sets(c.string(), small_options(8));
  auto [h1, r1] = read_csv(a / "lexical" / "dev" / "gold.csv");
  auto [h2, r2] = read_csv(c / "lexical" / "dev" / "gold.csv");
  std::set<std::string> f1, f2;
  for (const auto& r : r1) f1.insert(r.at("filename"));
  for (const auto& r : r2) f2.insert(r.at("filename"));
  EXPECT_NE(f1, f2);
  EXPECT_NE(slurp(a / "lexical" / "dev" / "gold.csv"), slurp(c / "lexical" / "dev" / "gold.csv"));

  // ---- rerunning into a folder this generator made replaces it; other non-empty folders are refused.
  mt::eval::make_synthetic_sets(b.string(), small_options(8));
  EXPECT_EQ(slurp(b / "lexical" / "dev" / "gold.csv"), slurp(c / "lexical" / "dev" / "gold.csv"));
  EXPECT_EQ(listing(b), listing(c));
  const fs::path foreign = tmp.path / "foreign";
  fs::create_directories(foreign);
  std::ofstream(foreign / "keep.txt") << "not ours\n";
  EXPECT_THROW(mt::eval::make_synthetic_sets(foreign.string(), o), mt::Error);
  EXPECT_TRUE(fs::exists(foreign / "keep.txt"));
}

TEST(SyntheticSets, BadOptionsAreRejected) {
  if (!mt::eval::espeak_available()) GTEST_SKIP() << "espeak-ng is not installed";
  TempDir tmp("bad");
  SyntheticOptions o = small_options(1);
  o.stories = 1;  // tstory needs another story's ending
  EXPECT_THROW(mt::eval::make_synthetic_sets((tmp.path / "x").string(), o), mt::Error);
  o = small_options(1);
  o.lexical_words = 100000;
  EXPECT_THROW(mt::eval::make_synthetic_sets((tmp.path / "y").string(), o), mt::Error);
  o = small_options(1);
  o.voices = {"en-us+no-such-variant"};  // espeak-ng itself would quietly use plain en-us
  EXPECT_THROW(mt::eval::make_synthetic_sets((tmp.path / "v").string(), o), mt::Error);
  // A failing espeak-ng: the error names the command line and its output. A stand-in espeak-ng early on
  // PATH fails every synthesis call (-w) and passes the other calls to the real one.
  const std::string real = [] {
    FILE* p = popen("command -v espeak-ng", "r");
    char buf[4096] = {0};
    size_t n = p ? fread(buf, 1, sizeof buf - 1, p) : 0;
    if (p) pclose(p);
    std::string s(buf, n);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
  }();
  ASSERT_FALSE(real.empty());
  const fs::path bin = tmp.path / "bin";
  fs::create_directories(bin);
  {
    std::ofstream f(bin / "espeak-ng");
    f << "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -w ] && { echo 'stand-in synthesis failure' >&2; exit 3; "
         "}; done\n"
      << "exec '" << real << "' \"$@\"\n";
  }
  fs::permissions(bin / "espeak-ng", fs::perms::owner_all, fs::perm_options::add);
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path ? old_path : "";
  ::setenv("PATH", (bin.string() + ":" + saved).c_str(), 1);
  o = small_options(1);
  o.syntactic_pairs = 0;
  o.stories = 0;
  std::string msg;
  try {
    mt::eval::make_synthetic_sets((tmp.path / "z").string(), o);
  } catch (const mt::Error& e) {
    msg = e.what();
  }
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_NE(msg.find("espeak-ng -v 'en-us+m3' -s 160 -w"), std::string::npos) << msg;  // the command line
  EXPECT_NE(msg.find("stand-in synthesis failure"), std::string::npos) << msg;         // and its output

  // No espeak-ng at all: a clear error that says how to install it.
  const fs::path empty_bin = tmp.path / "empty_bin";
  fs::create_directories(empty_bin);
  ::setenv("PATH", empty_bin.string().c_str(), 1);
  const bool available = mt::eval::espeak_available();
  msg.clear();
  try {
    mt::eval::make_synthetic_sets((tmp.path / "w").string(), small_options(1));
  } catch (const mt::Error& e) {
    msg = e.what();
  }
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_FALSE(available);
  EXPECT_NE(msg.find("install"), std::string::npos) << msg;
  EXPECT_NE(msg.find("espeak-ng"), std::string::npos) << msg;
}
