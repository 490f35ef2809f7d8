#include "dist/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "util/error.h"

namespace mt::dist {

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

int64_t env_int_or(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  return v && *v ? env_int(name, lo, hi) : fallback;
}

}  // namespace

std::string Launch::describe() const {
  return str("rank ", rank, " of ", world_size, " (node ", node_rank, ", local rank ", local_rank, ")");
}

Launch launch_from_env() {
  Launch d;
  d.restart_count = env_int_or("TORCHELASTIC_RESTART_COUNT", -1, 0, 1 << 20);
  if (const char* id = std::getenv("TORCHELASTIC_RUN_ID")) d.run_id = id;
  const bool has_rank = std::getenv("RANK") != nullptr, has_world = std::getenv("WORLD_SIZE") != nullptr;
  if (!has_rank && !has_world) return d;
  MT_CHECK(has_rank && has_world, "data parallel: RANK and WORLD_SIZE must be set together (torchrun's variables)");
  d.world_size = env_int("WORLD_SIZE", 1, 1 << 20);
  d.rank = env_int("RANK", 0, d.world_size - 1);
  d.local_world_size = env_int_or("LOCAL_WORLD_SIZE", d.world_size, 1, d.world_size);
  d.local_rank = env_int_or("LOCAL_RANK", d.rank, 0, d.world_size - 1);
  MT_CHECK(d.local_rank < d.local_world_size, "data parallel: LOCAL_RANK=", d.local_rank,
           " is not below LOCAL_WORLD_SIZE=", d.local_world_size);
  d.node_rank = env_int_or("GROUP_RANK", 0, 0, d.world_size - 1);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) d.master_addr = a;
  d.master_port = static_cast<int>(env_int_or("MASTER_PORT", 29500, 1, 65535));
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  d.agent_store =
      agent && (std::strcmp(agent, "True") == 0 || std::strcmp(agent, "true") == 0 || std::strcmp(agent, "1") == 0);
  return d;
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

pid_t start_rank(int64_t r, int64_t nproc, int port, const std::string& threads, const std::vector<std::string>& argv) {
  pid_t pid = ::fork();
  MT_CHECK(pid >= 0, "--nproc: fork failed: ", std::strerror(errno));
  if (pid > 0) return pid;
  ::setpgid(0, 0);
  const std::pair<const char*, std::string> vars[] = {{"RANK", std::to_string(r)},
                                                      {"LOCAL_RANK", std::to_string(r)},
                                                      {"WORLD_SIZE", std::to_string(nproc)},
                                                      {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
                                                      {"GROUP_RANK", "0"},
                                                      {"MASTER_ADDR", "127.0.0.1"},
                                                      {"MASTER_PORT", std::to_string(port)}};
  for (const auto& [k, v] : vars) ::setenv(k, v.c_str(), 1);
  ::setenv("OMP_NUM_THREADS", threads.c_str(), 0);
  std::vector<char*> av;
  for (const auto& s : argv) av.push_back(const_cast<char*>(s.c_str()));
  av.push_back(nullptr);
  ::execv("/proc/self/exe", av.data());
  std::fprintf(stderr, "error: --nproc: cannot start rank %lld: %s\n", (long long)r, std::strerror(errno));
  ::_exit(127);
}

void report_failure(int64_t r, int64_t nproc, int status) {
  std::fprintf(stderr, "error: rank %lld of %lld %s %d\n", (long long)r, (long long)nproc,
               WIFEXITED(status) ? "exited with code" : "was killed by signal",
               WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

}  // namespace

int spawn_ranks(int64_t nproc, const std::vector<std::string>& argv, int grace_s) {
  MT_CHECK(nproc >= 1 && nproc <= 1024, "--nproc must be in [1, 1024], got ", nproc);
  MT_CHECK(!argv.empty(), "spawn_ranks: empty command line");
  const int port = free_local_port();
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const std::string threads = std::to_string(std::max<int64_t>(1, static_cast<int64_t>(hw) / nproc));
  std::vector<pid_t> pids;
  for (int64_t r = 0; r < nproc; ++r) pids.push_back(start_rank(r, nproc, port, threads, argv));
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  g_launcher_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  int forwarded = 0, rc = 0;
  size_t left = pids.size();
  std::chrono::steady_clock::time_point kill_at{};
  bool killed = false, failed = false;
  while (left > 0) {
    if (g_launcher_signal && !forwarded) {
      forwarded = g_launcher_signal;
      for (pid_t p : pids)
        if (p > 0) ::kill(p, forwarded);
    }
    if (failed && !killed && std::chrono::steady_clock::now() >= kill_at) {
      for (pid_t p : pids)  // still waiting for the failed rank after the grace period
        if (p > 0) ::kill(p, SIGKILL);
      killed = true;
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, WNOHANG);
    if (done == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (done < 0) {
      if (errno == EINTR) continue;
      break;
    }
    auto it = std::find(pids.begin(), pids.end(), done);
    if (it == pids.end()) continue;
    const int64_t r = it - pids.begin();
    *it = -1;
    --left;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    if (forwarded && WIFEXITED(status) && WEXITSTATUS(status) == 128 + forwarded) {  // a clean stop on our signal
      if (rc == 0) rc = 128 + forwarded;
      continue;
    }
    if (killed) continue;  // we killed it
    report_failure(r, nproc, status);
    if (!failed) {  // the first failure: the others stop by themselves (naming it) or after the grace period
      failed = true;
      rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(grace_s);
    }
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return rc;
}

}  // namespace mt::dist
