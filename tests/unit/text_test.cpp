// Tests of the text stream (src/text/interleaver.{h,cpp}) and the SentencePiece tokenizer
// (src/text/tokenizer.{h,cpp}). Interleaver expectations are worked out by hand from spec section 3
// (12.5 Hz: frame f covers [0.08 f, 0.08 (f + 1)) s; PAD = 3, EPAD = 0) with a fake tokenizer; the
// tokenizer test trains a tiny SentencePiece model at test time.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(MOSHI_TTT_SPM_TRAINER) && __has_include(<sentencepiece_trainer.h>)
#include <sentencepiece_trainer.h>
#define MT_HAVE_SPM_TRAINER 1
#endif

#include "test_util.h"
#include "text/interleaver.h"
#include "text/tokenizer.h"
#include "util/error.h"

using mt::test::TempDir;
using mt::text::WordAlignment;
using Stream = std::vector<int64_t>;

namespace {

constexpr int64_t P = 3;  // PAD
constexpr int64_t E = 0;  // EPAD

using mt::test::expect_error;

// Fake tokenizer: "a" -> [100], "bb" -> [200, 201], "ccc" -> [300, 301, 302], "dddd" -> [400..403],
// "" -> [] (what Moshi's tokenize gives an empty word); anything else fails the test.
std::vector<int> fake_tokens(const std::string& w) {
  static const std::map<std::string, std::vector<int>> dict = {
      {"a", {100}}, {"bb", {200, 201}}, {"ccc", {300, 301, 302}}, {"dddd", {400, 401, 402, 403}}, {"", {}}};
  auto it = dict.find(w);
  if (it == dict.end()) {
    ADD_FAILURE() << "fake tokenizer: unexpected word '" << w << "'";
    return {};
  }
  return it->second;
}

WordAlignment W(const std::string& word, double start, double end, const std::string& speaker = "SPEAKER_MAIN") {
  return WordAlignment{word, start, end, speaker};
}

Stream build(const std::vector<WordAlignment>& words, int64_t frames, mt::text::InterleaverConfig cfg = {}) {
  return mt::text::build_token_stream(words, frames, fake_tokens, cfg);
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

}  // namespace

// ---- build_token_stream ------------------------------------------------------------------------------

TEST(Interleaver, WordsStartAtTheirFrameWithEpadBeforeAWordAfterPadding) {
  // "a" at 0.0 s -> frame 0 (no EPAD at t = 0); "bb" at 0.4 s -> 0.4 * 12.5 = 5.0, so frame 5 (not 4:
  // the test is start * 12.5 < t + 1); its tokens on frames 5, 6; EPAD on frame 4.
  Stream got = build({W("a", 0.0, 0.1), W("bb", 0.4, 0.6)}, 10);
  EXPECT_EQ(got, (Stream{100, P, P, P, E, 200, 201, P, P, P}));
}

TEST(Interleaver, StartFrameIsTheFloorOfStartTimesFrameRate) {
  // 0.12 s -> 1.5 -> frame 1; 0.5 s -> 6.25 -> frame 6; 0.79 s -> 9.875 -> frame 9.
  Stream got = build({W("a", 0.12, 0.2), W("a", 0.5, 0.55), W("a", 0.79, 0.8)}, 11);
  EXPECT_EQ(got, (Stream{E, 100, P, P, P, E, 100, P, E, 100, P}));
}

TEST(Interleaver, NoEpadWhenAWordFollowsTokensDirectly) {
  // "bb" fills frames 0, 1; "ccc" at frame 2 follows a token, not padding: no EPAD. "a" at frame 6
  // follows padding (frame 5): EPAD there.
  Stream got = build({W("bb", 0.0, 0.1), W("ccc", 0.17, 0.3), W("a", 0.5, 0.6)}, 8);
  EXPECT_EQ(got, (Stream{200, 201, 300, 301, 302, E, 100, P}));
}

TEST(Interleaver, InWordPaddingRunsUntilTheWordsEndFrame) {
  // With a distinct in-word padding id (7) the frames t <= int(end * 12.5) of the last word show it:
  // "a" [0, 0.3] -> end frame int(3.75) = 3; "bb" [0.64, 0.7] -> start 8, end int(8.75) = 8.
  mt::text::InterleaverConfig cfg;
  cfg.in_word_pad = 7;
  Stream got = build({W("a", 0.0, 0.3), W("bb", 0.64, 0.7)}, 12, cfg);
  // EPAD only replaces text padding (3), so frame 7 becomes EPAD but in-word frames do not.
  EXPECT_EQ(got, (Stream{100, 7, 7, 7, P, P, P, E, 200, 201, P, P}));

  // A word starting inside the previous word's span: the frame before it is in-word padding (7), not
  // PAD, so it keeps no EPAD.
  Stream got2 = build({W("a", 0.0, 0.5), W("bb", 0.4, 0.45)}, 8, cfg);
  EXPECT_EQ(got2, (Stream{100, 7, 7, 7, 7, 200, 201, P}));
  // moshi-finetune's setting (in-word padding = PAD = 3): that frame does become EPAD.
  Stream got3 = build({W("a", 0.0, 0.5), W("bb", 0.4, 0.45)}, 8);
  EXPECT_EQ(got3, (Stream{100, P, P, P, E, 200, 201, P}));
}

TEST(Interleaver, ALaterWordReplacesTheUnemittedTokensOfTheQueue) {
  // "dddd" starts at frame 0 and would need frames 0..3, but "a" starts at frame 2 (0.2 s -> 2.5):
  // 402 and 403 are dropped, "a" lands on frame 2 (no EPAD: frame 1 holds a token).
  Stream got = build({W("dddd", 0.0, 0.5), W("a", 0.2, 0.3)}, 6);
  EXPECT_EQ(got, (Stream{400, 401, 100, P, P, P}));
  // Two words starting in the same frame: only the later one's tokens are emitted.
  Stream same = build({W("ccc", 0.1, 0.15), W("bb", 0.12, 0.2)}, 5);
  EXPECT_EQ(same, (Stream{E, 200, 201, P, P}));
  // An empty word (no tokens) still empties the queue.
  Stream empty = build({W("ccc", 0.0, 0.1), W("", 0.1, 0.2)}, 5);
  EXPECT_EQ(empty, (Stream{300, P, P, P, P}));
}

TEST(Interleaver, OnlyTheMainSpeakerCounts) {
  std::vector<WordAlignment> words = {W("a", 0.0, 0.1), W("ccc", 0.1, 0.2, "SPEAKER_1"), W("bb", 0.4, 0.5)};
  // "ccc" (frame 1) is ignored, so "a" keeps its frame and "bb" follows padding.
  EXPECT_EQ(build(words, 8), (Stream{100, P, P, P, E, 200, 201, P}));
  mt::text::InterleaverConfig all;
  all.keep_main_only = false;
  EXPECT_EQ(build(words, 8, all), (Stream{100, 300, 301, 302, E, 200, 201, P}));
}

TEST(Interleaver, ZeroAndNegativeLengthWordsAreDropped) {
  // Without the drop, "a" (frame 1) would cut "ccc" short and "bb" would appear at frame 5.
  std::vector<WordAlignment> words = {W("ccc", 0.0, 0.3), W("a", 0.1, 0.1), W("bb", 0.4, 0.35)};
  EXPECT_EQ(build(words, 7), (Stream{300, 301, 302, P, P, P, P}));
}

TEST(Interleaver, TruncatesAtTheNumberOfFrames) {
  // "dddd" at frame 3 of 5 emits only two tokens; a word at frame 5 or later never appears.
  Stream got = build({W("dddd", 0.25, 0.5), W("a", 0.41, 0.5)}, 5);
  EXPECT_EQ(got, (Stream{P, P, E, 400, 401}));
  EXPECT_TRUE(build({W("a", 0.0, 0.1)}, 0).empty());
  EXPECT_EQ(build({}, 3), (Stream{P, P, P}));
}

TEST(Interleaver, UnsortedInputIsTakenInStartOrder) {
  std::vector<WordAlignment> sorted = {W("a", 0.0, 0.1), W("bb", 0.4, 0.6), W("ccc", 0.6, 0.8)};
  std::vector<WordAlignment> shuffled = {sorted[2], sorted[0], sorted[1]};
  EXPECT_EQ(build(shuffled, 12), build(sorted, 12));
  EXPECT_EQ(build(sorted, 12), (Stream{100, P, P, P, E, 200, 201, 300, 301, 302, P, P}));
}

TEST(Interleaver, RejectsBadArguments) {
  expect_error([] { build({}, -1); }, {"num_frames", "-1"});
  expect_error([] { mt::text::build_token_stream({}, 3, nullptr); }, {"tokenizer"});
}

// ---- alignments files and segment selection ----------------------------------------------------------

TEST(TextAlignments, ParsesAnnotateJson) {
  TempDir d;
  const std::string path = d.file("a.json");
  write_text(path, R"({"alignments": [["Hello,", [0.5, 0.9], "SPEAKER_MAIN"], ["you", [1, 1.25], "SPEAKER_1"]],
                       "text_conditions": {"x": 1}})");
  auto a = mt::text::parse_alignments_json(path);
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0].word, "Hello,");
  EXPECT_DOUBLE_EQ(a[0].start_s, 0.5);
  EXPECT_DOUBLE_EQ(a[0].end_s, 0.9);
  EXPECT_EQ(a[0].speaker, "SPEAKER_MAIN");
  EXPECT_EQ(a[1].word, "you");
  EXPECT_DOUBLE_EQ(a[1].start_s, 1.0);
  EXPECT_DOUBLE_EQ(a[1].end_s, 1.25);
  EXPECT_EQ(a[1].speaker, "SPEAKER_1");
  write_text(path, R"({"alignments": []})");
  EXPECT_TRUE(mt::text::parse_alignments_json(path).empty());
}

