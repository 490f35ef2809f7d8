#pragma once
// Build and runtime facts (libtorch version, BLAS, threads) and device selection.
#include <c10/core/Device.h>

#include <string>

namespace mt {

// "cpu" or "cuda" / "cuda:N"; throws a clear error when CUDA is asked for but not available.
c10::Device parse_device(const std::string& name);
bool cuda_available();
// Multi-line description: version, git commit, libtorch version, BLAS/parallel backend, threads, CUDA.
std::string build_info();

// Resident set size of this process in MB (/proc/self/statm; NaN where unavailable).
double rss_mb();

// Our cache root: $MOSHI_TTT_CACHE, else $XDG_CACHE_HOME/moshi-ttt, else ~/.cache/moshi-ttt; plus "/" + sub.
std::string cache_dir(const std::string& sub);
// Keeps memory that tensors free inside the process for the next ones (glibc malloc: no mmap for big
// blocks, no trimming), instead of unmapping it and faulting it in again. A training step frees and
// re-allocates the same big activations every step (the small preset's text logits at T=1024 x 4:
// 0.5 GB); on the 2-core dev VM its page faults took 40 % of the step (16.3 s -> 9.2 s per step,
// 935 -> 674 ms at T=256 x 1). Called once at startup by the CLI and the benchmarks, before big
// allocations; MOSHI_TTT_KEEP_FREED_MEMORY=0 leaves malloc as it is. The resident size then stays
// at its peak. Returns whether it applied (glibc only).
bool keep_freed_memory();

// Applies a thread count (<= 0 leaves libtorch's default).
void set_threads(int n);
// How many threads an at::parallel_for in this library's own code actually uses (1 when it was built
// without OpenMP, whatever the thread setting).
int parallel_team_size();

}  // namespace mt
