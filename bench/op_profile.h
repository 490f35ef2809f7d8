#pragma once
// Where a benchmark's time goes, by operator and input shapes: runs a callable under PyTorch's
// profiler (CPU activity, shapes recorded) and prints a table of self time (the time of an operator
// minus the operators it called), so a matmul inside a linear counts once. Benchmarks call it when
// MOSHI_TTT_PROFILE=N is set (N rows; the benchmark's timed loop is not profiled).
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace mt::bench {

// Rows to print when `key` (a benchmark and its arguments) has not been profiled yet in this
// process (Google Benchmark may call a benchmark more than once), else 0.
inline int profile_rows(const std::string& key) {
  static std::set<std::string> done;
  const char* r = std::getenv("MOSHI_TTT_PROFILE");
  return r && done.insert(key).second ? std::atoi(r) : 0;
}

inline std::string shapes_text(const torch::autograd::profiler::KinetoEvent& e) {
  std::ostringstream s;
  if (!e.hasShapes()) return "";
  bool first = true;
  for (const auto& shape : e.shapes()) {
    if (shape.empty()) continue;  // scalars and optional arguments
    if (!first) s << ' ';
    first = false;
    s << '[';
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
    s << ']';
  }
  return s.str();
}

struct OpRow {
  double self_ms = 0, total_ms = 0;
  int64_t calls = 0;
};

using ProfileEvent = torch::autograd::profiler::KinetoEvent;

// Self time of each CPU event (ns): per thread, sorted by start, its duration minus its direct children's.
inline std::vector<double> self_times(std::vector<const ProfileEvent*>& ev) {
  std::sort(ev.begin(), ev.end(), [](auto* a, auto* b) {
    if (a->startThreadId() != b->startThreadId()) return a->startThreadId() < b->startThreadId();
    if (a->startNs() != b->startNs()) return a->startNs() < b->startNs();
    return a->durationNs() > b->durationNs();
  });
  std::vector<double> self(ev.size());
  std::vector<size_t> stack;
  for (size_t i = 0; i < ev.size(); ++i) {
    self[i] = static_cast<double>(ev[i]->durationNs());
    while (!stack.empty() && (ev[stack.back()]->startThreadId() != ev[i]->startThreadId() ||
                              ev[stack.back()]->endNs() <= ev[i]->startNs()))
      stack.pop_back();
    if (!stack.empty()) self[stack.back()] -= static_cast<double>(ev[i]->durationNs());
    stack.push_back(i);
  }
  return self;
}

// Per-run milliseconds of the events grouped by `key`, largest self time first.
template <class Key>
std::vector<std::pair<std::string, OpRow>> op_table(const std::vector<const ProfileEvent*>& ev,
                                                    const std::vector<double>& self, int repeats, Key&& key) {
  std::map<std::string, OpRow> table;
  for (size_t i = 0; i < ev.size(); ++i) {
    OpRow& r = table[key(*ev[i])];
    r.self_ms += self[i] / 1e6 / repeats;
    r.total_ms += static_cast<double>(ev[i]->durationNs()) / 1e6 / repeats;
    r.calls += 1;
  }
  std::vector<std::pair<std::string, OpRow>> sorted(table.begin(), table.end());
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.second.self_ms > b.second.self_ms; });
  return sorted;
}

// Runs `fn` `repeats` times under the profiler and prints the `rows` largest (operator, shapes)
// entries by self time, per repeat, with their share of the profiled wall time, then the largest
// operators with all their shapes together.
inline void profile_ops(const std::string& title, const std::function<void()>& fn, int rows, int repeats = 1) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig cfg(torch::profiler::impl::ProfilerState::KINETO,
                                                  /*report_input_shapes=*/true);
  const std::set<ActivityType> acts{ActivityType::CPU};
  prof::prepareProfiler(cfg, acts);
  prof::enableProfiler(cfg, acts);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) fn();
  const double run_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / repeats;
  auto result = prof::disableProfiler();
  std::vector<const ProfileEvent*> ev;
  for (const auto& e : result->events())
    if (e.deviceType() == c10::DeviceType::CPU && e.durationNs() > 0) ev.push_back(&e);
  const std::vector<double> self = self_times(ev);
  const auto by_shape =
      op_table(ev, self, repeats, [](const ProfileEvent& e) { return e.name() + "  " + shapes_text(e); });
  std::printf("\n== profile: %s (%.1f ms per run, %d run%s; self time by operator and input shapes)\n", title.c_str(),
              run_ms, repeats, repeats == 1 ? "" : "s");
  std::printf("%9s %6s %9s %7s  %s\n", "self ms", "%", "total ms", "calls", "operator  shapes");
  double shown = 0;
  for (int i = 0; i < rows && i < static_cast<int>(by_shape.size()); ++i) {
    const OpRow& r = by_shape[i].second;
    shown += r.self_ms;
    std::printf("%9.2f %5.1f%% %9.2f %7lld  %.150s\n", r.self_ms, 100.0 * r.self_ms / run_ms, r.total_ms,
                static_cast<long long>(r.calls / repeats), by_shape[i].first.c_str());
  }
  std::printf("%9.2f %5.1f%%  in the rows above\n", shown, 100.0 * shown / run_ms);
  const auto by_op = op_table(ev, self, repeats, [](const ProfileEvent& e) { return e.name(); });
  std::printf("-- by operator:");
  for (int i = 0; i < 12 && i < static_cast<int>(by_op.size()); ++i)
    std::printf("%s %s %.1f ms (%.0f%%)", i ? "," : "", by_op[i].first.c_str(), by_op[i].second.self_ms,
                100.0 * by_op[i].second.self_ms / run_ms);
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace mt::bench
