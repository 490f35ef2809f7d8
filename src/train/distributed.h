#pragma once
// Data-parallel training across processes (one machine or several), on PyTorch's c10d rendezvous:
// rank 0 hosts a c10d::TCPStore at MASTER_ADDR:MASTER_PORT and every rank exchanges its gradients
// through it. Reductions sum the ranks' contributions in rank order, so every rank ends a step with the
// same bits and the replicas never drift apart.
//
// Why not ProcessGroupGloo: the PyPI wheel ships libtorch's Gloo symbols but not Gloo's headers, which
// ProcessGroupGloo.hpp includes, so C++ cannot construct one from the wheel alone. The store-based
// exchange moves world_size x (gradient bytes) through rank 0 per step: right for the CPU and small-model
// runs it is meant for, not for a multi-GPU 7B run.
//
// Launch: `moshi-ttt train --nproc N` starts N local ranks (spawn_ranks); on several machines, start one
// `moshi-ttt train` per rank with torchrun's variables RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mt::train {

struct DistInfo {
  int64_t rank = 0, world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool active() const { return world_size > 1; }
};

// torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); none set: a single process.
// Throws naming the variable when one is malformed or RANK is set without WORLD_SIZE.
DistInfo dist_from_env();

class Collective {
 public:
  // Rendezvous of all ranks (rank 0 hosts the store); throws after `timeout` naming the missing side.
  explicit Collective(const DistInfo& info, std::chrono::seconds timeout = std::chrono::seconds(900));
  ~Collective();
  Collective(const Collective&) = delete;
  Collective& operator=(const Collective&) = delete;

  int64_t rank() const { return info_.rank; }
  int64_t world_size() const { return info_.world_size; }

  // Every rank's bytes, in rank order, on every rank.
  std::vector<std::string> all_gather(const std::string& bytes);
  // Mean over ranks, in place. Tensors are summed in float32 (float64 for float64 tensors) in rank order
  // and divided by world_size; shapes and dtypes must agree across ranks (checked).
  void all_reduce_mean(const std::vector<at::Tensor>& tensors);
  void all_reduce_sum(std::vector<double>& values);
  void barrier();

 private:
  struct Impl;
  DistInfo info_;
  std::unique_ptr<Impl> impl_;
  int64_t seq_ = 0;
};

// `moshi-ttt train --nproc N`: runs `argv` (without --nproc) as N child processes of this executable
// with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set (a free local port) and, unless already set,
// OMP_NUM_THREADS = cores / N. Waits for all; when one fails, stops the others. Returns the exit code
// (0 when all succeeded) and writes one line per failed rank to stderr.
int spawn_ranks(int64_t nproc, const std::vector<std::string>& argv);

}  // namespace mt::train
