#pragma once
// The text stream of moshi-finetune (spec section 3 and 4.3): word alignments -> one text token
// per 12.5 Hz frame, PAD (3) where no new token starts and EPAD (0) on the frame before a word that
// follows padding.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mt::text {

// One aligned word, as annotate.py writes it: [word, [start_s, end_s], speaker].
struct WordAlignment {
  std::string word;
  double start_s = 0.0;
  double end_s = 0.0;
  std::string speaker;
};

// Tokens of one word (Tokenizer::encode_word, or a fake in tests).
using TokenizeFn = std::function<std::vector<int>(const std::string&)>;

struct InterleaverConfig {
  double frame_rate = 12.5;
  int64_t pad = 3;          // text_padding
  int64_t epad = 0;         // end_of_text_padding
  int64_t in_word_pad = 3;  // in_word_padding: frames up to int(end * frame_rate) of the last word
  bool keep_main_only = true;
  std::string main_speaker = "SPEAKER_MAIN";
};

// moshi-finetune's Interleaver.build_token_stream for num_frames frames. Words with end <= start
// and (keep_main_only) other speakers are dropped; the rest are taken in order of start (stable).
// At frame t every word whose start * frame_rate < t + 1 not yet taken replaces the queue of
// unemitted tokens with its own tokens and sets last_word_end = int(end * frame_rate); then a
// non-empty queue emits its front at t (turning a PAD at t - 1 into EPAD), else t is in_word_pad
// while t <= last_word_end, PAD after.
// Times are relative to the segment start (see select_alignments).
std::vector<int64_t> build_token_stream(const std::vector<WordAlignment>& alignments, int64_t num_frames,
                                        const TokenizeFn& tokenize, const InterleaverConfig& config = {});

// Reads {"alignments": [[word, [start_s, end_s], speaker], ...], ...} (other keys ignored); errors
// name the file and the entry index.
std::vector<WordAlignment> parse_alignments_json(const std::string& path);

// The words whose start lies in [start_sec, start_sec + duration_sec), in input order, with times
// shifted by -start_sec (moshi-finetune's bisection on sorted alignments, spec 4.3 step 2).
std::vector<WordAlignment> select_alignments(const std::vector<WordAlignment>& alignments, double start_sec,
                                             double duration_sec);

}  // namespace mt::text
