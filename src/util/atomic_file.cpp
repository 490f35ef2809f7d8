#include "util/atomic_file.h"
#include "util/atomic_file_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/error.h"

namespace fs = std::filesystem;

namespace mt {

namespace {
fs::path folder_of(const std::string& path) {
  fs::path p(path);
  return p.has_parent_path() ? p.parent_path() : fs::path(".");
}
}  // namespace

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  fs::path p(path);
  // pid + a per-process counter: concurrent writers (processes or threads) never share a temp file.
  static std::atomic<uint64_t> counter{0};
  // (mt::str, not operator+: GCC 12 gives a false -Wrestrict warning on that chain.)
  tmp_ = (folder_of(path) / mt::str(".", p.filename().string(), ".tmp.", getpid(), ".", counter.fetch_add(1))).string();
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MT_CHECK(fd_ >= 0, path, ": cannot create temp file ", tmp_, ": ", std::strerror(errno));
}

AtomicFile::~AtomicFile() { abandon(); }

void AtomicFile::abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(tmp_.c_str());
  fd_ = -1;
}

void AtomicFile::append(const void* data, size_t n) {
  MT_CHECK(fd_ >= 0, path_, ": append after commit or failure");
  const char* p = static_cast<const char*>(data);
  size_t off = 0;
  while (off < n) {
    ssize_t w = ::write(fd_, p + off, n - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      abandon();
      fail(path_, ": write failed after ", written_ + off, " bytes: ", std::strerror(e));
    }
    off += static_cast<size_t>(w);
  }
  written_ += n;
}

void AtomicFile::commit() {
  MT_CHECK(fd_ >= 0, path_, ": commit after commit or failure");
  const int fd = fd_;
  fd_ = -1;
  int e = ::fsync(fd) != 0 ? errno : 0;
  if (::close(fd) != 0 && e == 0) e = errno;
  if (e != 0) {
    ::unlink(tmp_.c_str());
    fail(path_, ": fsync/close failed: ", std::strerror(e));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    e = errno;
    ::unlink(tmp_.c_str());
    fail(path_, ": rename failed: ", std::strerror(e));
  }
  int dfd = ::open(folder_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void atomic_write(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.append(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace mt
