#include "io/safetensors.h"
#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace mt::io {

namespace {
struct DTypeRow {
  const char* name;
  size_t size;
  at::ScalarType type;
  bool in_torch;
};
const DTypeRow kDTypes[] = {
    {"F64", 8, at::kDouble, true},    {"F32", 4, at::kFloat, true},     {"F16", 2, at::kHalf, true},
    {"BF16", 2, at::kBFloat16, true}, {"I64", 8, at::kLong, true},      {"I32", 4, at::kInt, true},
    {"I16", 2, at::kShort, true},     {"I8", 1, at::kChar, true},       {"U8", 1, at::kByte, true},
    {"BOOL", 1, at::kBool, true},     {"U16", 2, at::kShort, false},    {"U32", 4, at::kInt, false},
    {"U64", 8, at::kLong, false},     {"F8_E4M3", 1, at::kByte, false}, {"F8_E5M2", 1, at::kByte, false},
};
const DTypeRow* find_dtype(const std::string& n) {
  for (const auto& r : kDTypes)
    if (n == r.name) return &r;
  return nullptr;
}
}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

size_t dtype_size(const std::string& dtype) {
  auto* r = find_dtype(dtype);
  return r ? r->size : 0;
}

at::ScalarType to_scalar_type(const std::string& dtype) {
  auto* r = find_dtype(dtype);
  MT_CHECK(r && r->in_torch, "dtype ", dtype, " is not supported by libtorch");
  return r->type;
}

std::string from_scalar_type(at::ScalarType t) {
  for (const auto& r : kDTypes)
    if (r.in_torch && r.type == t) return r.name;
  fail("cannot store dtype ", c10::toString(t), " in safetensors");
}

struct SafeTensors::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && size) munmap(addr, size);
  }
};

