#pragma once
// The ranks of a data-parallel job as one c10d process group: PyTorch's own collectives engine, the one
// torch.distributed runs on. CPU tensors go through ProcessGroupGloo, CUDA tensors through
// ProcessGroupNCCL (CUDA builds), so the code above this class is the same in CI and on GPUs. The
// c10d store (torchrun's agent's, or one rank 0 hosts) is used for the rendezvous and for naming a rank
// that stopped, never for tensors.
//
// Every collective is asynchronous and returns a Pending to wait on; ranks must issue the same
// collectives in the same order (as with torch.distributed). A collective that fails (a peer died, the
// network broke, the timeout passed) throws mt::Error naming the operation and, when it can tell, the
// rank that stopped.
#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dist/launch.h"

namespace c10d {
class Work;
}

namespace mt::dist {

enum class Backend { kGloo, kNccl };
const char* name(Backend b);

struct GroupOptions {
  // A collective that waits longer than this fails. Long on purpose: rank 0 writing a 7B checkpoint
  // while the others wait at the next collective is not a failure. A rank that dies is noticed at
  // once (its sockets close), not after this.
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
  std::chrono::milliseconds join_timeout = std::chrono::minutes(5);  // waiting for every rank to arrive
};

class Group;

// One collective in flight.
class Pending {
 public:
  Pending();
  ~Pending();
  Pending(Pending&&) noexcept;
  Pending& operator=(Pending&&) noexcept;
  // Blocks until done (CPU) or until the current stream is ordered after it (CUDA).
  void wait();
  bool valid() const;

 private:
  friend class Group;
  Pending(Group* g, c10::intrusive_ptr<c10d::Work> w, const char* op);
  Group* group_ = nullptr;
  c10::intrusive_ptr<c10d::Work> work_;
  const char* op_ = "";
};

class Group {
 public:
  // Meets the other ranks of `l` and builds the backend for `device`'s type. Throws naming the
  // rendezvous address and who hosts it when the meeting fails.
  static std::unique_ptr<Group> join(const Launch& l, at::Device device, const GroupOptions& o = {});
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int64_t rank() const;
  int64_t size() const;
  Backend backend() const;
  at::Device device() const;

  // Sums over ranks, in place (contiguous, same shape and dtype on every rank).
  Pending all_reduce(at::Tensor& t);
  // `in` (size() * out.numel() elements, flat) summed over ranks; this rank gets its slice
  // [rank * n, (rank + 1) * n) in `out`.
  Pending reduce_scatter(at::Tensor& out, at::Tensor& in);
  // Every rank's `in` side by side in `out` (size() * in.numel() elements, flat), in rank order.
  Pending all_gather(at::Tensor& out, at::Tensor& in);
  Pending broadcast(at::Tensor& t, int64_t root);
  void barrier();

  // Small host values, one collective each.
  void sum(std::vector<double>& v);
  std::vector<std::string> all_gather_bytes(const std::string& mine);

  // Rank 0's `value` on every rank, through the store: for small results that take rank 0 long to make
  // (an audio dataset encoded into the token cache) while the others wait, longer than a collective's
  // timeout allows. `key` names the value; each key is used once.
  std::string share_from_leader(const std::string& key, const std::string& value,
                                std::chrono::milliseconds wait = std::chrono::hours(48));

  // Turns a failed collective into the error a user can act on (see the file comment).
  [[noreturn]] void fail_collective(const char* op, const std::exception& e);

 private:
  Group();
  // Runs `launch` (which starts a collective and returns its c10d::Work) as a Pending named `op`.
  template <class F>
  Pending start(const char* op, F&& launch);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mt::dist
