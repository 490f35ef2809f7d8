#pragma once
// Test-only switches that put a failure of shared/spec/pitfalls.md back into the code, so that each
// guard test (tests/unit/pitfalls_test.cpp, docs/guards.md) can show that it fails on the broken
// variant. Nothing outside the tests sets them; a read is one relaxed atomic load, made once per call
// of the function it guards (never per element or per token).
#include <atomic>
#include <cstdint>

namespace mt::pitfall {

inline std::atomic<uint32_t>& switches() {
  static std::atomic<uint32_t> bits{0};
  return bits;
}

// True while the failure of pitfalls.md row `row` (1..31) is put back.
inline bool on(int row) { return (switches().load(std::memory_order_relaxed) >> row) & 1u; }

// Puts row `row`'s failure back for the lifetime of the object (tests only).
class Reintroduce {
 public:
  explicit Reintroduce(int row) : bit_(1u << row) { switches().fetch_or(bit_); }
  ~Reintroduce() { switches().fetch_and(~bit_); }
  Reintroduce(const Reintroduce&) = delete;
  Reintroduce& operator=(const Reintroduce&) = delete;

 private:
  uint32_t bit_;
};

}  // namespace mt::pitfall
