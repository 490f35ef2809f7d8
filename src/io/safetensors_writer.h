#pragma once
// A safetensors file written one tensor at a time: the header is laid out first from names, dtypes
// and shapes, then each tensor is made and appended in turn, so a file larger than memory (a 7B
// checkpoint: 15.4 GB in bf16) is written while holding one tensor. Atomic like io::save (temp file,
// fsync, rename); the bytes are exactly what io::save writes for the same tensors in the same order.
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "util/atomic_file_writer.h"

namespace mt::io {

// What the header says of one tensor: enough to lay out a file before any data exists.
struct TensorSpec {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

// The first bytes of a file holding `specs` in that order: u64 length, JSON header (data offsets
// consecutive from 0), padded with spaces to a multiple of 8 so that every tensor stays aligned.
// Throws naming `path` and the tensor for an empty, reserved or duplicate name or a dtype safetensors lacks.
std::string header_bytes(const std::vector<TensorSpec>& specs, const std::map<std::string, std::string>& metadata,
                         const std::string& path);

class StreamingWriter {
 public:
  // Creates the temporary file and writes the header; throws as io::save does for bad names or dtypes.
  StreamingWriter(const std::string& path, std::vector<TensorSpec> specs,
                  const std::map<std::string, std::string>& metadata = {});
  // The next tensor in the order of the specs; its dtype and shape must be the spec's.
  void write(const at::Tensor& t);
  // After the last tensor: fsync and rename into place. Without it the file never appears.
  void commit();
  const std::vector<TensorSpec>& specs() const { return specs_; }
  size_t next() const { return next_; }  // index of the spec write() expects

 private:
  AtomicFile file_;
  std::vector<TensorSpec> specs_;
  size_t next_ = 0;
};

// Writes `specs` in order, asking make(spec, index) for each tensor just before writing it; the tensor
// is released before the next is made. `progress`, when given, is called after each tensor.
void save_streaming(const std::string& path, const std::vector<TensorSpec>& specs,
                    const std::function<at::Tensor(const TensorSpec&, size_t)>& make,
                    const std::map<std::string, std::string>& metadata = {},
                    const std::function<void(size_t done, size_t total)>& progress = nullptr);

}  // namespace mt::io
