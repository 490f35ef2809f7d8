#pragma once
// Peak bytes of live CPU tensors allocated by this thread inside a scope, through c10's memory
// profiling hook (the CPU allocator reports every allocation and free while a MemoryReportingInfoBase
// is installed as PROFILER_STATE). Intra-op worker threads rarely allocate; their allocations are not
// seen. Used by the benchmarks and tests to compare strategies by the memory they hold.
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <algorithm>
#include <atomic>
#include <memory>

namespace mt {

class PeakMemory {
 public:
  PeakMemory() : info_(std::make_shared<Info>()), guard_(c10::DebugInfoKind::PROFILER_STATE, info_) {}
  // Bytes live now / at most, counted from the start of the scope (frees of older tensors subtract).
  int64_t current() const { return info_->cur.load(); }
  int64_t peak() const { return info_->peak.load(); }

 private:
  struct Info : c10::MemoryReportingInfoBase {
    std::atomic<int64_t> cur{0}, peak{0};
    void reportMemoryUsage(void*, int64_t size, size_t, size_t, c10::Device d) override {
      if (!d.is_cpu()) return;
      int64_t now = cur.fetch_add(size) + size;
      int64_t p = peak.load();
      while (now > p && !peak.compare_exchange_weak(p, now)) {
      }
    }
    bool memoryProfilingEnabled() const override { return true; }
  };
  std::shared_ptr<Info> info_;
  c10::DebugInfoGuard guard_;
};

}  // namespace mt
