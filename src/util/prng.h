#pragma once
// A small deterministic generator (splitmix64) for data ordering and synthetic data. Our own rather than
// libtorch's or <random>'s distributions, whose outputs differ between versions and vendors: file orders
// and generated datasets must be reproducible so that resumed runs and saved datasets stay comparable.
#include <cstdint>

namespace mt::util {

struct SplitMix64 {
  uint64_t state;
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  // Seeded from several values (seed, epoch, file index...): each is mixed in through a full round so
  // that neighbouring values give unrelated streams.
  SplitMix64(uint64_t a, uint64_t b) : state(a) {
    uint64_t x = next() ^ (b * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull);
    state = x;
    next();
  }
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n >= 1, without modulo bias (draws in the top partial block are rejected).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    for (;;) {
      uint64_t r = next();
      if (r < limit) return r % n;
    }
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

}  // namespace mt::util
