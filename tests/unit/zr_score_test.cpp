// Paired-benchmark scoring (eval/zr_score): the ZR2021 lexical / syntactic rules, bands, score files, StoryCloze
// pairs, submissions and the bootstrap, on hand-made gold files with hand-computed expectations.
// Deliberately free of ATen (no test_util.h) so it also builds standalone with the library source.
#include "eval/zr_score.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "util/error.h"

namespace {

namespace fs = std::filesystem;
using namespace mt::eval;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A fresh temporary folder, removed with the object (a local copy so this test needs no ATen header).
struct ZrTempDir {
  fs::path path;
  ZrTempDir() {
    std::error_code ec;
    fs::path base = fs::temp_directory_path(ec);
    if (base.empty()) base = fs::current_path();
    std::string tmpl = (base / "zr-score-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("cannot create a temporary folder");
    path = tmpl;
  }
  ~ZrTempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// Expects an mt::Error whose message holds every part.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const mt::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no mt::Error thrown (expected one mentioning '" << parts.front() << "')";
}

bool any_contains(const std::vector<std::string>& lines, const std::string& part) {
  for (const auto& l : lines)
    if (l.find(part) != std::string::npos) return true;
  return false;
}

// A lexical word / non-word pair for one (id, voice): files w<id><voice> and n<id><voice>.
void add_lex(std::vector<LexicalGold>& g, ItemScores& s, const std::string& id, const std::string& voice, int64_t freq,
             int64_t len, double sw, double sn) {
  LexicalGold w;
  w.id = id;
  w.voice = voice;
  w.filename = "w" + id + voice;
  w.word = "word" + id;
  w.frequency = freq;
  w.length = len;
  w.correct = 1;
  LexicalGold n = w;
  n.filename = "n" + id + voice;
  n.word = "nonword" + id;
  n.frequency = 0;
  n.correct = 0;
  g.push_back(w);
  g.push_back(n);
  s[w.filename] = sw;
  s[n.filename] = sn;
}

// ------------------------------------------------------------------------------------------------------------
// Lexical

TEST(ZrScore, LexicalTiesAndVoiceAveraging) {
  std::vector<LexicalGold> g;
  ItemScores s;
  add_lex(g, s, "1", "v1", 10, 4, 2.0, 1.0);     // 1
  add_lex(g, s, "1", "v2", 10, 4, 0.0, 1.0);     // 0   -> id 1: 0.5
  add_lex(g, s, "2", "v1", 0, 5, -3.0, -3.0);    // tie -> id 2: 0.5
  add_lex(g, s, "3", "v1", 200, 5, -1.0, -2.0);  // 1 -> id 3: 1
  PairedResult r = score_lexical(g, s, 0);
  EXPECT_EQ(r.task, "lexical");
  EXPECT_EQ(r.ids, 3);
  EXPECT_EQ(r.pairs, 4);
  EXPECT_EQ(r.ties, 1);
  EXPECT_TRUE(r.skipped.empty());
  EXPECT_EQ(r.unused_scores, 0);
  EXPECT_DOUBLE_EQ(r.score, 2.0 / 3.0);
  ASSERT_EQ(r.by_pair.size(), 3u);
  EXPECT_EQ(r.by_pair[0].id, "1");
  EXPECT_DOUBLE_EQ(r.by_pair[0].score, 0.5);
  EXPECT_DOUBLE_EQ(r.by_pair[1].score, 0.5);
  EXPECT_DOUBLE_EQ(r.by_pair[2].score, 1.0);
  EXPECT_EQ(r.by_pair[0].a, "word1");
  EXPECT_EQ(r.by_pair[0].b, "nonword1");
  // In-vocab: ids 1 (freq 10) and 3 (freq 200); id 2 is oov.
  EXPECT_EQ(r.invocab_ids, 2);
  EXPECT_DOUBLE_EQ(r.invocab, 0.75);
  // Per voice over pairs: v1 = {1, 0.5, 1}, v2 = {0}.
  ASSERT_EQ(r.by_voice.size(), 2u);
  EXPECT_EQ(r.by_voice[0].label, "v1");
  EXPECT_EQ(r.by_voice[0].n, 3);
  EXPECT_DOUBLE_EQ(r.by_voice[0].score, 2.5 / 3.0);
  EXPECT_EQ(r.by_voice[1].label, "v2");
  EXPECT_EQ(r.by_voice[1].n, 1);
  EXPECT_DOUBLE_EQ(r.by_voice[1].score, 0.0);
  EXPECT_TRUE(std::isnan(r.by_voice[1].std));
  EXPECT_TRUE(std::isnan(r.ci.lo) && std::isnan(r.ci.hi));  // bootstrap = 0
}

TEST(ZrScore, FrequencyBandEdges) {
  EXPECT_EQ(frequency_band(0), "oov");
  EXPECT_EQ(frequency_band(1), "1-5");
  EXPECT_EQ(frequency_band(4), "1-5");
  EXPECT_EQ(frequency_band(5), "6-20");
  EXPECT_EQ(frequency_band(19), "6-20");
  EXPECT_EQ(frequency_band(20), "21-100");
  EXPECT_EQ(frequency_band(99), "21-100");
  EXPECT_EQ(frequency_band(100), ">100");
  EXPECT_EQ(frequency_band(123456), ">100");
  expect_error([] { frequency_band(-1); }, {"frequency", "-1"});

  // Through the scorer: freq 0 loses; 1 wins, 4 loses; 5, 19, 20, 99, 100 win.
  std::vector<LexicalGold> g;
  ItemScores s;
  const int64_t freqs[] = {0, 1, 4, 5, 19, 20, 99, 100};
  const bool wins[] = {false, true, false, true, true, true, true, true};
  for (int i = 0; i < 8; ++i) add_lex(g, s, std::to_string(i), "v", freqs[i], 3, wins[i] ? 1.0 : 0.0, 0.5);
  PairedResult r = score_lexical(g, s, 0);
  ASSERT_EQ(r.by_frequency.size(), 5u);
  const char* labels[] = {"oov", "1-5", "6-20", "21-100", ">100"};
  const int64_t ns[] = {1, 2, 2, 2, 1};
  const double scores[] = {0.0, 0.5, 1.0, 1.0, 1.0};
  for (int b = 0; b < 5; ++b) {
    EXPECT_EQ(r.by_frequency[b].label, labels[b]);
    EXPECT_EQ(r.by_frequency[b].n, ns[b]) << labels[b];
    EXPECT_DOUBLE_EQ(r.by_frequency[b].score, scores[b]) << labels[b];
  }
  EXPECT_NEAR(r.by_frequency[1].std, std::sqrt(0.5), 1e-12);  // {1, 0}: ddof 1
  EXPECT_DOUBLE_EQ(r.by_frequency[2].std, 0.0);
  EXPECT_TRUE(std::isnan(r.by_frequency[0].std));  // n = 1
  EXPECT_DOUBLE_EQ(r.score, 6.0 / 8.0);
  EXPECT_EQ(r.invocab_ids, 7);  // oov excluded
  EXPECT_DOUBLE_EQ(r.invocab, 6.0 / 7.0);
}

TEST(ZrScore, LexicalByLengthAndNumericIdOrder) {
  std::vector<LexicalGold> g;
  ItemScores s;
  add_lex(g, s, "10", "v", 3, 5, 1.0, 0.0);  // 1
  add_lex(g, s, "9", "v", 3, 3, 0.0, 1.0);   // 0
  add_lex(g, s, "2", "v", 3, 3, 1.0, 0.0);   // 1
  PairedResult r = score_lexical(g, s, 0);
  ASSERT_EQ(r.by_length.size(), 2u);
  EXPECT_EQ(r.by_length[0].label, "3");
  EXPECT_EQ(r.by_length[0].n, 2);
  EXPECT_DOUBLE_EQ(r.by_length[0].score, 0.5);
  EXPECT_NEAR(r.by_length[0].std, std::sqrt(0.5), 1e-12);
  EXPECT_EQ(r.by_length[1].label, "5");
  EXPECT_EQ(r.by_length[1].n, 1);
  EXPECT_DOUBLE_EQ(r.by_length[1].score, 1.0);
  // by_pair sorted by id as numbers (pandas sorts integer ids numerically): 2, 9, 10.
  ASSERT_EQ(r.by_pair.size(), 3u);
  EXPECT_EQ(r.by_pair[0].id, "2");
  EXPECT_EQ(r.by_pair[1].id, "9");
  EXPECT_EQ(r.by_pair[2].id, "10");
}

TEST(ZrScore, MissingAndNaNScoresAreSkippedAndNamed) {
  std::vector<LexicalGold> g;
  ItemScores s;
  add_lex(g, s, "1", "v1", 3, 3, 1.0, 0.0);  // 1
  add_lex(g, s, "1", "v2", 3, 3, 0.0, 1.0);  // word score missing -> skipped; id 1 = 1 from v1 alone
  s.erase("w1v2");
  add_lex(g, s, "2", "v1", 3, 3, 1.0, kNaN);  // NaN -> skipped; id 2 has no voice left -> not counted
  add_lex(g, s, "3", "v1", 3, 3, 0.0, 1.0);   // 0
  s["stray"] = 1.0;
  PairedResult r = score_lexical(g, s, 0);
  EXPECT_EQ(r.pairs, 2);
  EXPECT_EQ(r.ids, 2);
  EXPECT_DOUBLE_EQ(r.score, 0.5);
  EXPECT_EQ(r.unused_scores, 1);
  ASSERT_EQ(r.skipped.size(), 4u);  // one line per gold row of the two skipped pairs
  EXPECT_TRUE(any_contains(r.skipped, "w1v2")) << r.skipped[0];
  EXPECT_TRUE(any_contains(r.skipped, "no score"));
  EXPECT_TRUE(any_contains(r.skipped, "n1v2"));  // its partner, with the reason
  EXPECT_TRUE(any_contains(r.skipped, "partner w1v2"));
  EXPECT_TRUE(any_contains(r.skipped, "n2v1"));
  EXPECT_TRUE(any_contains(r.skipped, "NaN"));
  for (const auto& p : r.by_pair) EXPECT_NE(p.id, "2");

  // A word row with no non-word partner.
  LexicalGold lone;
  lone.id = "7";
  lone.voice = "v1";
  lone.filename = "lonely";
  lone.correct = 1;
  lone.frequency = 1;
  g.push_back(lone);
  s["lonely"] = 0.0;
  r = score_lexical(g, s, 0);
  EXPECT_TRUE(any_contains(r.skipped, "lonely")) << r.skipped.back();
  EXPECT_TRUE(any_contains(r.skipped, "no non-word"));
  EXPECT_EQ(r.ids, 2);

  // Two words for one (id, voice): a gold error.
  g.push_back(lone);
  g.back().filename = "lonely2";
  expect_error([&] { score_lexical(g, s, 0); }, {"two words", "lonely", "lonely2"});
}

// ------------------------------------------------------------------------------------------------------------
// Gold readers and CSV

TEST(ZrScore, ReadLexicalGoldCsv) {
  ZrTempDir d;
  // Column order differs from the official one; CRLF; a quoted field with a comma and a doubled quote;
  // non-word frequency empty and "nan"; an integral "12.0".
  const std::string csv =
      "filename,correct,id,voice,word,phones,frequency,length\r\n"
      "aa,1,1,Alex,\"brick, \"\"red\"\"\",b r ih k,12.0,4\r\n"
      "ab,0,1,Alex,,b l ih k,,4\r\n"
      "\r\n"
      "ac,1,2,Alex,squalled,s k w ao l d,0,6\r\n"
      "ad,0,2,Alex,,s k w ih l d,nan,6\r\n";
  write_file(d.file("gold.csv"), csv);
  auto g = read_lexical_gold(d.file("gold.csv"));
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0].filename, "aa");
  EXPECT_EQ(g[0].word, "brick, \"red\"");
  EXPECT_EQ(g[0].frequency, 12);
  EXPECT_EQ(g[0].length, 4);
  EXPECT_EQ(g[0].correct, 1);
  EXPECT_EQ(g[0].line, 2);
  EXPECT_EQ(g[1].frequency, 0);
  EXPECT_EQ(g[1].phones, "b l ih k");
  EXPECT_EQ(g[2].line, 5);  // after the blank line
  EXPECT_EQ(g[3].voice, "Alex");

