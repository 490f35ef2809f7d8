#pragma once
// Synthetic token files with long-range structure, for the demo that compares a model with local
// attention against the same model with TTT layers: part of every file is predictable only by a model
// that remembers content from much further back than its attention window.
//
// Structure of one file, codes [K, T] (stream 0 = text, streams 1..K-1 = audio codebooks):
//   - The file draws its own `num_motifs` motifs, each a random block [K, motif_len] (text ids in
//     [num_motifs, text_vocab), audio ids in [0, audio_vocab)). Motifs are per file, so a model cannot
//     memorise them across files: it has to pick them up within the file.
//   - Text ids 0..num_motifs-1 are reserved as cue tokens; noise and motifs never use them.
//   - The file is a sequence of noise frames (uniform random tokens) and motif occurrences. An occurrence
//     of motif m is one cue frame (text = m, audio = noise) followed by the motif_len frames of motif m
//     on every stream. At each free position an occurrence starts with probability `repeat_prob`, if some
//     motif is eligible: one that has not occurred yet, or whose previous occurrence ended at least
//     `min_gap` frames before the new cue. The motif is drawn uniformly among the eligible ones.
//   - The first occurrence of a motif is unpredictable; every later one repeats it exactly, at least
//     min_gap + motif_len + 1 frames after the frame it copies. The cue says *which* motif follows, so a
//     model with memory of the first occurrence predicts the whole later occurrence, and one whose
//     attention window is shorter than min_gap cannot do better than chance there.
// "Recall" frames are the motif frames of the later occurrences (not their cue frames): see recall_mask.
//
// Pattern "lexicon" (the demo's): every file draws its own permutation pi of the text ids. Text frame t
// continues the chain, x_t = pi(x_{t-1}), with probability `follow_prob`, else it is a fresh uniform id.
// Audio codebook 1 repeats the previous frame's text (so each frame shows one transition a -> pi(a));
// the other codebooks hold a constant code (silence). They carry no information of their own. (With
// every codebook a scrambled copy of the text instead, the tiny model's TTT layer did not learn the
// task within 1000 steps; with these it does within a few hundred.) A model learns the file's pi only from the
// transitions it has seen: local attention sees the last few, a TTT layer can accumulate all of them. "Recall" frames
// are those whose predecessor x_{t-1} was last seen as a predecessor more than min_gap frames back (and was seen):
// predicting them needs a memory longer than min_gap.
// Pattern "repeat" (the task of shared/spec/demo.md, on every stream): the first half of each file is
// uniform random tokens, the second half repeats it frame for frame. Recall frames are the second half:
// each repeats the frame frames/2 back.
//
// Everything is deterministic given the config (own PRNG; file i's content depends only on seed and i).
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mt::train {

struct SyntheticConfig {
  std::string pattern = "motifs";  // motifs | lexicon | repeat
  int64_t num_files = 64;
  int64_t frames = 256;      // T per file
  int64_t streams = 5;       // K = 1 text + n_q audio streams (the tiny preset: text + 4 audio)
  int64_t text_vocab = 64;   // text ids in [0, text_vocab); 0..num_motifs-1 are the cue tokens
  int64_t audio_vocab = 64;  // audio ids in [0, audio_vocab)
  int64_t motif_len = 8;     // frames per motif
  int64_t num_motifs = 4;    // motifs per file
  double repeat_prob = 0.5;  // per free position: start an occurrence (if a motif is eligible)
  int64_t min_gap = 64;      // frames between an occurrence's end and the next cue of the same motif
                             // (the tiny preset's attention context is 32)
  double follow_prob = 0.8;  // lexicon: probability that a text frame follows the file's permutation
  uint64_t seed = 0;
};

// Throws mt::Error naming the field when the config cannot produce the structure above.
void check_synthetic_config(const SyntheticConfig& cfg);

// The files ("syn-00000", codes [K, T] int64), ready for write_token_dataset. If `recall_masks` is given,
// it receives one [T] bool mask per file (true on recall frames), equal to recall_mask(codes, cfg).
std::vector<std::pair<std::string, at::Tensor>> make_synthetic_files(const SyntheticConfig& cfg,
                                                                     std::vector<at::Tensor>* recall_masks = nullptr);

// Recall frames of a file made with `cfg`, recovered from its codes [K, T] alone so that an evaluator can
// score files read back from disk: [T] bool. Motifs (text_vocab/num_motifs/motif_len are used): true on
// the motif frames of every occurrence of a motif after its first, found via the cue tokens. Repeat: the
// second half. Lexicon
// (min_gap is used): true where the text predecessor was last seen as a predecessor more than min_gap
// frames back.
at::Tensor recall_mask(const at::Tensor& codes, const SyntheticConfig& cfg);

}  // namespace mt::train
