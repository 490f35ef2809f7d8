#pragma once
// Small, clearly-labelled SYNTHETIC paired-likelihood test sets, spoken by espeak-ng and written in the
// official layouts (ZeroSpeech 2021 lexical / syntactic dev folders, Spoken StoryCloze-style story pairs),
// so the scorer that reads them also reads the real data. See shared/spec/eval.md sections 1.1-1.3
// (layouts) and 4.5 (how these sets are meant to be built). Numbers measured on them are NOT comparable
// to published sWUGGY / sBLIMP / sSC / tSC results; the README.md written next to them says so.
//
// espeak-ng is run as a child process (popen); it must be on PATH. This header needs no libtorch; the
// implementation reads and levels the wavs through audio/audio_io.
#include <cstdint>
#include <string>
#include <vector>

#include "util/prng.h"

namespace mt::eval {

struct SyntheticOptions {
  std::vector<std::string> voices = {"en-us+m3", "en-us+f3", "en-gb+m3", "en-us+f4"};  // espeak-ng voices
  int64_t lexical_words = 40;    // word / non-word pairs (ids); 0 skips the set
  int64_t syntactic_pairs = 24;  // per voice: pairs over a few templated types; 0 skips the set
  int64_t stories = 12;          // story pairs for each of sstory and tstory; 0 skips both
  uint64_t seed = 0;             // everything deterministic given the seed
  bool quiet = false;            // else one progress line per set on stderr
  int speed = 160;               // espeak-ng -s (words per minute), the same for every file
  bool equalize = true;          // trim leading/trailing silence (same rule for every clip) and scale
                                 // every clip to the same RMS, so level gives nothing away
  int jobs = 2;                  // espeak-ng processes run side by side
};

struct SyntheticSummary {
  int64_t lexical_files = 0, syntactic_files = 0;
  int64_t story_pairs = 0;  // pairs in each of sstory and tstory
  std::string root;         // absolute path
  // Confound check: accuracy of "the longer clip is the correct one" (ties 0.5) on the written wavs.
  // Near 0.5 is good; far from it means duration alone could solve the set. -1 when the set was skipped.
  double lexical_longer_wins = -1, syntactic_longer_wins = -1;
  double sstory_longer_wins = -1, tstory_longer_wins = -1;
};

// True when `espeak-ng` can be found on PATH.
bool espeak_available();

// Writes, under root (created if needed; a non-empty root is only accepted if an earlier run of this
// generator made it, and then its four set folders are replaced):
//   lexical/dev/<id11>.wav + lexical/dev/gold.csv   (id,filename,voice,frequency,word,phones,length,correct)
//   syntactic/dev/<id11>.wav + syntactic/dev/gold.csv (id,filename,voice,type,subtype,correct,transcription)
//   sstory/<n>_pos.wav, <n>_neg.wav + sstory/manifest.csv (id,positive,negative) + transcripts.csv
//       (plausible-but-wrong ending, one voice: voices[0])
//   tstory/... the same, negative = the correct ending of another story
//   README.md: synthetic, TTS (espeak-ng), not comparable to published numbers; how it was made; the seed.
// `filename` / `positive` / `negative` cells are file stems (no folder, no .wav), as in the official gold.
// Gold rows are ordered id, voice, then correct before incorrect, so the official scorer's positional
// pairing of the i-th correct row with the i-th incorrect row also pairs them correctly.
// Throws mt::Error (espeak-ng missing, a failed command with its command line and output, bad options).
SyntheticSummary make_synthetic_sets(const std::string& root, const SyntheticOptions& o);

// n letters from [A-Za-z], like the official ZeroSpeech file names (e.g. "aAAfmkmQpVz"), drawn from rng
// (the project's splitmix64, util/prng.h, which every random choice of the sets uses).
std::string random_letters_id(util::SplitMix64& rng, int n = 11);

}  // namespace mt::eval