TEST(TextAlignments, ErrorsNameTheFileAndEntry) {
  TempDir d;
  const std::string missing = d.file("missing.json");
  expect_error([&] { mt::text::parse_alignments_json(missing); }, {missing, "cannot open"});
  const std::string path = d.file("bad.json");
  write_text(path, "{\"alignments\": [");
  expect_error([&] { mt::text::parse_alignments_json(path); }, {path, "invalid JSON"});
  write_text(path, R"({"words": []})");
  expect_error([&] { mt::text::parse_alignments_json(path); }, {path, "alignments"});
  write_text(path, R"({"alignments": [["a", [0, 1], "S"], ["b", [0.5], "S"]]})");
  expect_error([&] { mt::text::parse_alignments_json(path); }, {path, "alignments[1]", "[0.5]"});
  write_text(path, R"({"alignments": [["a", [0, 1], "S"], ["b", [0, 1], "S"], [3, [0, 1], "S"]]})");
  expect_error([&] { mt::text::parse_alignments_json(path); }, {path, "alignments[2]", "word"});
  write_text(path, R"({"alignments": [["a", [0, 1]]]})");
  expect_error([&] { mt::text::parse_alignments_json(path); }, {path, "alignments[0]"});
}

TEST(TextAlignments, SelectsWordsStartingInTheSegmentAndShiftsThem) {
  std::vector<WordAlignment> all = {W("w0", 0.5, 1.2), W("w1", 1.0, 1.5), W("w2", 1.99, 2.4), W("w3", 2.0, 2.1),
                                    W("w4", 4.0, 4.5)};
  auto sel = mt::text::select_alignments(all, 1.0, 1.0);  // [1.0, 2.0)
  ASSERT_EQ(sel.size(), 2u);
  EXPECT_EQ(sel[0].word, "w1");
  EXPECT_DOUBLE_EQ(sel[0].start_s, 0.0);
  EXPECT_DOUBLE_EQ(sel[0].end_s, 0.5);
  EXPECT_EQ(sel[1].word, "w2");
  EXPECT_NEAR(sel[1].start_s, 0.99, 1e-12);
  EXPECT_NEAR(sel[1].end_s, 1.4, 1e-12);                             // may run past the segment; the stream truncates
  EXPECT_EQ(mt::text::select_alignments(all, 2.0, 3.0).size(), 2u);  // w3, w4
  EXPECT_TRUE(mt::text::select_alignments(all, 5.0, 10.0).empty());
  // Selected + shifted words give the segment's stream: w1 at frame 0, w2 at 0.99 * 12.5 -> 12.
  auto stream =
      mt::text::build_token_stream(sel, 13, [](const std::string& w) { return std::vector<int>{w == "w1" ? 11 : 22}; });
  Stream expect(13, P);
  expect[0] = 11;
  expect[11] = E;
  expect[12] = 22;
  EXPECT_EQ(stream, expect);
}

