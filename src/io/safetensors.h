#pragma once
// safetensors: memory-mapped, lazy reader with a strict header check, and an atomic writer.
// Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// then the data buffer; offsets are relative to the buffer's start.
#include <ATen/ATen.h>
#include "util/atomic_file.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mt::io {

struct TensorInfo {
  std::string name;
  std::string dtype;  // as in the file: F32, BF16, I64, BOOL, ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data buffer
  int64_t numel() const;
};

// Bytes per element of a safetensors dtype name; 0 if unknown.
size_t dtype_size(const std::string& dtype);
at::ScalarType to_scalar_type(const std::string& dtype);  // throws for dtypes libtorch lacks
std::string from_scalar_type(at::ScalarType t);

// Largest header accepted (the reference implementation uses the same 100 MB bound).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

class SafeTensors {
 public:
  // Opens and validates; throws mt::Error naming the file (and tensor) on any problem.
  explicit SafeTensors(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return infos_; }  // in data-offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;

  // A tensor that owns a copy of the bytes (CPU, contiguous).
  at::Tensor get(const std::string& name) const;
  // A zero-copy view onto the mapping (kept alive by the tensor); read-only by contract.
  at::Tensor view(const std::string& name) const;
  // get() checked against an expected shape; the message names file, tensor, expected and got.
  at::Tensor get(const std::string& name, at::IntArrayRef expected_shape) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  const uint8_t* data_ = nullptr;  // start of the data buffer
  uint64_t data_size_ = 0;
  std::vector<TensorInfo> infos_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Every tensor of a file, copied (name -> tensor).
std::map<std::string, at::Tensor> load_all(const std::string& path);

// Writes atomically: a temp file next to `path`, fsync, rename, fsync of the folder.
// Tensors are written in the order given.
void save(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata = {});
void save(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});

// The bytes save() writes (`path` only names the destination in errors).
std::string to_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata = {}, const std::string& path = "<memory>");

// Writes bytes atomically (util/atomic_file.h; used by the writers of any file format).
using ::mt::atomic_write;

}  // namespace mt::io
