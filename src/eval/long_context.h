#pragma once
// Long-context loss by position (shared/spec/eval.md 3.3) and the TTT probes of the same run (the TTT
// paper's Figure 5: inner loss with W_0, with the state before each token's update and after it, per
// TTT unit and position, and ‖W_t − W_0‖): `moshi-ttt eval long-context` and `eval ttt-probe`.
//
// Each file (audio, or codes) is streamed through the LM once per variant, teacher-forced, with the
// KV caches and TTT states carried over the whole file. Variants:
//   persist        the model as it runs in a conversation (TTT state kept over the whole file)
//   ttt-reset:N    control: TTT states reset to W_0 every N frames (attention untouched), so any gain of
//                  `persist` over it beyond N frames is the TTT memory
//   reset:N        control: everything reset every N frames (no context beyond N frames)
//   no-ttt         control: TTT units switched off (hybrid gates and adapter scales 0, In-Place lr 0)
// Per position t the loss is the mean CE over the scored audio codebooks (also semantic-only, the
// 100:1 weighted one and the text stream), averaged over the files that reach t. Reported: windowed means
// at chosen positions, a least-squares slope of the loss against log2(position) (nats per doubling) with a
// bootstrap 95% interval over files (files resampled, not positions), and the attention window.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "eval/paired.h"
#include "lm/lm_model.h"

namespace mt::eval {

struct LongContextOptions {
  std::vector<std::string> variants = {"persist"};
  std::vector<int64_t> positions;  // centres of the windowed means; empty: 1k..24k that fit, else automatic
  int64_t window = 0;              // width of a window / bin in frames; 0: automatic
  int64_t fit_from = 0;            // first frame of the slope fit; 0: the attention window when it fits, else one bin
  int64_t chunk = 16;              // frames per streaming call
  int64_t max_frames = 0;          // truncate files (0: whole files)
  bool probes = false;             // record the TTT probes (ttt-probe)
  std::string loss = "audio";      // the headline curve: audio (mean over scored codebooks), semantic, weighted or text
  ScoringOptions scoring;          // placement and text stream of audio / Mimi-code inputs
  int bootstrap = 1000;
  uint64_t seed = 0;
  std::string out_dir;  // run folder: writes OUT/eval/long_context/...
  std::string model_origin;
  bool quiet = false;
};

// One input file: an audio file (encoded through `cache`), Mimi codes (.safetensors "codes" [K, T] or
// [C, K, T], channel 0), or an LM token shard ([1 + n_q, T], used as is).
at::Tensor long_context_input(const lm::LMModelImpl& m, const std::string& path, CodesCache* cache,
                              const ScoringOptions& o);

// Files listed in LIST (one path per line, # comments; relative to the list's folder), every audio /
// .safetensors file of a folder (sorted), or one such file.
std::vector<std::string> read_file_list(const std::string& list_or_dir);

// Runs every variant over every file, writes curve.csv, summary.json, probes.csv (with probes) and the
// PNG plots into OUT/eval/long_context/, appends to OUT/eval/results.jsonl and returns the summary.
// The model is not changed (no-ttt restores what it switched off).
nlohmann::json run_long_context(lm::LMModelImpl& m, const std::vector<std::string>& files, CodesCache* cache,
                                const LongContextOptions& o);

std::string format_long_context_summary(const nlohmann::json& summary);

// Least-squares slope of y against log2(x) (points with non-finite y skipped); NaN with < 2 points.
double log2_slope(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace mt::eval