// ---- SentencePiece ------------------------------------------------------------------------------------

TEST(Tokenizer, LoadErrorNamesTheFile) {
  TempDir d;
  const std::string missing = d.file("missing.model");
  expect_error([&] { mt::text::Tokenizer t(missing); }, {missing, "cannot load SentencePiece model"});
  const std::string junk = d.file("junk.model");
  write_text(junk, "not a protobuf");
  expect_error([&] { mt::text::Tokenizer t(junk); }, {junk, "cannot load SentencePiece model"});
}

TEST(Tokenizer, StripMatchesPython) {
  EXPECT_EQ(mt::text::strip("  hi there\t\n"), "hi there");
  EXPECT_EQ(mt::text::strip("\r\n\v\f"), "");
  EXPECT_EQ(mt::text::strip(""), "");
  EXPECT_EQ(mt::text::strip("a\nb"), "a\nb");
}

#ifdef MT_HAVE_SPM_TRAINER
namespace {
// Trains a small unigram model with Moshi's special ids (unk 0, bos 1, eos 2, pad 3) on a toy corpus;
// `newline_symbol` adds "\n" as a user-defined piece (as Moshi's tokenizer has a newline piece).
std::string train_model(const TempDir& d, const std::string& name, bool newline_symbol) {
  const std::string corpus = d.file("corpus.txt");
  {
    std::ofstream f(corpus);
    const char* words[] = {"hello", "world", "the",   "quick",  "brown",   "fox",   "jumps", "over",
                           "lazy",  "dog",   "moshi", "speaks", "listens", "talks", "again"};
    for (int i = 0; i < 400; ++i) {
      for (int j = 0; j < 7; ++j) f << words[(i * 7 + j * 3) % 15] << (j < 6 ? " " : "\n");
    }
  }
  std::unordered_map<std::string, std::string> args = {{"input", corpus},         {"model_prefix", d.file(name)},
                                                       {"vocab_size", "64"},      {"hard_vocab_limit", "false"},
                                                       {"model_type", "unigram"}, {"character_coverage", "1.0"},
                                                       {"unk_id", "0"},           {"bos_id", "1"},
                                                       {"eos_id", "2"},           {"pad_id", "3"},
                                                       {"minloglevel", "2"},      {"num_threads", "1"}};
  if (newline_symbol) {
    args["user_defined_symbols"] = "\n";
    args["remove_extra_whitespaces"] = "false";
  }
  const auto status = sentencepiece::SentencePieceTrainer::Train(args);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return d.file(name + ".model");
}
}  // namespace
#endif

