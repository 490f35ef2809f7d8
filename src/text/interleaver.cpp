#include "text/interleaver.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace mt::text {

std::vector<int64_t> build_token_stream(const std::vector<WordAlignment>& alignments, int64_t num_frames,
                                        const TokenizeFn& tokenize, const InterleaverConfig& config) {
  MT_CHECK(num_frames >= 0, "build_token_stream: num_frames must be >= 0, got ", num_frames);
  MT_CHECK(config.frame_rate > 0, "build_token_stream: frame_rate must be > 0, got ", config.frame_rate);
  MT_CHECK(static_cast<bool>(tokenize), "build_token_stream: no tokenizer given");

  std::vector<const WordAlignment*> words;
  words.reserve(alignments.size());
  for (const auto& a : alignments) {
    MT_CHECK(std::isfinite(a.start_s) && std::isfinite(a.end_s), "build_token_stream: word \"", a.word,
             "\" has non-finite times [", a.start_s, ", ", a.end_s, "]");
    if (a.end_s <= a.start_s) continue;
    if (config.keep_main_only && a.speaker != config.main_speaker) continue;
    words.push_back(&a);
  }
  std::stable_sort(words.begin(), words.end(),
                   [](const WordAlignment* x, const WordAlignment* y) { return x->start_s < y->start_s; });

  std::vector<int64_t> out(static_cast<size_t>(num_frames), config.pad);
  std::vector<int> queue;  // tokens of the current word not yet emitted, from queue_pos on
  size_t queue_pos = 0;
  int64_t last_word_end = -1;
  size_t i = 0;
  for (int64_t t = 0; t < num_frames; ++t) {
    while (i < words.size() && words[i]->start_s * config.frame_rate < double(t + 1)) {
      queue = tokenize(words[i]->word);  // replaces what the previous word had left
      queue_pos = 0;
      // Clamped to [-1, num_frames] before the cast (same stream: every frame compares alike beyond
      // those bounds), so a far-off end time cannot overflow int64 (found by the alignments fuzzer).
      const double end_frame = std::trunc(words[i]->end_s * config.frame_rate);
      last_word_end = end_frame >= double(num_frames) ? num_frames
                      : end_frame <= -1.0             ? -1
                                                      : static_cast<int64_t>(end_frame);
      ++i;
    }
    if (queue_pos < queue.size()) {
      if (t > 0 && out[t - 1] == config.pad) out[t - 1] = config.epad;
      out[t] = queue[queue_pos++];
    } else {
      out[t] = t <= last_word_end ? config.in_word_pad : config.pad;
    }
  }
  return out;
}

std::vector<WordAlignment> parse_alignments_json(const std::string& path) {
  std::ifstream f(path);
  MT_CHECK(f.good(), path, ": cannot open alignments file");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  MT_CHECK(j.is_object(), path, ": expected a JSON object with \"alignments\", got ", j.type_name());
  MT_CHECK(j.contains("alignments"), path, ": no \"alignments\" key");
  const auto& list = j["alignments"];
  MT_CHECK(list.is_array(), path, ": \"alignments\" must be an array, got ", list.type_name());

  std::vector<WordAlignment> out;
  out.reserve(list.size());
  for (size_t k = 0; k < list.size(); ++k) {
    const auto& e = list[k];
    auto where = [&] { return str(path, ": alignments[", k, "]"); };
    MT_CHECK(e.is_array() && e.size() == 3, where(), ": expected [word, [start_s, end_s], speaker], got ", e.dump());
    MT_CHECK(e[0].is_string(), where(), ": word must be a string, got ", e[0].dump());
    MT_CHECK(e[1].is_array() && e[1].size() == 2 && e[1][0].is_number() && e[1][1].is_number(), where(),
             ": times must be [start_s, end_s] numbers, got ", e[1].dump());
    MT_CHECK(e[2].is_string(), where(), ": speaker must be a string, got ", e[2].dump());
    WordAlignment a{e[0].get<std::string>(), e[1][0].get<double>(), e[1][1].get<double>(), e[2].get<std::string>()};
    MT_CHECK(std::isfinite(a.start_s) && std::isfinite(a.end_s), where(), ": non-finite times ", e[1].dump());
    out.push_back(std::move(a));
  }
  return out;
}

std::vector<WordAlignment> select_alignments(const std::vector<WordAlignment>& alignments, double start_sec,
                                             double duration_sec) {
  MT_CHECK(duration_sec >= 0, "select_alignments: duration must be >= 0, got ", duration_sec);
  const double end_sec = start_sec + duration_sec;
  std::vector<WordAlignment> out;
  for (const auto& a : alignments) {
    if (a.start_s < start_sec || !(a.start_s < end_sec)) continue;
    WordAlignment b = a;
    b.start_s -= start_sec;
    b.end_s -= start_sec;
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace mt::text