SafeTensors::SafeTensors(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MT_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(path, ": is a folder, not a safetensors file");
  }
  const uint64_t fsize = static_cast<uint64_t>(st.st_size);
  if (fsize < 8) {
    ::close(fd);
    fail(path, ": not a safetensors file (", fsize, " bytes, shorter than the 8-byte header length)");
  }
  map_ = std::make_shared<Mapping>();
  void* addr = mmap(nullptr, fsize, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  MT_CHECK(addr != MAP_FAILED, path, ": mmap failed: ", std::strerror(errno));
  map_->addr = addr;
  map_->size = fsize;
  const auto* bytes = static_cast<const uint8_t*>(addr);

  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);  // little-endian hosts only (x86-64, aarch64)
  MT_CHECK(n <= kMaxHeaderBytes, path, ": header length ", n, " exceeds the ", kMaxHeaderBytes,
           "-byte bound (corrupt or not a safetensors file)");
  MT_CHECK(n <= fsize - 8, path, ": header length ", n, " runs past the end of the file (", fsize,
           " bytes): truncated or corrupt");
  data_ = bytes + 8 + n;
  data_size_ = fsize - 8 - n;

  // nlohmann's parser takes a NUL byte for the end of input, which would silently ignore whatever
  // follows it; the reference implementation rejects such headers, and so do we.
  if (const void* nul = std::memchr(bytes + 8, 0, n))
    fail(path, ": header is not valid JSON: NUL byte at offset ", static_cast<const uint8_t*>(nul) - bytes,
         " of the file");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(bytes + 8, bytes + 8 + n);
  } catch (const std::exception& e) {
    fail(path, ": header is not valid JSON: ", e.what());
  }
  MT_CHECK(h.is_object(), path, ": header is not a JSON object");
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      MT_CHECK(v.is_object(), path, ": __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        MT_CHECK(m.value().is_string(), path, ": __metadata__ value '", m.key(), "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    MT_CHECK(v.is_object(), path, ": tensor '", name, "': entry is not an object");
    MT_CHECK(v.contains("dtype") && v["dtype"].is_string(), path, ": tensor '", name, "': missing dtype");
    MT_CHECK(v.contains("shape") && v["shape"].is_array(), path, ": tensor '", name, "': missing shape");
    MT_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2, path,
             ": tensor '", name, "': data_offsets must be [begin, end]");
    TensorInfo ti;
    ti.name = name;
    ti.dtype = v["dtype"].get<std::string>();
    size_t esize = dtype_size(ti.dtype);
    MT_CHECK(esize > 0, path, ": tensor '", name, "': unknown dtype '", ti.dtype, "'");
    // libtorch computes strides as products of max(dim, 1), in int64: a shape like [0, 2^62, 2^62] holds
    // no bytes but still cannot be made into a tensor. So the bound is on that product (times the element
    // size, which also keeps numel() and the byte count in range), and a 0 anywhere makes the size 0.
    unsigned __int128 extent = esize;
    bool has_zero = false;
    for (const auto& d : v["shape"]) {
      // Unsigned values above INT64_MAX would wrap negative in the int64 shape (libtorch's type).
      MT_CHECK(d.is_number_integer() &&
                   (d.is_number_unsigned() ? d.get<uint64_t>() <= uint64_t(INT64_MAX) : d.get<int64_t>() >= 0),
               path, ": tensor '", name, "': shape entries must be non-negative integers, got ", d.dump());
      ti.shape.push_back(d.get<int64_t>());
      has_zero |= ti.shape.back() == 0;
      extent *= static_cast<uint64_t>(std::max<int64_t>(ti.shape.back(), 1));
      MT_CHECK(extent <= (unsigned __int128)INT64_MAX, path, ": tensor '", name, "': shape ", v["shape"].dump(),
               " overflows");
    }
    const uint64_t nbytes = has_zero ? 0 : static_cast<uint64_t>(extent);
    for (const auto& o : v["data_offsets"])
      MT_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), path, ": tensor '", name,
               "': data_offsets must be non-negative integers");
    ti.begin = v["data_offsets"][0].get<uint64_t>();
    ti.end = v["data_offsets"][1].get<uint64_t>();
    MT_CHECK(ti.begin <= ti.end, path, ": tensor '", name, "': data_offsets begin ", ti.begin, " > end ", ti.end);
    MT_CHECK(ti.end <= data_size_, path, ": tensor '", name, "': data_offsets [", ti.begin, ", ", ti.end,
             "] run past the data buffer (", data_size_, " bytes): truncated file?");
    MT_CHECK(nbytes == ti.end - ti.begin, path, ": tensor '", name, "': shape ", shape_str(ti.shape), " x ", ti.dtype,
             " needs ", (uint64_t)nbytes, " bytes but data_offsets span ", ti.end - ti.begin);
    infos_.push_back(std::move(ti));
  }
  std::sort(infos_.begin(), infos_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Sorted by begin, so a tensor overlaps an earlier one iff it starts before the furthest end seen so far.
  // Empty tensors hold no bytes: they overlap nothing, and must not hide an overlap of their neighbours.
  const TensorInfo* furthest = nullptr;
  for (const auto& b : infos_) {
    if (b.begin == b.end) continue;
    MT_CHECK(!furthest || b.begin >= furthest->end, path, ": tensors '", furthest ? furthest->name : "", "' and '",
             b.name, "' overlap in the data buffer");
    if (!furthest || b.end > furthest->end) furthest = &b;
  }
  for (size_t i = 0; i < infos_.size(); ++i) index_[infos_[i].name] = i;
}

const TensorInfo& SafeTensors::info(const std::string& name) const {
  auto it = index_.find(name);
  MT_CHECK(it != index_.end(), path_, ": no tensor named '", name, "'");
  return infos_[it->second];
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  for (const auto& t : infos_) out.push_back(t.name);
  return out;
}

namespace {
at::ScalarType tensor_scalar_type(const std::string& path, const TensorInfo& ti) {
  auto* r = find_dtype(ti.dtype);
  MT_CHECK(r && r->in_torch, path, ": tensor '", ti.name, "': dtype ", ti.dtype, " is not supported by libtorch");
  return r->type;
}
}  // namespace

