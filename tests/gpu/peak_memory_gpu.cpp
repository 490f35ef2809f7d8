// PeakMemory on CUDA: the trainer's peak_mem_mb and bench_train's peak_MB count the training device's
// tensors, so a CUDA run must see its CUDA allocations (and a CPU tracker must not), including those of
// the backward pass, which runs on autograd's device thread.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include "util/peak_memory.h"

using namespace mt;

TEST(PeakMemoryGpu, CountsCudaTensorsIncludingAutogradBackward) {
  REQUIRE_CUDA();
  const int64_t MiB4 = 4 << 20;
  at::Tensor w = at::randn({1024, 1024}, at::TensorOptions().device(at::kCUDA)).requires_grad_();
  {
    PeakMemory cuda(c10::DeviceType::CUDA);
    {
      at::Tensor a = at::empty({MiB4}, at::TensorOptions().device(at::kCUDA).dtype(at::kByte));
      EXPECT_GE(cuda.current(), MiB4);
    }
    EXPECT_LT(cuda.current(), MiB4);  // freed again
    EXPECT_GE(cuda.peak(), MiB4);
  }
  {
    PeakMemory cpu;
    at::Tensor a = at::empty({MiB4}, at::TensorOptions().device(at::kCUDA).dtype(at::kByte));
    EXPECT_EQ(cpu.peak(), 0);
  }
  at::Tensor y = w.matmul(w).sum();
  PeakMemory backward(c10::DeviceType::CUDA);
  y.backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GE(backward.peak(), MiB4);  // at least w.grad (4 MiB of float32)
}

TEST(PeakMemoryGpu, NestedTrackersBothCount) {
  REQUIRE_CUDA();
  PeakMemory outer(c10::DeviceType::CUDA);
  PeakMemory inner(c10::DeviceType::CUDA);
  at::Tensor a = at::empty({1 << 20}, at::TensorOptions().device(at::kCUDA).dtype(at::kByte));
  EXPECT_GE(inner.peak(), 1 << 20);
  EXPECT_GE(outer.peak(), 1 << 20);
}
