#pragma once
// ProcessGroupNCCL, kept in a file of its own: only CUDA builds link it (its header pulls in CUDA and
// NCCL), and CPU builds still compile it as a check (CMake target moshi_ttt_nccl_check).
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>

namespace c10d {
class Store;
class Backend;
}  // namespace c10d

namespace mt::dist {

// The NCCL backend on the current CUDA device (set it to cuda:LOCAL_RANK first). Builds without NCCL
// throw, saying how to get one.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int64_t rank,
                                                    int64_t size, std::chrono::milliseconds timeout);

}  // namespace mt::dist
