#pragma once
// The JSONL of an audio dataset (moshi-finetune's format): one {"path": "x.wav", "duration": seconds}
// per line, the path relative to the JSONL's folder. Torch-free, so the fuzz target links it alone.
#include <string>
#include <vector>

namespace mt::train {

struct AudioEntry {
  std::string path;  // resolved against the JSONL's folder
  std::string id;    // the path as written in the JSONL
  double duration = 0;
};

// Longest duration accepted per entry (a frame count beyond it would not fit the loader's counters
// long before it fit in memory; a day of audio is ~1.1 M frames).
constexpr double kMaxAudioEntrySeconds = 7 * 24 * 3600.0;

// Every entry; throws mt::Error naming the file and line (invalid JSON, a missing or non-string path,
// a duration that is not a finite positive number within kMaxAudioEntrySeconds, no entries at all).
std::vector<AudioEntry> read_audio_index(const std::string& jsonl);

// True when the JSONL's first record is an audio entry (has "duration", no "file_id").
bool is_audio_jsonl(const std::string& path);

}  // namespace mt::train
