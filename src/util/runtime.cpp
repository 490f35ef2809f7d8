#include "util/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/version.h>

#include <c10/util/Exception.h>

#include <malloc.h>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "util/error.h"

#ifndef MOSHI_TTT_GIT
#define MOSHI_TTT_GIT "unknown"
#endif

namespace mt {

bool cuda_available() { return at::globalContext().hasCUDA() && at::detail::getCUDAHooks().getNumGPUs() > 0; }

c10::Device parse_device(const std::string& name) {
  c10::Device d(c10::kCPU);
  try {
    d = c10::Device(name);
  } catch (const std::exception&) {
    fail("unknown device '", name, "' (expected cpu, cuda or cuda:N)");
  }
  if (d.is_cuda()) MT_CHECK(cuda_available(), "device '", name, "' asked for, but this build or machine has no CUDA");
  return d;
}

std::string error_message(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

bool keep_freed_memory() {
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  const char* env = std::getenv("MOSHI_TTT_KEEP_FREED_MEMORY");
  if (env && std::string(env) == "0") return false;
  // Without mmap every block comes from the heap that brk grows (a thread's arena that cannot serve a
  // big block hands it to that heap); with trimming off (-1: never, where INT_MAX would still trim
  // above 2 GB free), freed memory stays there for reuse.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1;
#else
  return false;
#endif
}

void set_threads(int n) {
  if (n > 0) at::set_num_threads(n);
}

int parallel_team_size() {
  std::mutex mu;
  std::set<std::thread::id> ids;
  at::parallel_for(0, 1024, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  return static_cast<int>(ids.size());
}

std::string build_info() {
  std::ostringstream os;
  os << "moshi-ttt 0.1.0 (git " << MOSHI_TTT_GIT << ")\n";
  os << "libtorch " << TORCH_VERSION << "\n";
  os << "threads " << at::get_num_threads() << " (intra-op), " << at::get_num_interop_threads() << " (inter-op), "
     << parallel_team_size() << " in our kernels\n";
  os << "CUDA " << (cuda_available() ? "available" : "not available") << "\n";
  os << "BLAS/backends:\n" << at::show_config();
  return os.str();
}

double rss_mb() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return NAN;
  long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  if (n != 2) return NAN;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1e6;
}

std::string cache_dir(const std::string& sub) {
  const char* c = std::getenv("MOSHI_TTT_CACHE");
  const char* x = std::getenv("XDG_CACHE_HOME");
  const char* h = std::getenv("HOME");
  const std::string root = c   ? std::string(c)
                           : x ? std::string(x) + "/moshi-ttt"
                               : std::string(h ? h : ".") + "/.cache/moshi-ttt";
  return sub.empty() ? root : root + "/" + sub;
}

}  // namespace mt
