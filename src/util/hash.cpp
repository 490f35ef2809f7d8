#include "util/hash.h"

#include <fstream>
#include <vector>

#include "util/error.h"

namespace mt::hash {

uint64_t file_hash(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MT_CHECK(in, path, ": cannot read");
  uint64_t h = kFnvOffset;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnv(h, buf.data(), static_cast<size_t>(in.gcount()));
  }
  return h;
}

}  // namespace mt::hash
