#pragma once
// FNV-1a 64-bit hashing for on-disk cache keys (token shards, encoded evaluation files): stable across
// runs, platforms and builds, which std::hash is not.
#include <cstdint>
#include <cstdio>
#include <string>

namespace mt::hash {

constexpr uint64_t kFnvOffset = 1469598103934665603ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

inline uint64_t fnv(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * kFnvPrime;
  return h;
}

inline uint64_t fnv_str(uint64_t h, const std::string& s) { return fnv(h, s.data(), s.size()); }

inline uint64_t fnv_u64(uint64_t h, uint64_t v) { return fnv(h, &v, sizeof v); }

// 16 lower-case hex digits.
inline std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

// FNV-1a of a file's bytes; throws mt::Error naming the file when it cannot be read.
uint64_t file_hash(const std::string& path);

}  // namespace mt::hash
