#pragma once
// Helpers for the TTT layer tests: small configs and layers whose parameters are moved away from
// their initial values so that every term of the equations matters.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <map>
#include <string>

#include "ttt/inplace.h"
#include "ttt/ttt_layer.h"
#include "ttt/ttt_scan.h"

namespace mt::test {

// type: "linear", "mlp" (the reference's 2 layers) or "mlpN" (a TTT-MLP of N inner layers).
inline ttt::TTTConfig small_config(const std::string& type, int64_t C = 16, int64_t nh = 2, int64_t K = 16) {
  ttt::TTTConfig c;
  c.hidden_size = C;
  c.num_attention_heads = nh;
  c.mini_batch_size = K;
  c.ttt_layer_type = type.rfind("mlp", 0) == 0 ? "mlp" : type;
  if (type.size() > 3 && c.ttt_layer_type == "mlp") c.ttt_mlp_layers = std::stoll(type.substr(3));
  c.ttt_base_lr = c.is_mlp() ? 0.1 : 1.0;
  return c;
}

inline ttt::TTTLayer perturbed_layer(const ttt::TTTConfig& c, uint64_t seed, at::ScalarType dt = at::kDouble) {
  auto base = ttt::TTTLayer::init(c, seed, at::kFloat);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1000);
  std::map<std::string, at::Tensor> p;
  for (const auto& [n, t] : base.named_parameters()) {
    auto v = t.detach().clone();
    // Sizeable changes: W0 and the projections are O(0.02) at init, which would make the inner loop
    // nearly linear; the lr gate bias pushes the inner lr to vary per head.
    double s = (n.find("proj") != std::string::npos) ? 0.3 : (n == "learnable_token_idx" ? 0.1 : 0.3);
    v.add_(at::empty(v.sizes()).normal_(0.0, s, gen));
    p[n] = v.to(dt);
  }
  return ttt::TTTLayer(c, p);
}

// Random inputs of the TTT scan for N streams of L tokens, head width f, an inner model of `layers`
// layers (hidden widths 4f), mini-batch K, the call starting at in-mini-batch index s0 (s0 > 0: live
// gradient sums, random and small); sizeable learning rates, so that every layer's update matters.
inline ttt::detail::ScanInputs random_scan_inputs(int64_t N, int64_t L, int64_t f, int64_t layers, int64_t K,
                                                  uint64_t seed, int64_t s0 = 0, at::ScalarType dt = at::kDouble) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  auto o = at::TensorOptions().dtype(dt);
  auto ones = [&](const at::Tensor& t) { return at::cat({t, at::ones({N, L, 1}, o)}, -1); };
  ttt::detail::ScanInputs in;
  in.XQa = ones(at::randn({N, L, f}, g, o));
  in.XKa = ones(at::randn({N, L, f}, g, o));
  in.XV = at::randn({N, L, f}, g, o);
  in.lr = at::rand({N, L}, g, o) * 0.3 + 0.05;
  auto idx = at::arange(s0, s0 + L, o.dtype(at::kLong)).remainder(K);
  in.tok = (1.0 / (idx.to(dt) + 1.0)) + at::rand({L}, g, o) * 0.1;
  in.lnw = 1.0 + 0.3 * at::randn({N, 1, f}, g, o);
  in.lnb = 0.3 * at::randn({N, 1, f}, g, o);
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t din = l == 0 ? f : 4 * f, dout = l + 1 == layers ? f : 4 * f;
    in.W.push_back(at::randn({N, din + 1, dout}, g, o) / std::sqrt(static_cast<double>(din)));
    in.G.push_back(s0 > 0 ? at::randn({N, din + 1, dout}, g, o) * 0.05 : at::zeros({N, din + 1, dout}, o));
  }
  return in;
}

// Random In-Place weights (the conv too: the official zero init would hide mistakes), in float64.
inline std::map<std::string, at::Tensor> inplace_random_weights(const ttt::InPlaceConfig& c, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  auto o = at::TensorOptions().dtype(at::kDouble);
  std::map<std::string, at::Tensor> w;
  w["gating.linear_in.weight"] = at::randn({2 * c.hidden, c.dim}, g, o) * 0.4;
  w["gating.linear_out.weight"] = at::randn({c.dim, c.hidden}, g, o) * 0.3;
  w["ttt_conv.weight"] = at::randn({c.dim, 1, c.conv_kernel}, g, o) * 0.5;
  if (c.use_proj) w["ttt_proj.weight"] = at::randn({c.dim, c.dim}, g, o) * 0.4;
  return w;
}

}  // namespace mt::test