  // Every non-word's word is empty -> the non-word is labelled by its phones.
  ItemScores s{{"aa", 1.0}, {"ab", 0.0}, {"ac", 0.0}, {"ad", 0.0}};
  PairedResult r = score_lexical(g, s, 0);
  ASSERT_EQ(r.by_pair.size(), 2u);
  EXPECT_EQ(r.by_pair[0].a, "brick, \"red\"");
  EXPECT_EQ(r.by_pair[0].b, "b l ih k");
  EXPECT_EQ(r.by_frequency[0].n, 1);  // id 2: oov
  EXPECT_EQ(r.by_frequency[2].n, 1);  // id 1: 12 -> "6-20"
}

TEST(ZrScore, MalformedCsvNamesFileLineAndColumn) {
  ZrTempDir d;
  const std::string head = "id,filename,voice,frequency,word,phones,length,correct\n";
  const std::string ok = "1,aa,v,3,brick,b r ih k,4,1\n";

  write_file(d.file("badint.csv"), head + ok + "1,ab,v,abc,blick,b l ih k,4,1\n");
  expect_error([&] { read_lexical_gold(d.file("badint.csv")); }, {"badint.csv:3", "frequency", "abc"});

  // An empty frequency is allowed on a non-word row only.
  write_file(d.file("wordnan.csv"), head + "1,aa,v,,brick,b r ih k,4,1\n");
  expect_error([&] { read_lexical_gold(d.file("wordnan.csv")); }, {"wordnan.csv:2", "frequency"});

  write_file(d.file("badcorrect.csv"), head + "1,aa,v,3,brick,b r ih k,4,2\n");
  expect_error([&] { read_lexical_gold(d.file("badcorrect.csv")); }, {"badcorrect.csv:2", "correct", "0 or 1"});

  write_file(d.file("nocol.csv"), "id,filename,voice,word,phones,length,correct\n1,aa,v,w,p,4,1\n");
  expect_error([&] { read_lexical_gold(d.file("nocol.csv")); }, {"nocol.csv", "frequency"});

  write_file(d.file("fields.csv"), head + ok + "1,ab,v,3,blick\n");
  expect_error([&] { read_lexical_gold(d.file("fields.csv")); }, {"fields.csv:3", "5 fields"});

  write_file(d.file("quote.csv"), head + ok + "1,ab,v,3,\"blick,b l ih k,4,0\n");
  expect_error([&] { read_lexical_gold(d.file("quote.csv")); }, {"quote.csv:3", "unterminated"});

  write_file(d.file("after.csv"), head + "1,\"aa\"x,v,3,brick,b r ih k,4,1\n");
  expect_error([&] { read_lexical_gold(d.file("after.csv")); }, {"after.csv:2", "column 2"});

  expect_error([&] { read_lexical_gold(d.file("absent.csv")); }, {"absent.csv"});
}

