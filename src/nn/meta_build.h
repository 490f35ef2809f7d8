#pragma once
// Building a module tree without allocating its weights: how a 7B model is planned in a fraction of a
// second (train --dry-run).
#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/nn/module.h>

namespace mt::nn {

// While alive, CPU tensors are created as meta tensors (shapes and dtypes, no storage): the CPU kernels
// of the two allocating factories are overridden, and the originals come back when it goes. Every
// other factory (zeros, ones, full, empty_like, ...) goes through them, and initialisers on meta tensors
// do nothing, so a module constructed meanwhile has its exact tree, names and shapes for free. libtorch
// has no default-device switch in C++ (PyTorch's `with torch.device("meta")` is Python-only), hence
// this. Process-wide: any thread creating CPU tensors meanwhile gets meta tensors, so use it only while
// no other thread computes (model construction before training starts).
class MetaCpuTensors {
 public:
  MetaCpuTensors();

 private:
  torch::Library lib_;
};

}  // namespace mt::nn
