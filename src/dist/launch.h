#pragma once
// Where this process stands among the ranks of a data-parallel job, read from the variables torchrun
// sets (or `--nproc`, which sets the same ones), and the one-machine launcher behind `--nproc N`.
#include <cstdint>
#include <string>
#include <vector>

namespace mt::dist {

struct Launch {
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;  // on this node: picks cuda:LOCAL_RANK
  int64_t node_rank = 0;                         // GROUP_RANK
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already hosts the store at MASTER_ADDR:MASTER_PORT,
  // so every rank joins it as a client (rank 0 hosting a second one there would fail to bind).
  bool agent_store = false;
  int64_t restart_count = -1;  // TORCHELASTIC_RESTART_COUNT; -1 when torchrun did not start us
  std::string run_id;          // TORCHELASTIC_RUN_ID: namespaces our keys in a shared store
  bool active() const { return world_size > 1; }
  bool under_torchrun() const { return restart_count >= 0; }
  // "rank 1 of 4 (node 0, local rank 1)"
  std::string describe() const;
};

// torchrun's variables; none set: one process. Throws naming the variable when one is malformed, RANK
// is set without WORLD_SIZE, or LOCAL_RANK is not below LOCAL_WORLD_SIZE.
Launch launch_from_env();

// `moshi-ttt train --nproc N`: runs `argv` as N child processes of this executable with the variables
// torchrun would set (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
// MASTER_PORT on a free local port) and, unless already set, OMP_NUM_THREADS = cores / N. Waits for all.
// When one fails, the others get `grace_s` seconds to notice and report (they name the rank that
// stopped), then are killed. Returns 0 when all succeeded, else the first failure's code; writes one
// line per failed rank to stderr.
int spawn_ranks(int64_t nproc, const std::vector<std::string>& argv, int grace_s = 30);

}  // namespace mt::dist