// ------------------------------------------------------------------------------------------------------------
// Syntactic

TEST(ZrScore, SyntacticByTypeAndFiles) {
  ZrTempDir d;
  // agreement/sv id 1: voices a (1) and b (0) -> 0.5; agreement/sv id 2: a tie -> 0.5;
  // binding/x id 1 (same id, another type: a separate pair): 1. "island" id 1: grammatical score missing.
  const std::string csv =
      "id,filename,voice,type,subtype,correct,transcription\n"
      "1,g1a,a,agreement,sv,1,\"dogs, they eat\"\n"
      "1,u1a,a,agreement,sv,0,\"dogs, they eats\"\n"
      "1,g1b,b,agreement,sv,1,\"dogs, they eat\"\n"
      "1,u1b,b,agreement,sv,0,\"dogs, they eats\"\n"
      "2,g2a,a,agreement,sv,1,cats run\n"
      "2,u2a,a,agreement,sv,0,cats runs\n"
      "1,g3a,a,binding,x,1,he saw himself\n"
      "1,u3a,a,binding,x,0,he saw herself\n"
      "1,g4a,a,island,y,1,what did you see\n"
      "1,u4a,a,island,y,0,what did you saw\n";
  write_file(d.file("gold.csv"), csv);
  auto g = read_syntactic_gold(d.file("gold.csv"));
  ASSERT_EQ(g.size(), 10u);
  EXPECT_EQ(g[0].transcription, "dogs, they eat");
  ItemScores s{{"g1a", 2}, {"u1a", 1}, {"g1b", 1},  {"u1b", 2}, {"g2a", 5},
               {"u2a", 5}, {"g3a", 0}, {"u3a", -1}, {"u4a", 0}};
  PairedResult r = score_syntactic(g, s, 0);
  EXPECT_EQ(r.task, "syntactic");
  EXPECT_EQ(r.ids, 3);
  EXPECT_EQ(r.pairs, 4);
  EXPECT_EQ(r.ties, 1);
  EXPECT_DOUBLE_EQ(r.score, 2.0 / 3.0);
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_TRUE(any_contains(r.skipped, "g4a"));
  EXPECT_TRUE(any_contains(r.skipped, "gold line 10"));
  ASSERT_EQ(r.by_type.size(), 2u);
  EXPECT_EQ(r.by_type[0].label, "agreement");
  EXPECT_EQ(r.by_type[0].n, 2);
  EXPECT_DOUBLE_EQ(r.by_type[0].score, 0.5);
  EXPECT_DOUBLE_EQ(r.by_type[0].std, 0.0);
  EXPECT_EQ(r.by_type[1].label, "binding");
  EXPECT_EQ(r.by_type[1].n, 1);
  EXPECT_DOUBLE_EQ(r.by_type[1].score, 1.0);
  ASSERT_EQ(r.by_voice.size(), 2u);
  EXPECT_EQ(r.by_voice[0].n, 3);  // voice a: 1, 0.5, 1
  EXPECT_DOUBLE_EQ(r.by_voice[0].score, 2.5 / 3.0);

  write_score_files(r, d.file("scores"), "dev");
  EXPECT_EQ(read_file(d.file("scores/score_syntactic_dev_by_pair.csv")),
            "sentence,non sentence,score\n"
            "\"dogs, they eat\",\"dogs, they eats\",0.5000\n"
            "cats run,cats runs,0.5000\n"
            "he saw himself,he saw herself,1.0000\n");
  EXPECT_EQ(read_file(d.file("scores/score_syntactic_dev_by_type.csv")),
            "type,n,score,std\n"
            "agreement,2,0.5000,0.0000\n"
            "binding,1,1.0000,\n");
}

