#pragma once
// moshi-finetune's audio datasets as token datasets (shared/spec/moshi.md 4.1-4.3): a JSONL of
// {"path": "x.wav", "duration": seconds}, stereo audio (left = Moshi, right = user; any rate), and the
// alignments JSON beside each audio file (same stem, ".json"). Every file becomes one token shard
// [1 + moshi_q + user_q, T] (text stream from the alignments, then Moshi's codebooks, then the user's),
// T = ceil(duration * 12.5), which the token loader then cuts into duration_sec chunks in file order
// (so TTT state persists over a file's chunks and resets at the next file).
//
// Mimi codes are cached on disk: a shard's name is a hash of the audio bytes, the alignments' bytes,
// the codec (weights and config), the tokenizer and the stream layout, so a second epoch or run reads
// the shard instead of encoding again, and any change to an input re-encodes that file only.
//
// Audio-only long-form data (LibriLight style): an entry with no alignments file beside it is
// audio-only: its text stream is all padding. Mono audio goes on both audio streams, or on Moshi's
// stream with silence (the codec's codes of zeros) on the user's (`user_stream: silence`). The number
// of audio-only entries is reported. With `shuffle: false` the loader reads each file continuously
// across consecutive training sequences of one batch slot, so persistent TTT state spans the file.
//
// Differences from moshi-finetune, on purpose: the text stream is built once over the whole file, so a
// word whose tokens run past a chunk boundary keeps them (moshi-finetune builds it per chunk and drops
// them); frames beyond the audio's end do not exist (moshi-finetune pads the last chunk with -1, which
// the token loader also does).
#include <cstdint>
#include <string>

#include "text/interleaver.h"
#include "train/audio_index.h"

namespace mt::train {

struct AudioDataConfig {
  std::string mimi_weights;     // Mimi checkpoint (.safetensors)
  std::string mimi_config;      // its config JSON ("" = the released model)
  std::string tokenizer;        // SentencePiece model of the text stream ("" = no alignments needed: all PAD)
  std::string cache_dir;        // where shards and indexes go
  int64_t moshi_codebooks = 8;  // the LM's dep_q
  int64_t user_codebooks = 8;   // the LM's n_q - dep_q
  text::InterleaverConfig text;
  std::string user_stream = "copy";  // mono audio: "copy" (same audio on both streams) | "silence"
  std::string device = "cpu";
  bool quiet = false;
};

// Encodes what is not cached yet (showing progress), writes a token index for the JSONL into the cache
// and returns its path (read it with read_token_index). Errors name the JSONL line or the audio file.
std::string prepare_audio_tokens(const std::string& jsonl, const AudioDataConfig& cfg);

// FNV-1a 64 of a file's bytes (cache keys); throws naming the file when it cannot be read.
uint64_t file_hash(const std::string& path);

}  // namespace mt::train
