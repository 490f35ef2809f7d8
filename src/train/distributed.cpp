#include "train/distributed.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "util/error.h"

namespace mt::train {

namespace {

int64_t env_int(const char* name, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  MT_CHECK(v && *v, "data parallel: environment variable ", name, " is not set");
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v, &end, 10);
  MT_CHECK(errno == 0 && end && *end == '\0' && x >= lo && x <= hi, "data parallel: ", name, "='", v,
           "' is not an integer in [", lo, ", ", hi, "]");
  return x;
}

}  // namespace

DistInfo dist_from_env() {
  DistInfo d;
  const bool has_rank = std::getenv("RANK") != nullptr, has_world = std::getenv("WORLD_SIZE") != nullptr;
  if (!has_rank && !has_world) return d;
  MT_CHECK(has_rank && has_world, "data parallel: RANK and WORLD_SIZE must be set together (torchrun's variables)");
  d.world_size = env_int("WORLD_SIZE", 1, 1 << 20);
  d.rank = env_int("RANK", 0, d.world_size - 1);
  if (d.world_size == 1) return d;
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) d.master_addr = a;
  if (std::getenv("MASTER_PORT")) d.master_port = static_cast<int>(env_int("MASTER_PORT", 1, 65535));
  return d;
}

struct Collective::Impl {
  c10::intrusive_ptr<c10d::Store> store;
};

Collective::Collective(const DistInfo& info, std::chrono::seconds timeout)
    : info_(info), impl_(std::make_unique<Impl>()) {
  MT_CHECK(info.world_size >= 1 && info.rank >= 0 && info.rank < info.world_size, "data parallel: rank ", info.rank,
           " is not in [0, world_size = ", info.world_size, ")");
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(info.master_port);
  o.isServer = info.rank == 0;
  o.numWorkers = static_cast<std::size_t>(info.world_size);
  o.waitWorkers = true;
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(info.master_addr, o);
  } catch (const std::exception& e) {
    fail("data parallel: rank ", info.rank, " of ", info.world_size, " could not join the rendezvous at ",
         info.master_addr, ":", info.master_port, " (", info.rank == 0 ? "hosting it" : "rank 0 hosts it",
         "): ", e.what());
  }
}

Collective::~Collective() = default;

std::vector<std::string> Collective::all_gather(const std::string& bytes) {
  const int64_t seq = seq_++;
  auto key = [](int64_t s, int64_t r) { return "mt/" + std::to_string(s) + "/" + std::to_string(r); };
  auto& st = *impl_->store;
  std::vector<std::string> out(static_cast<size_t>(info_.world_size));
  try {
    st.set(key(seq, info_.rank), std::vector<uint8_t>(bytes.begin(), bytes.end()));
    for (int64_t r = 0; r < info_.world_size; ++r) {
      if (r == info_.rank) {
        out[r] = bytes;
        continue;
      }
      std::vector<uint8_t> v = st.get(key(seq, r));  // waits (up to the timeout) until rank r has set it
      out[r].assign(v.begin(), v.end());
    }
    // Every rank has set its key of `seq` only after reading all keys of seq - 1: our old key is free.
    if (seq > 0) st.deleteKey(key(seq - 1, info_.rank));
  } catch (const mt::Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("data parallel: rank ", info_.rank, ": exchange ", seq,
         " failed (another rank stopped or timed out?): ", e.what());
  }
  return out;
}

void Collective::all_reduce_mean(const std::vector<at::Tensor>& tensors) {
  if (info_.world_size == 1 || tensors.empty()) return;
  // One message: every tensor's bytes in the accumulation dtype, then a header check of sizes.
  std::vector<at::Tensor> acc;
  int64_t total = 0;
  for (const auto& t : tensors) {
    MT_CHECK(t.defined(), "data parallel: all_reduce_mean of an undefined tensor");
    const at::ScalarType adt = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    acc.push_back(t.detach().to(at::kCPU, adt).contiguous());
    total += acc.back().numel() * acc.back().element_size();
  }
  std::string mine;
  mine.reserve(static_cast<size_t>(total));
  for (const auto& a : acc) mine.append(static_cast<const char*>(a.data_ptr()), a.numel() * a.element_size());
  std::vector<std::string> all = all_gather(mine);
  for (int64_t r = 0; r < info_.world_size; ++r)
    MT_CHECK(static_cast<int64_t>(all[r].size()) == total, "data parallel: rank ", r, " sent ", all[r].size(),
             " gradient bytes, rank ", info_.rank, " expected ", total, " (different models or trainable sets?)");
  size_t off = 0;
  for (size_t i = 0; i < acc.size(); ++i) {
    const size_t nb = acc[i].numel() * acc[i].element_size();
    at::Tensor sum;
    for (int64_t r = 0; r < info_.world_size; ++r) {
      at::Tensor part = at::from_blob(all[r].data() + off, acc[i].sizes(), acc[i].options());
      if (r == 0)
        sum = part.clone();
      else
        sum.add_(part);
    }
    sum.div_(static_cast<double>(info_.world_size));
    tensors[i].detach().copy_(sum);
    off += nb;
  }
}