// ------------------------------------------------------------------------------------------------------------
// Score files

TEST(ZrScore, LexicalScoreFilesExactText) {
  ZrTempDir d;
  std::vector<LexicalGold> g;
  ItemScores s;
  add_lex(g, s, "1", "v", 30, 4, 1.0, 0.0);  // 1
  add_lex(g, s, "2", "v", 0, 6, 1.0, 1.0);   // tie
  add_lex(g, s, "3", "v", 0, 6, 2.0, 1.0);   // 1
  g[0].word = "brick";
  g[1].word = "blick";
  PairedResult r = score_lexical(g, s, 0);
  write_score_files(r, d.path.string(), "dev");
  EXPECT_EQ(read_file(d.file("score_lexical_dev_by_pair.csv")),
            "word,non word,score\n"
            "brick,blick,1.0000\n"
            "word2,nonword2,0.5000\n"
            "word3,nonword3,1.0000\n");
  EXPECT_EQ(read_file(d.file("score_lexical_dev_by_frequency.csv")),
            "frequency,n,score,std\n"
            "oov,2,0.7500,0.3536\n"
            "1-5,0,,\n"
            "6-20,0,,\n"
            "21-100,1,1.0000,\n"
            ">100,0,,\n");
  EXPECT_EQ(read_file(d.file("score_lexical_dev_by_length.csv")),
            "length,n,score,std\n"
            "4,1,1.0000,\n"
            "6,2,0.7500,0.3536\n");
  write_score_files(r, d.path.string(), "test");
  EXPECT_TRUE(fs::exists(d.file("score_lexical_test_by_length.csv")));
  // No temp files left behind.
  for (const auto& e : fs::directory_iterator(d.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();

  nlohmann::json j = r.to_json();
  EXPECT_EQ(j["task"], "lexical");
  EXPECT_EQ(j["ids"], 3);
  EXPECT_EQ(j["ties"], 1);
  EXPECT_EQ(j["by_pair"], 3);
  EXPECT_EQ(j["by_frequency"].size(), 5u);
  EXPECT_TRUE(j["ci"]["lo"].is_null());  // NaN -> null
  EXPECT_EQ(j["invocab_ids"], 1);
  EXPECT_NEAR(j["score"].get<double>(), 2.5 / 3.0, 1e-12);
}

// ------------------------------------------------------------------------------------------------------------
// StoryCloze

TEST(ZrScore, StoryPairsFromManifest) {
  ZrTempDir d;
  write_file(d.file("manifest.csv"), "positive,negative,id\nA_pos.wav,A_neg.wav,s1\nB_pos,B_neg,s2\nC_pos,C_neg,s3\n");
  auto p = read_story_pairs(d.path.string());
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].id, "s1");
  EXPECT_EQ(p[0].positive, "A_pos");
  EXPECT_EQ(p[0].negative, "A_neg");
  EXPECT_EQ(p[1].positive, "B_pos");
  ItemScores s{{"A_pos", -1.0}, {"A_neg", -2.0}, {"B_pos", -3.0}, {"B_neg", -3.0}, {"C_pos", -5.0}};
  PairedResult r = score_story("sstory", p, s, 0);
  EXPECT_EQ(r.task, "sstory");
  EXPECT_EQ(r.ids, 2);
  EXPECT_EQ(r.pairs, 2);
  EXPECT_EQ(r.ties, 1);
  EXPECT_DOUBLE_EQ(r.score, 0.75);
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_TRUE(any_contains(r.skipped, "C_neg"));
  write_score_files(r, d.file("out"));
  EXPECT_EQ(read_file(d.file("out/score_sstory_by_pair.csv")),
            "positive,negative,score\nA_pos,A_neg,1.0000\nB_pos,B_neg,0.5000\n");

  write_file(d.file("manifest.csv"), "id,positive,negative\ns1,a,b\ns1,c,d\n");
  expect_error([&] { read_story_pairs(d.path.string()); }, {"manifest.csv:3", "duplicate id"});
}

