#pragma once
// Process-wide switch for the hand-fused CPU kernels (the one-query attention step, the one-pass
// RMSNorm, the TTT scan and its RoPE): on by default; tests and benchmarks turn it off to run the
// general tensor path on the same inputs.
namespace mt::util {

void set_fused_kernels_enabled(bool on);
bool fused_kernels_enabled();

// Runs a scope on the general tensor path (restores the switch's previous value).
class FusedKernelsOff {
 public:
  FusedKernelsOff() : was_(fused_kernels_enabled()) { set_fused_kernels_enabled(false); }
  ~FusedKernelsOff() { set_fused_kernels_enabled(was_); }
  FusedKernelsOff(const FusedKernelsOff&) = delete;
  FusedKernelsOff& operator=(const FusedKernelsOff&) = delete;

 private:
  bool was_;
};

// True when the CPU has AVX2 and FMA (the fused kernels are compiled for them).
bool cpu_has_avx2_fma();

}  // namespace mt::util
