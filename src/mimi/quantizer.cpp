#include "mimi/quantizer.h"

#include <ATen/ATen.h>

#include "util/error.h"

namespace mt::mimi {

CodebookImpl::CodebookImpl(int64_t bins, int64_t dim) {
  embedding_sum = register_buffer("embedding_sum", at::zeros({bins, dim}));
  cluster_usage = register_buffer("cluster_usage", at::ones({bins}));
  _initialized = register_buffer("_initialized", at::ones({1}));
}

at::Tensor CodebookImpl::centroids() const { return embedding_sum / cluster_usage.clamp_min(1e-5).unsqueeze(1); }

VQLayerImpl::VQLayerImpl(int64_t bins, int64_t dim) { _codebook = register_module("_codebook", Codebook(bins, dim)); }

ProjImpl::ProjImpl(int64_t out, int64_t in) { weight = register_parameter("weight", at::zeros({out, in, 1})); }

at::Tensor ProjImpl::forward(const at::Tensor& x) const {
  // [out, in] x [B, in, T] -> [B, out, T]
  return at::matmul(weight.squeeze(2), x);
}

ResidualVQImpl::ResidualVQImpl(const QuantizerConfig& c, int64_t n_layers) {
  input_proj = register_module("input_proj", Proj(c.dimension, c.input_dimension));
  output_proj = register_module("output_proj", Proj(c.output_dimension, c.dimension));
  vq = register_module("vq", VQ());
  vq->layers = vq->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < n_layers; ++i) {
    VQLayer l(c.bins, c.dimension);
    vq->layers->push_back(l);
    books_.push_back(l->_codebook);
  }
  refresh();
}

void ResidualVQImpl::refresh() {
  centroids_.clear();
  sqnorms_.clear();
  for (const auto& b : books_) {
    at::Tensor cen = b->centroids();
    centroids_.push_back(cen);
    sqnorms_.push_back((cen * cen).sum(1));
  }
}

at::Tensor ResidualVQImpl::encode(const at::Tensor& latent, int64_t n) const {
  MT_CHECK(n >= 0 && n <= layers(), "mimi quantizer: ", n, " codebooks requested, the group has ", layers());
  at::Tensor r = input_proj->forward(latent).transpose(1, 2);  // [B, T, D]
  std::vector<at::Tensor> codes;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& cen = centroids_[i];
    // Squared distance up to the per-row constant |r|^2: |c|^2 - 2 r.c (argmin is the same).
    at::Tensor d = sqnorms_[i] - 2 * at::matmul(r, cen.t());
    at::Tensor idx = d.argmin(-1);  // [B, T]
    codes.push_back(idx);
    r = r - at::embedding(cen, idx);
  }
  if (codes.empty()) return at::empty({latent.size(0), 0, latent.size(2)}, latent.options().dtype(at::kLong));
  return at::stack(codes, 1);
}

at::Tensor ResidualVQImpl::decode(const at::Tensor& codes) const {
  MT_CHECK(codes.dim() == 3 && codes.size(1) <= layers(), "mimi quantizer: codes ", shape_str(codes.sizes().vec()),
           " for a group of ", layers(), " codebooks");
  at::Tensor q;
  for (int64_t i = 0; i < codes.size(1); ++i) {
    at::Tensor e = at::embedding(centroids_[i], codes.select(1, i));  // [B, T, D]
    q = q.defined() ? q + e : e;
  }
  return output_proj->forward(q.transpose(1, 2));
}

SplitRVQImpl::SplitRVQImpl(const QuantizerConfig& c) : cfg(c) {
  MT_CHECK(c.n_q >= 1, "mimi quantizer: n_q must be >= 1");
  rvq_first = register_module("rvq_first", ResidualVQ(c, 1));
  rvq_rest = register_module("rvq_rest", ResidualVQ(c, c.n_q - 1));
}

void SplitRVQImpl::refresh() {
  rvq_first->refresh();
  rvq_rest->refresh();
}

at::Tensor SplitRVQImpl::encode(const at::Tensor& latent, int64_t k) const {
  MT_CHECK(k >= 1 && k <= cfg.n_q, "mimi: ", k, " codebooks requested, the quantizer has ", cfg.n_q);
  at::Tensor first = rvq_first->encode(latent, 1);
  if (k == 1) return first;
  return at::cat({first, rvq_rest->encode(latent, k - 1)}, 1);
}

at::Tensor SplitRVQImpl::decode(const at::Tensor& codes) const {
  MT_CHECK(codes.dim() == 3 && codes.size(1) >= 1 && codes.size(1) <= cfg.n_q, "mimi: codes of shape ",
           shape_str(codes.sizes().vec()), ", expected [B, 1..", cfg.n_q, ", T]");
  at::Tensor q = rvq_first->decode(codes.narrow(1, 0, 1));
  if (codes.size(1) > 1) q = q + rvq_rest->decode(codes.narrow(1, 1, codes.size(1) - 1));
  return q;
}

}  // namespace mt::mimi