TEST(ZrScore, StoryPairsFromOfficialSortOrder) {
  ZrTempDir d;
  // Numeric order 8, 9, 10, 11 (lexical order would be 10, 11, 8, 9): pairs (8_a, 9_y), (10_x, 11_b).
  for (const char* f : {"10_x.wav", "9_y.wav", "11_b.wav", "8_a.wav"}) write_file(d.file(f), "");
  write_file(d.file("README.txt"), "not a wav");
  auto p = read_story_pairs(d.path.string());
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].positive, "8_a");
  EXPECT_EQ(p[0].negative, "9_y");
  EXPECT_EQ(p[1].positive, "10_x");
  EXPECT_EQ(p[1].negative, "11_b");
  EXPECT_EQ(p[0].id, "0");
  EXPECT_EQ(p[1].id, "1");
  ItemScores s{{"8_a", 0.0}, {"9_y", 1.0}, {"10_x", 1.0}, {"11_b", 0.0}};
  PairedResult r = score_story("tstory", p, s, 0);
  EXPECT_DOUBLE_EQ(r.score, 0.5);
  EXPECT_EQ(r.by_pair[0].a, "8_a");

  write_file(d.file("12_z.wav"), "");
  expect_error([&] { read_story_pairs(d.path.string()); }, {"12_z.wav", "odd"});
  fs::remove(d.file("12_z.wav"));
  write_file(d.file("abc_z.wav"), "");
  expect_error([&] { read_story_pairs(d.path.string()); }, {"abc_z.wav", "<int>_<suffix>"});
  fs::remove(d.file("abc_z.wav"));
  write_file(d.file("9_w.wav"), "");
  write_file(d.file("12_q.wav"), "");
  expect_error([&] { read_story_pairs(d.path.string()); }, {"same integer prefix"});
}

