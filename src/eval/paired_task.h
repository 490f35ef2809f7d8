#pragma once
// `moshi-ttt eval paired`: one paired-likelihood benchmark end to end. Finds the files in the official
// layout, encodes them (cached), scores them (eval/paired.h), applies the official rule
// (eval/zr_score.h) and writes, under OUT/eval/<task>/:
//   submission/<lexical|syntactic>/<split>.txt  ZeroSpeech submission lines "<stem> <score>" (or
//                                               <task>.txt for StoryCloze), the chosen reduction
//   score_*.csv                                 the ZeroSpeech score files (by pair / band / length / type)
//   items.csv                                   every clip: frames, scored tokens, score under each reduction
//   summary.json                                the headline with its bootstrap 95% interval, item counts,
//                                               ties, skipped items with reasons, the accuracy under every
//                                               reduction, the "longer clip wins" confound, the settings
// and appends the summary as one line to OUT/eval/results.jsonl (read by `moshi-ttt report`).
// Layouts: swuggy DATA/lexical/<split>/ (gold.csv + wavs), sblimp DATA/syntactic/<split>/, sstory and
// tstory DATA/<task>/ or DATA/ itself (manifest.csv, or the official <int>_<suffix>.wav sort rule);
// DATA may also be the folder that holds gold.csv. Without gold.csv (the official test splits) only the
// submission is written.
#include <nlohmann/json.hpp>

#include <string>

#include "eval/paired.h"
#include "lm/lm_model.h"

namespace mt::eval {

struct PairedTaskOptions {
  std::string task;  // swuggy | sblimp | sstory | tstory
  std::string data;  // dataset root (see above)
  std::string split = "dev";
  std::string out_dir;  // run folder
  std::string reduction = "mean";
  ScoringOptions scoring;
  int bootstrap = 1000;
  uint64_t seed = 0;
  std::string model_origin;  // shown in the summary
};

// Runs the benchmark and returns the summary written to summary.json.
nlohmann::json run_paired_task(const lm::LMModelImpl& m, CodesCache& cache, const PairedTaskOptions& o);

// A short human-readable rendering of a summary (what the CLI prints).
std::string format_paired_summary(const nlohmann::json& summary);

}  // namespace mt::eval
