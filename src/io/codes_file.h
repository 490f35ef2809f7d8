#pragma once
// Codes files: safetensors with one integer tensor "codes", [K, T] (a token shard or one channel) or
// [C, K, T] (`moshi-ttt encode`: one row per audio channel). -1 marks an ungated/padded slot; any other
// negative value is refused. The reader used by decode and the evaluations (the training loader
// reads shards through train/data.h, with the same header rules).
#include <ATen/ATen.h>

#include <string>

namespace mt::io {

// int64 [C, K, T] (a 2-D tensor gets C = 1); throws mt::Error naming the file for a missing tensor,
// a non-integer dtype, a rank other than 2 or 3, an empty dimension, or values below -1.
at::Tensor read_codes(const std::string& path);

}  // namespace mt::io
