#pragma once
// Is TTT doing anything? One row per TTT unit of a model (hybrid block, TTT adapter, In-Place FFN)
// from the probes of one pass: the gate's mean |tanh α|, the inner losses (with the initial weights,
// before and after each token's update), and how far the state moved from its start, ‖W_t − W_0‖.
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "lm/lm_model.h"

namespace mt::lm {

struct TTTUnitReport {
  int64_t layer = 0;
  std::string unit;                            // "hybrid", "adapter self_attn.in_proj", "inplace"
  double gate = NAN;                           // mean |tanh α| (hybrid), adapter scale, In-Place lr
  double l0 = NAN, lprev = NAN, lafter = NAN;  // mean inner losses over tokens, heads and slots
  double state_change = NAN;                   // mean over slots of ‖W_t − W_0‖ after the pass
  int64_t updates = -1;                        // In-Place chunk updates applied (slot 0)
  int64_t tokens = 0;                          // tokens the probes cover
};

std::vector<TTTUnitReport> ttt_report(const LMModelImpl& m, const std::vector<LayerProbes>& probes);
// A fixed-width table, one line per unit, with a short legend.
std::string format_report(const std::vector<TTTUnitReport>& r);
nlohmann::json report_json(const std::vector<TTTUnitReport>& r);

}  // namespace mt::lm
