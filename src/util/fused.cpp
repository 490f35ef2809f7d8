#include "util/fused.h"

#include <atomic>

namespace mt::util {

namespace {
std::atomic<bool> g_fused{true};
}  // namespace

void set_fused_kernels_enabled(bool on) { g_fused.store(on); }
bool fused_kernels_enabled() { return g_fused.load(); }

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace mt::util
