#include <ATen/Parallel.h>
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Tests are small; two threads keep timings stable and match the CI machine.
  at::set_num_threads(2);
  return RUN_ALL_TESTS();
}
