#include "io/safetensors_writer.h"

#include "util/error.h"

namespace mt::io {

StreamingWriter::StreamingWriter(const std::string& path, std::vector<TensorSpec> specs,
                                 const std::map<std::string, std::string>& metadata)
    : file_(path), specs_(std::move(specs)) {
  const std::string h = header_bytes(specs_, metadata, path);
  file_.append(h.data(), h.size());
}

void StreamingWriter::write(const at::Tensor& t0) {
  const std::string& path = file_.path();
  MT_CHECK(next_ < specs_.size(), path, ": all ", specs_.size(), " tensors are written already");
  const TensorSpec& s = specs_[next_];
  MT_CHECK(t0.defined(), path, ": tensor '", s.name, "' is undefined");
  MT_CHECK(t0.scalar_type() == s.dtype && t0.sizes() == at::IntArrayRef(s.shape), path, ": tensor '", s.name,
           "': the header says ", c10::toString(s.dtype), " ", shape_str(s.shape), ", got ",
           c10::toString(t0.scalar_type()), " ", shape_str(t0.sizes().vec()));
  // resolve_neg/conj: a lazily negated view's storage does not hold its values (as io::save).
  const at::Tensor t = t0.detach().to(at::kCPU).resolve_conj().resolve_neg().contiguous();
  if (t.numel() > 0) file_.append(t.const_data_ptr(), static_cast<size_t>(s.nbytes()));
  ++next_;
}

void StreamingWriter::commit() {
  MT_CHECK(next_ == specs_.size(), file_.path(), ": ", next_, " of ", specs_.size(),
           " tensors written; the next would be '", next_ < specs_.size() ? specs_[next_].name : "", "'");
  file_.commit();
}

void save_streaming(const std::string& path, const std::vector<TensorSpec>& specs,
                    const std::function<at::Tensor(const TensorSpec&, size_t)>& make,
                    const std::map<std::string, std::string>& metadata,
                    const std::function<void(size_t, size_t)>& progress) {
  StreamingWriter w(path, specs, metadata);
  for (size_t i = 0; i < specs.size(); ++i) {
    w.write(make(specs[i], i));
    if (progress) progress(i + 1, specs.size());
  }
  w.commit();
}

}  // namespace mt::io
