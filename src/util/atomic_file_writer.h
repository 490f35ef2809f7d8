#pragma once
// A file written atomically piece by piece (util/atomic_file.h's atomic_write for content too big to
// hold in memory at once): the same temporary file, fsync and rename.
#include <cstddef>
#include <string>

namespace mt {

// atomic_write, written piece by piece (a file too big to hold in memory at once): append() to the
// temporary file, then commit() to fsync and rename it into place. Destroyed without commit() (an
// error on the way), the temporary file is removed and `path` is left as it was.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void append(const void* data, size_t n);
  void commit();
  const std::string& path() const { return path_; }
  size_t written() const { return written_; }

 private:
  void abandon();
  std::string path_, tmp_;
  int fd_ = -1;
  size_t written_ = 0;
};

}  // namespace mt