TEST(Tokenizer, TrainedModelRoundTripsAndEncodesWordsLikeMoshi) {
#ifndef MT_HAVE_SPM_TRAINER
  GTEST_SKIP() << "SentencePiece trainer (sentencepiece_trainer.h / libsentencepiece_train) not available";
#else
  TempDir d;
  mt::text::Tokenizer tok(train_model(d, "nl", true));
  EXPECT_GT(tok.vocab_size(), 20);
  EXPECT_EQ(tok.piece(0), "<unk>");
  EXPECT_EQ(tok.piece(1), "<s>");
  EXPECT_EQ(tok.piece(2), "</s>");
  EXPECT_EQ(tok.piece(3), "<pad>");

  const std::vector<int> ids = tok.encode("hello world");
  ASSERT_FALSE(ids.empty());
  for (int id : ids) EXPECT_GT(id, 3) << "special id in the encoding of plain text";
  EXPECT_EQ(tok.decode(ids), "hello world");
  EXPECT_EQ(tok.decode(tok.encode("the lazy fox talks again")), "the lazy fox talks again");

  // Words are stripped; "\n" splits lines, joined with the newline piece (last id of encode("\n")).
  ASSERT_GE(tok.newline_piece(), 0);
  EXPECT_EQ(tok.piece(tok.newline_piece()), "\n");
  EXPECT_EQ(tok.encode_word("  hello\t"), tok.encode("hello"));
  std::vector<int> expect = tok.encode("hello");
  expect.push_back(tok.newline_piece());
  const std::vector<int> world = tok.encode("world");
  expect.insert(expect.end(), world.begin(), world.end());
  EXPECT_EQ(tok.encode_word(" hello\nworld \n"), expect);
  EXPECT_TRUE(tok.encode_word(" \n ").empty());

  // As the interleaver's tokenizer.
  auto stream = mt::text::build_token_stream({W("hello", 0.0, 0.2), W(" world", 0.4, 0.6)}, 8,
                                             [&](const std::string& w) { return tok.encode_word(w); });
  ASSERT_EQ(stream.size(), 8u);
  EXPECT_EQ(stream[0], tok.encode("hello")[0]);
  EXPECT_EQ(stream[4], E);
  EXPECT_EQ(stream[5], tok.encode("world")[0]);

  expect_error([&] { tok.decode({1, tok.vocab_size()}); }, {"token id", std::to_string(tok.vocab_size())});
  expect_error([&] { tok.piece(-1); }, {"token id -1"});

  // A model whose normaliser drops "\n" has no newline piece: lines are joined without one.
  mt::text::Tokenizer plain(train_model(d, "plain", false));
  EXPECT_EQ(plain.newline_piece(), -1);
  std::vector<int> joined = plain.encode("hello");
  const std::vector<int> w2 = plain.encode("world");
  joined.insert(joined.end(), w2.begin(), w2.end());
  EXPECT_EQ(plain.encode_word("hello\nworld"), joined);
#endif
}