// ------------------------------------------------------------------------------------------------------------
// Submissions

TEST(ZrScore, SubmissionRoundTripAndStrictReader) {
  ZrTempDir d;
  ItemScores s{{"b", 0.1},
               {"a", -1.0 / 3.0},
               {"c", -1e-300},
               {"d", 123456789.123456789},
               {"e", -std::numeric_limits<double>::infinity()},
               {"f", std::nextafter(1.0, 2.0)},
               {"g", kNaN}};
  write_submission(s, d.file("dev.txt"));
  const std::string text = read_file(d.file("dev.txt"));
  EXPECT_EQ(text.substr(0, 2), "a ");
  EXPECT_NE(text.find("\nb 0.1\n"), std::string::npos) << text;
  ItemScores back = read_submission(d.file("dev.txt"));
  ASSERT_EQ(back.size(), s.size());
  for (const auto& [k, v] : s) {
    ASSERT_TRUE(back.count(k)) << k;
    if (std::isnan(v))
      EXPECT_TRUE(std::isnan(back[k]));
    else
      EXPECT_EQ(std::memcmp(&v, &back[k], sizeof v), 0) << k << " " << v << " vs " << back[k];
  }

  write_file(d.file("dup.txt"), "x 1.0\ny 2\nx 3\n");
  expect_error([&] { read_submission(d.file("dup.txt")); }, {"dup.txt:3", "twice", "line 1"});
  write_file(d.file("float.txt"), "x 1.0\ny 1.2.3\n");
  expect_error([&] { read_submission(d.file("float.txt")); }, {"float.txt:2", "1.2.3"});
  write_file(d.file("fields.txt"), "x 1.0\ny  2.0\n");
  expect_error([&] { read_submission(d.file("fields.txt")); }, {"fields.txt:2"});
  write_file(d.file("one.txt"), "x\n");
  expect_error([&] { read_submission(d.file("one.txt")); }, {"one.txt:1"});
  write_file(d.file("crlf.txt"), "x +1.5e0\r\ny -2\r\nz 1e400\r\n");
  ItemScores c = read_submission(d.file("crlf.txt"));
  EXPECT_DOUBLE_EQ(c["x"], 1.5);
  EXPECT_DOUBLE_EQ(c["y"], -2.0);
  EXPECT_TRUE(std::isinf(c["z"]) && c["z"] > 0);  // as Python's float()
  write_file(d.file("big.txt"), "x 1e400x\n");
  expect_error([&] { read_submission(d.file("big.txt")); }, {"big.txt:1", "1e400x"});
}

