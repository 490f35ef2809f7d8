#pragma once
// `moshi-ttt report RUN_DIR`: turns what a run folder holds into plots and one index page.
//   metrics.jsonl (train)          -> training_curves.png (loss, text / audio loss, eval loss),
//                                     learning_rates.png (per parameter group), grad_norms.png (total and
//                                     per group), ttt_gates.png (mean |tanh α| and ‖W_t − W_0‖)
//   eval/<task>/summary.json       -> paired_benchmarks.png (accuracy with its 95% interval, chance line)
//   eval/long_context/summary.json -> the loss-by-position and TTT-probe plots of that run, and a table
// Writes RUN_DIR/report/index.md and index.html (the same content: numbers, then the plots) and
// returns the list of files written. Sections with no data say so instead of vanishing.
#include <string>
#include <vector>

namespace mt::report {

std::vector<std::string> write_report(const std::string& run_dir);

}  // namespace mt::report