at::Tensor SafeTensors::view(const std::string& name) const {
  const auto& ti = info(name);
  const auto type = tensor_scalar_type(path_, ti);
  if (ti.begin == ti.end) return at::empty(ti.shape, at::TensorOptions().dtype(type));
  auto* p = const_cast<uint8_t*>(data_ + ti.begin);
  // Files from other writers may leave the data unaligned for its dtype (the header length need not be
  // a multiple of 8); reading a misaligned float* is undefined behaviour, so copy those instead.
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(ti.dtype) != 0) return get(name);
  auto keep = map_;
  return at::from_blob(
      p, ti.shape, [keep](void*) mutable { keep.reset(); }, at::TensorOptions().dtype(type));
}

at::Tensor SafeTensors::get(const std::string& name) const {
  const auto& ti = info(name);
  auto t = at::empty(ti.shape, at::TensorOptions().dtype(tensor_scalar_type(path_, ti)));
  if (ti.end > ti.begin) std::memcpy(t.data_ptr(), data_ + ti.begin, ti.end - ti.begin);
  return t;
}

at::Tensor SafeTensors::get(const std::string& name, at::IntArrayRef expected) const {
  const auto& ti = info(name);
  MT_CHECK(at::IntArrayRef(ti.shape) == expected, path_, ": tensor '", name, "': expected shape ",
           shape_str(expected.vec()), ", got ", shape_str(ti.shape));
  return get(name);
}

std::map<std::string, at::Tensor> load_all(const std::string& path) {
  SafeTensors f(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = f.get(t.name);
  return out;
}

uint64_t TensorSpec::nbytes() const {
  uint64_t n = c10::elementSize(dtype);
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::string header_bytes(const std::vector<TensorSpec>& specs, const std::map<std::string, std::string>& metadata,
                         const std::string& path) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (const auto& s : specs) {
    MT_CHECK(!s.name.empty() && s.name != "__metadata__", path, ": invalid tensor name '", s.name, "'");
    MT_CHECK(!h.contains(s.name), path, ": duplicate tensor name '", s.name, "'");
    const at::ScalarType st = s.dtype;  // a structured binding cannot be captured before clang 16
    const auto* row = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                                   [&](const DTypeRow& r) { return r.in_torch && r.type == st; });
    MT_CHECK(row != std::end(kDTypes), path, ": tensor '", s.name, "': cannot store dtype ", c10::toString(st),
             " in safetensors");
    const uint64_t nb = s.nbytes();
    h[s.name] = {{"dtype", row->name}, {"shape", s.shape}, {"data_offsets", {off, off + nb}}};
    off += nb;
  }
  std::string hs;
  try {
    hs = h.dump();
  } catch (const std::exception& e) {  // e.g. a name or metadata that is not valid UTF-8
    fail(path, ": cannot encode the header: ", e.what());
  }
  while ((hs.size() + 8) % 8 != 0) hs.push_back(' ');
  std::string bytes;
  const uint64_t n = hs.size();
  bytes.append(reinterpret_cast<const char*>(&n), 8);
  bytes.append(hs);
  return bytes;
}

std::string to_bytes(const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata, const std::string& path) {
  std::vector<TensorSpec> specs;
  std::vector<at::Tensor> cpu;
  uint64_t total = 0;
  for (const auto& [name, t0] : tensors) {
    MT_CHECK(t0.defined(), path, ": tensor '", name, "' is undefined");
    // resolve_neg/conj: a lazily negated view's storage does not hold its values.
    at::Tensor t = t0.detach().to(at::kCPU).resolve_conj().resolve_neg().contiguous();
    specs.push_back({name, t.scalar_type(), t.sizes().vec()});
    total += specs.back().nbytes();
    cpu.push_back(t);
  }
  std::string bytes = header_bytes(specs, metadata, path);
  bytes.reserve(bytes.size() + total);
  for (const auto& t : cpu)
    if (t.numel() > 0)
      bytes.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size());
  return bytes;
}

void save(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  atomic_write(path, to_bytes(tensors, metadata, path));
}

void save(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> v(tensors.begin(), tensors.end());
  save(path, v, metadata);
}

}  // namespace mt::io
