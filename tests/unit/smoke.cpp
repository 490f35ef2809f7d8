#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "util/peak_memory.h"
#include "util/runtime.h"
TEST(Runtime, BuildInfoMentionsLibtorch) { EXPECT_NE(mt::build_info().find("libtorch"), std::string::npos); }

TEST(Runtime, OurParallelLoopsUseTheThreadsTheyAreGiven) {
  // at::parallel_for in the library's own kernels (the TTT scan, the gemv, the attention step) runs on
  // one thread unless the library is compiled with OpenMP: it was, unnoticed, for months.
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  const int team = mt::parallel_team_size();
  at::set_num_threads(before);
  EXPECT_EQ(team, 2);
}

// Trackers nest (the trainer's per-step tracker inside a benchmark's), and count only their device type.
TEST(PeakMemory, NestedTrackersBothCountAndOnlyTheirDevice) {
  const int64_t MiB = 1 << 20;
  mt::PeakMemory outer;
  {
    mt::PeakMemory inner;
    mt::PeakMemory cuda_only(c10::DeviceType::CUDA);
    at::Tensor a = at::empty({2 * MiB}, at::kByte);
    EXPECT_EQ(cuda_only.peak(), 0);
    EXPECT_GE(inner.peak(), 2 * MiB);
    EXPECT_GE(outer.peak(), 2 * MiB);
  }
  EXPECT_LT(outer.current(), MiB);  // the tensor was freed and the outer tracker saw it
}