// ------------------------------------------------------------------------------------------------------------
// Bootstrap

TEST(ZrScore, BootstrapDeterministicContainsScoreAndShrinks) {
  auto make = [](int ids) {
    std::vector<StoryPair> p;
    ItemScores s;
    for (int i = 0; i < ids; ++i) {
      const std::string id = std::to_string(i);
      p.push_back({id, "p" + id, "n" + id});
      s["p" + id] = (i % 10 < 7) ? 1.0 : 0.0;  // 70% correct
      s["n" + id] = 0.5;
    }
    return std::make_pair(p, s);
  };
  const auto d1 = make(40);
  const auto& p1 = d1.first;
  const auto& s1 = d1.second;
  PairedResult a = score_story("sstory", p1, s1, 500, 7);
  PairedResult b = score_story("sstory", p1, s1, 500, 7);
  EXPECT_DOUBLE_EQ(a.score, 0.7);
  EXPECT_EQ(a.ci.lo, b.ci.lo);
  EXPECT_EQ(a.ci.hi, b.ci.hi);
  EXPECT_LT(a.ci.lo, a.score);
  EXPECT_GT(a.ci.hi, a.score);
  EXPECT_GE(a.ci.lo, 0.0);
  EXPECT_LE(a.ci.hi, 1.0);
  PairedResult other = score_story("sstory", p1, s1, 500, 8);
  EXPECT_TRUE(other.ci.lo != a.ci.lo || other.ci.hi != a.ci.hi);

  const auto d2 = make(4000);
  PairedResult big = score_story("sstory", d2.first, d2.second, 500, 7);
  EXPECT_DOUBLE_EQ(big.score, 0.7);
  EXPECT_LT(big.ci.lo, big.score);
  EXPECT_GT(big.ci.hi, big.score);
  EXPECT_LT(big.ci.hi - big.ci.lo, 0.5 * (a.ci.hi - a.ci.lo));
  // About 2 * 1.96 * sqrt(0.7 * 0.3 / 4000) = 0.028 wide.
  EXPECT_NEAR(big.ci.hi - big.ci.lo, 0.0284, 0.006);

  PairedResult none = score_story("sstory", p1, s1, 0, 7);
  EXPECT_TRUE(std::isnan(none.ci.lo));
  expect_error([&] { score_story("sstory", p1, s1, -1, 7); }, {"bootstrap"});

  // Lexical: the in-vocab interval too.
  std::vector<LexicalGold> g;
  ItemScores s;
  for (int i = 0; i < 60; ++i) add_lex(g, s, std::to_string(i), "v", i % 3, 3, i % 2 ? 1.0 : 0.0, 0.5);
  PairedResult l1 = score_lexical(g, s, 300, 1), l2 = score_lexical(g, s, 300, 1);
  EXPECT_EQ(l1.invocab_ci.lo, l2.invocab_ci.lo);
  EXPECT_EQ(l1.invocab_ci.hi, l2.invocab_ci.hi);
  EXPECT_LE(l1.invocab_ci.lo, l1.invocab);
  EXPECT_GE(l1.invocab_ci.hi, l1.invocab);
  EXPECT_EQ(l1.invocab_ids, 40);
}

}  // namespace
