#pragma once
// `moshi-ttt collectives`: every collective the trainer uses, on this job's process group, checked for
// exact results and timed (as nccl-tests does for NCCL). It guards the pairing of libtorch's compiled
// Gloo with the Gloo headers we build against, and measures what the training step can expect.
#include <cstdint>
#include <string>
#include <vector>

#include "dist/group.h"

namespace mt::dist {

enum class Collective { kAllReduce, kReduceScatter, kAllGather, kBroadcast };
const char* name(Collective c);

struct SelfTestOptions {
  std::vector<int64_t> sizes_bytes;  // the whole tensor of each collective (all_reduce's, reduce_scatter's
                                     // input, all_gather's output); rounded to whole elements per rank
  std::vector<at::ScalarType> dtypes{at::kFloat, at::kBFloat16};
  std::vector<Collective> ops{Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                              Collective::kBroadcast};
  int iters = 1;  // timed repetitions after one checked run
};

struct SelfTestResult {
  Collective op;
  at::ScalarType dtype;
  int64_t bytes = 0;     // as run (whole elements)
  int64_t wrong = 0;     // elements that differ from the exact answer (this rank's view)
  double seconds = 0;    // mean per timed run, slowest rank
  double algbw_gbs = 0;  // bytes / seconds
  double busbw_gbs = 0;  // nccl-tests' bus bandwidth: algbw x 2(n-1)/n (all_reduce), (n-1)/n (others)
};

// Runs every (dtype, size, op), collectively: every rank must call it with the same options. Results
// are the same on every rank (wrong counts summed over ranks).
std::vector<SelfTestResult> run_selftest(Group& g, const SelfTestOptions& o);

// "1", "4KiB", "256MiB", "1e6" (bytes).
int64_t parse_bytes(const std::string& s);

}  // namespace mt::dist
