#pragma once
// Peak bytes of live tensors on one device type (CPU by default, or CUDA) allocated inside a scope,
// through c10's memory profiling hook: the CPU allocator and CUDA's caching allocator report every
// allocation and free to the thread's PROFILER_STATE debug info, which autograd carries into its
// worker threads. Intra-op worker threads rarely allocate; their allocations are not seen. On CUDA the
// figure counts tensors (blocks handed out), not the memory the caching allocator keeps reserved. Used
// by the trainer's metrics, the benchmarks and tests to compare strategies by the memory they hold.
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>

namespace mt {

// The largest resident set this process has had, in MB (getrusage's ru_maxrss, which Linux gives in
// KiB; NaN where unavailable): what a model's load or a stream really cost, mapped file pages included.
inline double peak_rss_mb() {
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return NAN;
  return static_cast<double>(ru.ru_maxrss) * 1024.0 / 1e6;
}

class PeakMemory {
 public:
  // Trackers nest: a new one forwards every report to the tracker (or profiler) it shadows.
  explicit PeakMemory(c10::DeviceType type = c10::DeviceType::CPU)
      : info_(std::make_shared<Info>(type, c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE))),
        guard_(c10::DebugInfoKind::PROFILER_STATE, info_) {}
  // Bytes live now / at most, counted from the start of the scope (frees of older tensors subtract).
  int64_t current() const { return info_->cur.load(); }
  int64_t peak() const { return info_->peak.load(); }

 private:
  struct Info : c10::MemoryReportingInfoBase {
    Info(c10::DeviceType t, c10::DebugInfoBase* outer)
        : type(t), parent(dynamic_cast<c10::MemoryReportingInfoBase*>(outer)) {}
    c10::DeviceType type;
    c10::MemoryReportingInfoBase* parent;  // the shadowed reporter (outlives this scope), or null
    std::atomic<int64_t> cur{0}, peak{0};
    void reportMemoryUsage(void* ptr, int64_t size, size_t allocated, size_t reserved, c10::Device d) override {
      if (parent && parent->memoryProfilingEnabled()) parent->reportMemoryUsage(ptr, size, allocated, reserved, d);
      if (d.type() != type) return;
      int64_t now = cur.fetch_add(size) + size;
      int64_t p = peak.load();
      while (now > p && !peak.compare_exchange_weak(p, now)) {}
    }
    bool memoryProfilingEnabled() const override { return true; }
  };
  std::shared_ptr<Info> info_;
  c10::DebugInfoGuard guard_;
};

}  // namespace mt
