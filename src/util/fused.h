#pragma once
// Process-wide switch for the hand-fused CPU kernels (the one-query attention step, the one-pass
// RMSNorm, the TTT-Linear scan): on by default; tests and benchmarks turn it off to run the general
// tensor path on the same inputs.
namespace mt::util {

void set_fused_kernels_enabled(bool on);
bool fused_kernels_enabled();

// True when the CPU has AVX2 and FMA (the fused kernels are compiled for them).
bool cpu_has_avx2_fma();

}  // namespace mt::util