void Collective::all_reduce_sum(std::vector<double>& values) {
  if (info_.world_size == 1 || values.empty()) return;
  std::string mine(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(double));
  std::vector<std::string> all = all_gather(mine);
  std::vector<double> sum(values.size(), 0.0);
  for (int64_t r = 0; r < info_.world_size; ++r) {
    MT_CHECK(all[r].size() == mine.size(), "data parallel: rank ", r, " sent ", all[r].size() / sizeof(double),
             " values, expected ", values.size());
    const double* p = reinterpret_cast<const double*>(all[r].data());
    for (size_t i = 0; i < values.size(); ++i) sum[i] += p[i];
  }
  values = sum;
}

void Collective::barrier() {
  if (info_.world_size > 1) all_gather("");
}

// ---- local launcher ---------------------------------------------------------------------------------

namespace {

int free_local_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  MT_CHECK(fd >= 0, "data parallel: cannot open a socket: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int e = errno;
  ::close(fd);
  MT_CHECK(ok, "data parallel: cannot find a free local port: ", std::strerror(e));
  return ntohs(a.sin_port);
}

// The launcher forwards one SIGINT / SIGTERM to every rank (the ranks run in their own process group, so
// a terminal's Ctrl-C reaches them once, through here); they finish the step, checkpoint and exit.
volatile sig_atomic_t g_launcher_signal = 0;
void on_launcher_signal(int sig) { g_launcher_signal = sig; }

}  // namespace

int spawn_ranks(int64_t nproc, const std::vector<std::string>& argv) {
  MT_CHECK(nproc >= 1 && nproc <= 1024, "--nproc must be in [1, 1024], got ", nproc);
  MT_CHECK(!argv.empty(), "spawn_ranks: empty command line");
  const int port = free_local_port();
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const std::string threads = std::to_string(std::max<int64_t>(1, static_cast<int64_t>(hw) / nproc));
  std::vector<pid_t> pids;
  for (int64_t r = 0; r < nproc; ++r) {
    pid_t pid = ::fork();
    MT_CHECK(pid >= 0, "--nproc: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", threads.c_str(), 0);
      std::vector<char*> av;
      for (const auto& s : argv) av.push_back(const_cast<char*>(s.c_str()));
      av.push_back(nullptr);
      ::execv("/proc/self/exe", av.data());
      std::fprintf(stderr, "error: --nproc: cannot start rank %lld: %s\n", (long long)r, std::strerror(errno));
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  g_launcher_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  int forwarded = 0;
  int rc = 0;
  size_t left = pids.size();
  while (left > 0) {
    if (g_launcher_signal && !forwarded) {
      forwarded = g_launcher_signal;
      for (pid_t p : pids)
        if (p > 0) ::kill(p, forwarded);
    }
    int status = 0;
    pid_t done = ::waitpid(-1, &status, 0);
    if (done < 0) {
      if (errno == EINTR) continue;
      break;
    }
    auto it = std::find(pids.begin(), pids.end(), done);
    if (it == pids.end()) continue;
    const int64_t r = it - pids.begin();
    *it = -1;
    --left;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) continue;
    if (forwarded && WIFEXITED(status) && WEXITSTATUS(status) == 128 + forwarded) {  // a clean stop on our signal
      if (rc == 0) rc = 128 + forwarded;
      continue;
    }
    if (rc == 0) {  // the first failure: report it and stop the other ranks (they would wait for it)
      rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      std::fprintf(stderr, "error: rank %lld of %lld %s %d; stopping the other ranks\n", (long long)r, (long long)nproc,
                   WIFEXITED(status) ? "exited with code" : "was killed by signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      for (pid_t p : pids)  // SIGKILL: they are blocked in a collective waiting for the failed rank
        if (p > 0) ::kill(p, SIGKILL);
    }
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return rc;
}

}  // namespace mt::train
