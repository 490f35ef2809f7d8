#include "lm/ttt_probes.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>

namespace mt::lm {

namespace {
double mean_or_nan(const at::Tensor& t) {
  return t.defined() && t.numel() ? t.to(at::kDouble).mean().item<double>() : NAN;
}

void fill_probes(TTTUnitReport& r, const ttt::TTTProbes& p) {
  r.l0 = mean_or_nan(p.l0);
  r.lprev = mean_or_nan(p.lprev);
  r.lafter = mean_or_nan(p.lafter);
  r.state_change = mean_or_nan(p.w_delta_norm);
  r.tokens = p.l0.defined() ? p.l0.size(-1) : 0;
}
}  // namespace

std::vector<TTTUnitReport> ttt_report(const LMModelImpl& m, const std::vector<LayerProbes>& probes) {
  std::vector<TTTUnitReport> out;
  const auto& layers = m.transformer->layer_ptrs;
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerProbes* p = l < probes.size() ? &probes[l] : nullptr;
    for (const nn::AddonBase* a : layers[l]->addons()) {
      const auto* unit = dynamic_cast<const TTTUnit*>(a);
      if (!unit) continue;
      TTTUnitReport r;
      r.layer = static_cast<int64_t>(l);
      r.unit = a->unit();
      r.gate = unit->gate();
      if (p && dynamic_cast<const HybridTTTImpl*>(a)) fill_probes(r, p->hybrid);
      if (const auto* ad = dynamic_cast<const TTTAdapterImpl*>(a);
          p && ad && ad->index < static_cast<int64_t>(p->adapters.size()))
        fill_probes(r, p->adapters[ad->index]);
      if (p && dynamic_cast<const InPlaceTTTImpl*>(a)) {
        r.state_change = mean_or_nan(p->inplace_dw_norm);
        r.updates = p->inplace_updates;
      }
      out.push_back(r);
    }
  }
  return out;
}

std::string format_report(const std::vector<TTTUnitReport>& r) {
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-5s  %-28s  %8s  %9s  %9s  %9s  %10s  %7s\n", "layer", "TTT unit", "gate", "loss W0",
                "loss prev", "loss after", "|W-W0|", "updates");
  s += buf;
  auto num = [](double v, const char* fmt) {
    char b[32];
    if (std::isnan(v)) return std::string("-");
    std::snprintf(b, sizeof b, fmt, v);
    return std::string(b);
  };
  for (const auto& u : r) {
    std::snprintf(buf, sizeof buf, "%-5lld  %-28s  %8s  %9s  %9s  %9s  %10s  %7s\n", (long long)u.layer, u.unit.c_str(),
                  num(u.gate, "%.4g").c_str(), num(u.l0, "%.4f").c_str(), num(u.lprev, "%.4f").c_str(),
                  num(u.lafter, "%.4f").c_str(), num(u.state_change, "%.4g").c_str(),
                  u.updates < 0 ? "-" : std::to_string(u.updates).c_str());
    s += buf;
  }
  s += "gate: mean |tanh(alpha)| (hybrid), scale (adapter), lr (inplace). Losses: the inner objective with the\n"
       "initial weights, before and after each token's update (after < prev < W0 when TTT learns). |W-W0|: how far\n"
       "the state moved from its start, mean over streams; 0 means TTT did nothing.\n";
  return s;
}

nlohmann::json report_json(const std::vector<TTTUnitReport>& r) {
  nlohmann::json a = nlohmann::json::array();
  auto val = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  for (const auto& u : r) {
    nlohmann::json j;
    j["layer"] = u.layer;
    j["unit"] = u.unit;
    j["gate"] = val(u.gate);
    j["loss_w0"] = val(u.l0);
    j["loss_prev"] = val(u.lprev);
    j["loss_after"] = val(u.lafter);
    j["state_change"] = val(u.state_change);
    if (u.updates >= 0) j["updates"] = u.updates;
    j["tokens"] = u.tokens;
    a.push_back(j);
  }
  return a;
}

}  // namespace mt::lm
