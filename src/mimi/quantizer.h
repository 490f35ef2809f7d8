#pragma once
// Mimi's split residual vector quantizer (moshi/quantization): a semantic group `rvq_first` (1 codebook)
// and an acoustic group `rvq_rest`, both reading the same latent through their own 1x1 input
// projection; residual quantization only inside a group. Inference only (no EMA, k-means, STE).
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

namespace mt::mimi {

struct QuantizerConfig {
  int64_t dimension = 256;  // codebook vectors
  int64_t n_q = 32;         // codebooks held by the checkpoint (1 + rest)
  int64_t bins = 2048;
  int64_t input_dimension = 512;  // latent
  int64_t output_dimension = 512;
};

// EuclideanCodebook buffers: centroids = embedding_sum / max(cluster_usage, 1e-5).
struct CodebookImpl : torch::nn::Module {
  CodebookImpl(int64_t bins, int64_t dim);
  at::Tensor embedding_sum, cluster_usage, _initialized;
  at::Tensor centroids() const;
};
TORCH_MODULE(Codebook);

struct VQLayerImpl : torch::nn::Module {
  VQLayerImpl(int64_t bins, int64_t dim);
  Codebook _codebook{nullptr};
};
TORCH_MODULE(VQLayer);

// A 1x1 Conv1d without bias ("input_proj.weight" [out, in, 1]).
struct ProjImpl : torch::nn::Module {
  ProjImpl(int64_t out, int64_t in);
  at::Tensor forward(const at::Tensor& x) const;  // [B, in, T] -> [B, out, T]
  at::Tensor weight;
};
TORCH_MODULE(Proj);

struct VQImpl : torch::nn::Module {
  torch::nn::ModuleList layers;
};
TORCH_MODULE(VQ);

struct ResidualVQImpl : torch::nn::Module {
  ResidualVQImpl(const QuantizerConfig& c, int64_t n_layers);
  // latent [B, input_dimension, T] -> codes [B, n, T] (n <= layers)
  at::Tensor encode(const at::Tensor& latent, int64_t n) const;
  // codes [B, n, T] -> [B, output_dimension, T]
  at::Tensor decode(const at::Tensor& codes) const;
  // Recomputes the cached centroids from the buffers (after loading or moving the model).
  void refresh();
  int64_t layers() const { return static_cast<int64_t>(books_.size()); }
  const Codebook& book(int64_t i) const { return books_.at(i); }
  Proj input_proj{nullptr}, output_proj{nullptr};  // absent when the dimensions are equal
  VQ vq{nullptr};

 private:
  std::vector<Codebook> books_;
  std::vector<at::Tensor> centroids_, sqnorms_;
};
TORCH_MODULE(ResidualVQ);

struct SplitRVQImpl : torch::nn::Module {
  explicit SplitRVQImpl(const QuantizerConfig& c);
  at::Tensor encode(const at::Tensor& latent, int64_t num_codebooks) const;  // [B, num_codebooks, T]
  at::Tensor decode(const at::Tensor& codes) const;                          // [B, output_dimension, T]
  void refresh();
  QuantizerConfig cfg;
  ResidualVQ rvq_first{nullptr}, rvq_rest{nullptr};
};
TORCH_MODULE(SplitRVQ);

}  // namespace mt::mimi
