#include "dist/nccl_backend.h"

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#ifdef MOSHI_TTT_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "util/error.h"

namespace mt::dist {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int64_t rank,
                                                    int64_t size, std::chrono::milliseconds timeout) {
#ifdef MOSHI_TTT_NCCL
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(rank), static_cast<int>(size), opts);
#else
  (void)store, (void)rank, (void)size, (void)timeout;
  fail(
      "data parallel on CUDA tensors needs NCCL, and this build has none: configure with -DMOSHI_TTT_CUDA=ON "
      "on a machine with the CUDA wheel (scripts/gpu/build.sh)");
#endif
}

}  // namespace mt::dist
