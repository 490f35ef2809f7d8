#include "io/codes_file.h"

#include "io/safetensors.h"
#include "util/error.h"

namespace mt::io {

at::Tensor read_codes(const std::string& path) {
  SafeTensors f(path);
  MT_CHECK(f.contains("codes"), path, ": no tensor named \"codes\" (it has ", shape_str(f.names()), ")");
  const TensorInfo& info = f.info("codes");
  const std::string& d = info.dtype;
  MT_CHECK(d == "I64" || d == "I32" || d == "I16" || d == "I8" || d == "U8", path,
           ": \"codes\" must be integers (I64, I32, I16, I8 or U8), got ", d);
  MT_CHECK(info.shape.size() == 2 || info.shape.size() == 3, path,
           ": \"codes\" must be [channels, K, T] or [K, T], got ", shape_str(info.shape));
  for (int64_t s : info.shape) MT_CHECK(s >= 1, path, ": \"codes\" has an empty dimension: ", shape_str(info.shape));
  at::Tensor c = f.get("codes").to(at::kLong);
  if (c.dim() == 2) c = c.unsqueeze(0);
  const int64_t lo = c.min().item<int64_t>();
  MT_CHECK(lo >= -1, path, ": \"codes\" holds ", lo, "; codes are >= 0, or -1 for an empty slot");
  return c.contiguous();
}

}  // namespace mt::io
