#pragma once
// Paired-benchmark scoring from one score per audio file (higher = more probable): ZeroSpeech 2021
// sWUGGY ("lexical") and sBLIMP ("syntactic") with their official rules, bands and score files, and
// spoken / topic StoryCloze pairs. A pair scores 1 if the correct member has the higher score, 0.5 on
// a tie, 0 otherwise; pair scores are averaged over voices within an id, the headline is the mean
// over ids, with a deterministic bootstrap interval over ids. Nothing is dropped silently: every gold
// row or file that could not be scored is listed in `skipped` with its reason.
// Free of libtorch (like util/plot) so it compiles fast and its tests need no ATen.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mt::eval {

// File stem (name without .wav) -> score, higher = more probable.
using ItemScores = std::unordered_map<std::string, double>;

// One row of lexical/<split>/gold.csv (columns id, filename, voice, frequency, word, phones, length, correct).
// correct: 1 = real word, 0 = non-word. frequency/length may be empty ("nan") on non-word rows (read as 0).
struct LexicalGold {
  std::string id, filename, voice, word, phones;
  int64_t frequency = 0, length = 0;
  int correct = 0;
  int64_t line = 0;  // line in the gold file (0: not from a file); named in errors and skip reasons
};

// One row of syntactic/<split>/gold.csv (columns id, filename, voice, type, subtype, correct, transcription;
// transcription is optional here). correct: 1 = grammatical, 0 = ungrammatical.
struct SyntacticGold {
  std::string id, filename, voice, type, subtype, transcription;
  int correct = 0;
  int64_t line = 0;
};

struct StoryPair {
  std::string id, positive, negative;  // stems of the two files
};

struct BandRow {
  std::string label;
  int64_t n = 0;
  double score = NAN, std = NAN;  // mean and sample standard deviation (ddof 1; NaN for n < 2) of the scores
};

// lexical: word, non word; syntactic: grammatical / ungrammatical transcription (or the filenames when
// the gold has no transcription); story: positive, negative stems. score: the voice-averaged pair score.
struct PairRow {
  std::string a, b;
  double score = NAN;
  std::string id, type, subtype;  // the id (and for syntactic its type and subtype)
};

struct Interval {
  double lo = NAN, hi = NAN;
};

struct PairedResult {
  std::string task;                  // "lexical", "syntactic", "sstory", "tstory"
  double score = NAN;                // headline accuracy, a fraction: mean over ids of voice-averaged pair scores
  Interval ci;                       // bootstrap 95% interval, resampling ids
  int bootstrap = 0;                 // resamples drawn (0: no interval)
  uint64_t seed = 0;                 // bootstrap seed
  int64_t ids = 0;                   // ids scored (after voice averaging)
  int64_t pairs = 0, ties = 0;       // (id, voice) pairs scored; of them, pairs with equal scores
  std::vector<std::string> skipped;  // one line per gold row / file not scored, with the reason
  int64_t unused_scores = 0;         // scores for stems the gold never names (a wrong split or folder?)
  double invocab = NAN;              // lexical only: mean over the ids with frequency >= 1
  Interval invocab_ci;
  int64_t invocab_ids = 0;
  std::vector<BandRow> by_frequency, by_length, by_type;  // per-id scores; by_frequency always has the 5 bands
  std::vector<BandRow> by_voice;                          // accuracy per voice over (id, voice) pairs
  std::vector<PairRow> by_pair;    // one row per id, in the official order: sorted by id (syntactic: by
                                   // type, subtype, id; story: the given pair order)
  nlohmann::json to_json() const;  // everything above except by_pair (its size instead); NaN -> null
};

// The frequency band of a word count, as pandas.cut(freq, [0, 1, 5, 20, 100, inf], right=False) with labels
// oov, 1-5, 6-20, 21-100, >100 (the labels are off by one against the bins): 0 -> oov, 1..4 -> "1-5",
// 5..19 -> "6-20", 20..99 -> "21-100", >= 100 -> ">100". Throws for a negative count.
std::string frequency_band(int64_t frequency);

// Percentile with linear interpolation between order statistics (numpy's default) of sorted values;
// NaN when empty. Used for every bootstrap interval of the evaluation suite.
double sorted_percentile(const std::vector<double>& sorted, double q);

// Readers of the gold files: a CSV reader (quoted fields, doubled quotes, CRLF, any column order; columns are
// found by name). A missing column, a bad integer or a bad `correct` is an mt::Error naming the file, the
// line and the column.
std::vector<LexicalGold> read_lexical_gold(const std::string& csv_path);
std::vector<SyntacticGold> read_syntactic_gold(const std::string& csv_path);

// StoryCloze folder. If DIR/manifest.csv exists (columns id, positive, negative; file stems or names with
// .wav), its rows are the pairs. Otherwise the official flat layout (as slamkit reads it): wavs named
// <int>_<suffix>.wav, sorted by the integer prefix (numerically: 9_x before 10_y), consecutive files form a
// pair and the first of each pair is the positive; the pair ids are then 0, 1, 2, ... An odd file count, a
// missing or non-integer prefix, or two files with the same prefix is an error naming the file.
std::vector<StoryPair> read_story_pairs(const std::string& dir);

// Scoring. bootstrap: resamples of the ids (0: no interval); seed: the PRNG seed (the same seed gives the
// same interval on every run and platform). Duplicate gold keys are errors; missing or NaN scores and
// rows without a partner are listed in `skipped` and left out of every count.
PairedResult score_lexical(const std::vector<LexicalGold>& gold, const ItemScores& s, int bootstrap = 1000,
                           uint64_t seed = 0);
PairedResult score_syntactic(const std::vector<SyntacticGold>& gold, const ItemScores& s, int bootstrap = 1000,
                             uint64_t seed = 0);
PairedResult score_story(const std::string& task, const std::vector<StoryPair>& pairs, const ItemScores& s,
                         int bootstrap = 1000, uint64_t seed = 0);

// ZeroSpeech score files in out_dir (created if needed; floats as %.4f, NaN as an empty cell, atomic writes):
// lexical:   score_lexical_<split>_by_pair.csv (word,non word,score), score_lexical_<split>_by_frequency.csv
//            (frequency,n,score,std), score_lexical_<split>_by_length.csv (length,n,score,std)
// syntactic: score_syntactic_<split>_by_pair.csv (sentence,non sentence,score),
//            score_syntactic_<split>_by_type.csv (type,n,score,std)
// story:     score_<task>_by_pair.csv (positive,negative,score); split is not used.
void write_score_files(const PairedResult& r, const std::string& out_dir, const std::string& split = "dev");

// Submission file (the ZR2021 lexical/<split>.txt format): one line "<stem> <score>" per item, sorted by
// stem, scores in the shortest form that reads back to the same double. The reader is strict: exactly two
// fields separated by one space, a float score (nan/inf accepted, as Python's float() does), no duplicate
// stems; errors name the file and line.
void write_submission(const ItemScores& s, const std::string& path);
ItemScores read_submission(const std::string& path);

}  // namespace mt::eval
