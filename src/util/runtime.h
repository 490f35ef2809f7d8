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
// Applies a thread count (<= 0 leaves libtorch's default).
void set_threads(int n);
// How many threads an at::parallel_for in this library's own code actually uses (1 when it was built
// without OpenMP, whatever the thread setting).
int parallel_team_size();

}  // namespace mt
