#include "ttt/ttt_layer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "ttt/ttt_scan.h"
#include "util/error.h"
#include "util/fused.h"
#include "util/pitfall_switch.h"

namespace mt::ttt {

// ---------------------------------------------------------------------------------------------
// Config

void TTTConfig::validate() const {
  MT_CHECK(hidden_size > 0 && num_attention_heads > 0, "ttt config: hidden_size and num_attention_heads must be > 0");
  MT_CHECK(hidden_size % num_attention_heads == 0, "ttt config: hidden_size ", hidden_size,
           " is not a multiple of num_attention_heads ", num_attention_heads);
  MT_CHECK(head_dim() % 2 == 0, "ttt config: head_dim ", head_dim(), " must be even (RoPE rotates pairs)");
  MT_CHECK(mini_batch_size > 0, "ttt config: mini_batch_size must be > 0, got ", mini_batch_size);
  MT_CHECK(ttt_layer_type == "linear" || ttt_layer_type == "mlp",
           "ttt config: ttt_layer_type must be 'linear' or 'mlp', got '", ttt_layer_type, "'");
  MT_CHECK(!share_qk || conv_kernel >= 1, "ttt config: conv_kernel must be >= 1, got ", conv_kernel);
  MT_CHECK(scan_checkpoint_group_size >= 0, "ttt config: scan_checkpoint_group_size must be >= 0, got ",
           scan_checkpoint_group_size);
  MT_CHECK(ttt_mlp_layers >= 2 && ttt_mlp_layers <= 64, "ttt config: ttt_mlp_layers must be in [2, 64], got ",
           ttt_mlp_layers);
}

TTTConfig parse_config_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("ttt config: invalid JSON: ", e.what());
  }
  TTTConfig c;
  auto get = [&](const char* k, auto& v) {
    if (j.contains(k) && !j[k].is_null()) v = j[k].get<std::decay_t<decltype(v)>>();
  };
  try {
    get("hidden_size", c.hidden_size);
    get("num_attention_heads", c.num_attention_heads);
    get("mini_batch_size", c.mini_batch_size);
    get("ttt_layer_type", c.ttt_layer_type);
    get("ttt_base_lr", c.ttt_base_lr);
    get("use_gate", c.use_gate);
    get("share_qk", c.share_qk);
    get("conv_kernel", c.conv_kernel);
    get("scan_checkpoint_group_size", c.scan_checkpoint_group_size);
    get("rope_theta", c.rope_theta);
    get("ttt_mlp_layers", c.ttt_mlp_layers);
  } catch (const std::exception& e) {
    fail("ttt config: bad field type: ", e.what());
  }
  c.validate();
  return c;
}

// ---------------------------------------------------------------------------------------------
// State

TTTState::TTTState(int64_t batch_size) : batch(batch_size), position(batch_size, 0), fresh(batch_size, 1) {
  MT_CHECK(batch_size > 0, "ttt state: batch size must be > 0, got ", batch_size);
}

void TTTState::reset() {
  std::fill(position.begin(), position.end(), 0);
  std::fill(fresh.begin(), fresh.end(), 1);
}

void TTTState::reset_slot(int64_t b) {
  MT_CHECK(b >= 0 && b < batch, "ttt state: slot ", b, " out of range [0, ", batch, ")");
  position[b] = 0;
  fresh[b] = 1;
}

void TTTState::detach() {
  for (auto* v : {&W, &G})
    for (auto& t : *v)
      if (t.defined()) t = t.detach();
  if (conv_tail.defined()) conv_tail = conv_tail.detach();
}

// ---------------------------------------------------------------------------------------------
// Parameters

std::vector<std::pair<std::string, std::vector<int64_t>>> TTTLayer::expected_parameters(const TTTConfig& c) {
  c.validate();
  const int64_t C = c.hidden_size, nh = c.num_attention_heads, f = c.head_dim();
  const int64_t K = c.mini_batch_size;
  // The reference module's registration order: own parameters, then submodules.
  std::vector<std::pair<std::string, std::vector<int64_t>>> p = {
      {"learnable_token_idx", {K}},       {"learnable_ttt_lr_weight", {nh, 1, C}},
      {"learnable_ttt_lr_bias", {nh, 1}}, {"ttt_norm_weight", {nh, f}},
      {"ttt_norm_bias", {nh, f}},
  };
  for (int64_t l = 0; l < c.inner_layers(); ++l) {
    const std::string i = std::to_string(l + 1);
    p.push_back({"W" + i, {nh, c.inner_in(l), c.inner_out(l)}});
    p.push_back({"b" + i, {nh, 1, c.inner_out(l)}});
  }
  p.push_back({"q_proj.weight", {C, C}});
  if (!c.share_qk) p.push_back({"k_proj.weight", {C, C}});
  p.push_back({"v_proj.weight", {C, C}});
  p.push_back({"o_proj.weight", {C, C}});
  if (c.share_qk) {
    p.push_back({"conv_q.weight", {C, 1, c.conv_kernel}});
    p.push_back({"conv_q.bias", {C}});
    p.push_back({"conv_k.weight", {C, 1, c.conv_kernel}});
    p.push_back({"conv_k.bias", {C}});
  }
  if (c.use_gate) p.push_back({"g_proj.weight", {C, C}});
  p.push_back({"post_norm.weight", {C}});
  p.push_back({"post_norm.bias", {C}});
  return p;
}

namespace {
void check_tensors(const TTTConfig& cfg, const std::map<std::string, at::Tensor>& t) {
  auto exp = TTTLayer::expected_parameters(cfg);
  std::map<std::string, std::vector<int64_t>> want(exp.begin(), exp.end());
  for (const auto& [name, shape] : exp) {
    auto it = t.find(name);
    MT_CHECK(it != t.end() && it->second.defined(), "ttt layer: missing tensor '", name, "' (expected shape ",
             shape_str(shape), ")");
    MT_CHECK(it->second.sizes().vec() == shape, "ttt layer: tensor '", name, "' has shape ",
             shape_str(it->second.sizes().vec()), ", expected ", shape_str(shape));
    MT_CHECK(at::isFloatingType(it->second.scalar_type()), "ttt layer: tensor '", name,
             "' must be floating point, got ", c10::toString(it->second.scalar_type()));
  }
  for (const auto& [name, v] : t)
    MT_CHECK(want.count(name), "ttt layer: unexpected tensor '", name, "' (shape ", shape_str(v.sizes().vec()),
             ") for a ", cfg.ttt_layer_type, " layer", cfg.share_qk ? " with share_qk" : "",
             cfg.use_gate ? " with use_gate" : "");
}
}  // namespace

TTTLayer::TTTLayer(TTTConfig cfg, const std::map<std::string, at::Tensor>& params) : cfg_(std::move(cfg)) {
  cfg_.validate();
  // Tests only: pitfalls.md row 3, an entry point of the linear inner model that cannot be called.
  MT_CHECK(!(pitfall::on(3) && !cfg_.is_mlp()), "ttt: TTT-Linear entry point called with the wrong signature");
  check_tensors(cfg_, params);
  for (const auto& [name, shape] : expected_parameters(cfg_)) {
    index_[name] = params_.size();
    params_.push_back({name, params.at(name).detach().clone().requires_grad_(true)});
  }
  auto dt = params_.front().second.scalar_type();
  for (auto& [n, p] : params_)
    MT_CHECK(p.scalar_type() == dt && p.device() == params_.front().second.device(), "ttt layer: tensor '", n,
             "' has dtype/device ", c10::toString(p.scalar_type()), "/", p.device().str(), ", others ",
             c10::toString(dt), "/", params_.front().second.device().str());
}

TTTLayer TTTLayer::init(const TTTConfig& cfg, uint64_t seed, at::ScalarType dtype, at::Device device) {
  cfg.validate();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto opt = at::TensorOptions().dtype(at::kFloat);
  std::map<std::string, at::Tensor> p;
  for (const auto& [name, shape] : expected_parameters(cfg)) {
    at::Tensor t;
    const bool inner_bias = name.size() >= 2 && name[0] == 'b' && std::isdigit(static_cast<unsigned char>(name[1]));
    if (name == "learnable_token_idx" || name == "learnable_ttt_lr_bias" || name == "ttt_norm_bias" || inner_bias ||
        name == "post_norm.bias") {
      t = at::zeros(shape, opt);  // token factor starts at exactly 1/i; biases 0
    } else if (name == "ttt_norm_weight" || name == "post_norm.weight") {
      t = at::ones(shape, opt);
    } else if (name.rfind("conv_", 0) == 0) {
      // PyTorch Conv1d default (the reference's _init_weights leaves convs alone): kaiming-uniform with
      // a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; fan_in = kernel size.
      double bound = 1.0 / std::sqrt(static_cast<double>(cfg.conv_kernel));
      t = at::empty(shape, opt).uniform_(-bound, bound, gen);
    } else {
      t = at::empty(shape, opt).normal_(0.0, 0.02, gen);  // projections, W1/W2, lr gate: N(0, 0.02^2)
    }
    p[name] = t.to(device, dtype);
  }
  return TTTLayer(cfg, p);
}

const at::Tensor& TTTLayer::param(const std::string& name) const {
  auto it = index_.find(name);
  MT_CHECK(it != index_.end(), "ttt layer: no parameter '", name, "'");
  return params_[it->second].second;
}

void TTTLayer::load(const std::map<std::string, at::Tensor>& tensors) {
  check_tensors(cfg_, tensors);
  at::NoGradGuard ng;
  for (auto& [name, p] : params_) p.copy_(tensors.at(name));
}

void TTTLayer::set_requires_grad(bool on) {
  for (auto& [n, p] : params_) p.requires_grad_(on);
}

void TTTLayer::to(at::ScalarType dtype) {
  for (auto& [n, p] : params_) {
    bool rg = p.requires_grad();
    p = p.detach().to(dtype).requires_grad_(rg);
  }
}

at::ScalarType TTTLayer::dtype() const { return params_.front().second.scalar_type(); }
at::Device TTTLayer::device() const { return params_.front().second.device(); }

// ---------------------------------------------------------------------------------------------
// Forward

namespace {

// Inner state and gradient sums are kept in float32 (float64 for a float64 layer): bf16 state drifts
// (spec 1.11, 5.4).
at::ScalarType inner_dtype(at::ScalarType param) { return param == at::kDouble ? at::kDouble : at::kFloat; }

// Interleaved-pair RoPE (dims 2i, 2i+1 rotate together with frequency theta^(-2i/f)), positions mod K
// (spec 1.3): cos and sin of every position's angles, [L, f/2] each, in float32 as the reference
// computes them.
std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& pos, int64_t f, double theta, const at::Device& dev) {
  auto fopt = at::TensorOptions().dtype(at::kFloat).device(dev);
  auto inv = 1.0 / at::pow(theta, at::arange(0, f, 2, fopt.dtype(at::kLong)).to(at::kFloat) / static_cast<double>(f));
  auto ang = pos.to(at::kFloat).unsqueeze(1) * inv.unsqueeze(0);  // [L, f/2]
  return {ang.cos(), ang.sin()};
}

// x: [B, L, nh, f]; the rotated heads as tensor ops (any dtype and device; cos/sin cast to x's dtype as
// the reference does).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t f = x.size(-1);
  auto cs = cos.to(x.scalar_type()).view({1, -1, 1, f / 2});
  auto sn = sin.to(x.scalar_type()).view({1, -1, 1, f / 2});
  auto xp = x.unflatten(-1, {f / 2, 2});
  auto x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
  return at::stack({x0 * cs - x1 * sn, x1 * cs + x0 * sn}, -1).flatten(-2);
}

// RoPE, the split into per-head streams and the column of ones of the inner model's bias, in one pass
// each way, for float32 on the CPU: x [B, L, nh * f] -> [B * nh, L, f + 1]. The tensor form costs a
// stack, six elementwise ops, a permuted copy and a concatenation, and as many again backward.
//
// Rotates every head's pairs by +angle from token-major x [B, L, nh, f] into head-major rows of f + 1
// with the one (to_heads), or by -angle from head-major rows back to token-major (the gradient: the
// rotation is orthogonal, and the ones take none).
void rotate_heads(const float* src, float* dst, const float* cp, const float* sp, int64_t B, int64_t L, int64_t nh,
                  int64_t f, bool to_heads) {
  const int64_t P = f / 2;
  const float sg = to_heads ? 1.f : -1.f;
  at::parallel_for(0, B * L, std::max<int64_t>(64, (int64_t{1} << 16) / (nh * f)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L, t = r % L;
      const float* ct = cp + t * P;
      const float* st = sp + t * P;
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t tok_major = (r * nh + h) * f, head_major = ((b * nh + h) * L + t) * (f + 1);
        const float* x = src + (to_heads ? tok_major : head_major);
        float* o = dst + (to_heads ? head_major : tok_major);
        for (int64_t i = 0; i < P; ++i) {
          const float x0 = x[2 * i], x1 = x[2 * i + 1], s = sg * st[i];
          o[2 * i] = x0 * ct[i] - x1 * s;
          o[2 * i + 1] = x1 * ct[i] + x0 * s;
        }
        if (to_heads) o[f] = 1.f;
      }
    }
  });
}

struct RopeHeadsFunction : public torch::autograd::Function<RopeHeadsFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin, int64_t nh) {
    const at::Tensor xc = x.contiguous(), c = cos.contiguous(), s = sin.contiguous();
    const int64_t B = x.size(0), L = x.size(1), f = x.size(2) / nh;
    at::Tensor out = at::empty({B * nh, L, f + 1}, x.options());
    rotate_heads(xc.const_data_ptr<float>(), out.mutable_data_ptr<float>(), c.const_data_ptr<float>(),
                 s.const_data_ptr<float>(), B, L, nh, f, true);
    ctx->save_for_backward({c, s});
    ctx->saved_data["nh"] = nh;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t nh = ctx->saved_data["nh"].toInt();
    const at::Tensor g = grads[0].contiguous();
    const int64_t B = g.size(0) / nh, L = g.size(1), f = g.size(2) - 1;
    at::Tensor gx = at::empty({B, L, nh * f}, g.options());
    rotate_heads(g.const_data_ptr<float>(), gx.mutable_data_ptr<float>(), saved[0].const_data_ptr<float>(),
                 saved[1].const_data_ptr<float>(), B, L, nh, f, false);
    return {gx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// [B, L, nh, f] (any layout of [B, L, nh * f]) -> per-head streams [B * nh, L, f] in dtype `idt`.
at::Tensor to_heads(const at::Tensor& t, int64_t nh, at::ScalarType idt) {
  const int64_t B = t.size(0), L = t.size(1), f = t.numel() / (B * L * nh);
  return t.reshape({B, L, nh, f}).permute({0, 2, 1, 3}).reshape({B * nh, L, f}).to(idt);
}

// x [B, L, nh * f] -> RoPE'd per-head streams with a column of ones, [B * nh, L, f + 1], in the inner
// dtype `idt`.
at::Tensor rope_heads(const at::Tensor& x, const at::Tensor& pos, double theta, int64_t nh, at::ScalarType idt) {
  const int64_t B = x.size(0), L = x.size(1), f = x.size(2) / nh;
  auto [cos, sin] = rope_tables(pos, f, theta, x.device());
  if (util::fused_kernels_enabled() && x.device().is_cpu() && x.scalar_type() == at::kFloat && idt == at::kFloat)
    return RopeHeadsFunction::apply(x, cos, sin, nh);
  auto r = to_heads(rope(x.reshape({B, L, nh, f}), cos, sin), nh, idt);
  return at::cat({r, at::ones({B * nh, L, 1}, r.options())}, -1);
}

// Depthwise causal conv: xin [B, C, k-1+L] holds the previous k-1 inputs then the chunk; returns
// [B, L, C]. Written as k shifted multiply-adds rather than at::conv1d: the kernel is tiny (4), and
// libtorch's depthwise conv falls back to a slow path for float64 and small inputs.
at::Tensor causal_conv(const at::Tensor& xin, const at::Tensor& w, const at::Tensor& b) {
  const int64_t k = w.size(2), L = xin.size(2) - (k - 1), C = w.size(0);
  auto acc = b.view({1, C, 1}) + xin.narrow(2, 0, L) * w.select(2, 0).view({1, C, 1});
  for (int64_t j = 1; j < k; ++j) acc = acc + xin.narrow(2, j, L) * w.select(2, j).view({1, C, 1});
  return acc.transpose(1, 2);
}

}  // namespace

// The learned initial inner weights, augmented per layer: [nh, d_in+1, d_out] in the inner dtype.
std::vector<at::Tensor> TTTLayer::inner_init() const {
  const auto idt = inner_dtype(dtype());
  std::vector<at::Tensor> w;
  for (int64_t l = 0; l < cfg_.inner_layers(); ++l) {
    const std::string i = std::to_string(l + 1);
    w.push_back(at::cat({param("W" + i), param("b" + i)}, 1).to(idt));
  }
  return w;
}

void TTTLayer::materialize(TTTState& st, const at::Tensor& x) const {
  const int64_t B = st.batch, C = cfg_.hidden_size;
  const size_t nl = static_cast<size_t>(cfg_.inner_layers());
  std::vector<at::Tensor> init = inner_init();
  for (auto& t : init) t = t.unsqueeze(0);  // [1, nh, d_in+1, d_out]
  const int64_t k1 = std::max<int64_t>(cfg_.conv_kernel - 1, 0);
  if (!st.materialized()) {
    st.W.assign(nl, at::Tensor());
    st.G.assign(nl, at::Tensor());
    for (size_t l = 0; l < nl; ++l) {
      st.W[l] = init[l].expand({B, -1, -1, -1});
      st.G[l] = at::zeros(st.W[l].sizes(), init[l].options());
    }
    if (cfg_.share_qk) st.conv_tail = at::zeros({B, C, k1}, x.options());
  } else if (std::any_of(st.fresh.begin(), st.fresh.end(), [](uint8_t v) { return v != 0; })) {
    MT_CHECK(st.W.size() == nl && st.G.size() == nl, "ttt state: has ", st.W.size(), " inner layers, the layer has ",
             nl);
    std::vector<uint8_t> f8(st.fresh.begin(), st.fresh.end());
    auto m = at::from_blob(f8.data(), {B}, at::kByte).to(at::kBool).to(x.device()).view({B, 1, 1, 1});
    if (pitfall::on(6)) {  // tests only: pitfalls.md row 6, a reset to values drawn at construction
      at::Generator g = at::detail::createCPUGenerator(0);
      init[0] = (at::randn(init[0].sizes(), g, at::kDouble) * 0.02).to(init[0].options());
    }
    for (size_t l = 0; l < nl; ++l) {
      st.W[l] = at::where(m, init[l], st.W[l]);
      st.G[l] = st.G[l].masked_fill(m, 0);
    }
    if (cfg_.share_qk) st.conv_tail = st.conv_tail.masked_fill(m.view({B, 1, 1}), 0);
  }
  std::fill(st.fresh.begin(), st.fresh.end(), 0);
}

at::Tensor TTTLayer::run_uniform(const at::Tensor& x, TTTState& st, int64_t pos0, TTTProbes* probes) const {
  const auto& c = cfg_;
  const int64_t B = x.size(0), L = x.size(1), C = c.hidden_size, nh = c.num_attention_heads, f = c.head_dim();
  const int64_t K = c.mini_batch_size, N = B * nh;
  const auto idt = inner_dtype(dtype());

  // Projections (spec 1.3). share_qk: one projection, two depthwise causal convs.
  at::Tensor XQ, XK, XV = at::linear(x, param("v_proj.weight"));
  if (c.share_qk) {
    auto xqk = at::linear(x, param("q_proj.weight")).transpose(1, 2);  // [B, C, L]
    auto xin = at::cat({st.conv_tail, xqk}, 2);
    XQ = causal_conv(xin, param("conv_q.weight"), param("conv_q.bias"));
    XK = causal_conv(xin, param("conv_k.weight"), param("conv_k.bias"));
    st.conv_tail = xin.narrow(2, L, xin.size(2) - L);
  } else {
    XQ = at::linear(x, param("q_proj.weight"));
    XK = at::linear(x, param("k_proj.weight"));
  }
  auto idx = (at::arange(L, at::TensorOptions().dtype(at::kLong).device(x.device())) + pos0).remainder(K);
  detail::ScanInputs in;
  in.XQa = rope_heads(XQ, idx, c.rope_theta, nh, idt);
  in.XKa = rope_heads(XK, idx, c.rope_theta, nh, idt);
  in.XV = to_heads(XV, nh, idt);
  // Learnable inner lr (spec 1.5): base_lr * sigmoid(x . w_h + b_h) / head_dim, per token and head.
  auto lr = at::sigmoid(
      at::linear(x, param("learnable_ttt_lr_weight").view({nh, C}), param("learnable_ttt_lr_bias").view({nh})));
  in.lr = (lr * (c.ttt_base_lr / static_cast<double>(f))).permute({0, 2, 1}).reshape({N, L}).to(idt);
  auto fopt = param("learnable_token_idx").options();
  auto tok_all = at::clamp_min(1.0 / at::arange(1, K + 1, fopt) + param("learnable_token_idx"), 0.0);
  in.tok = tok_all.index_select(0, idx).to(idt);
  in.lnw = param("ttt_norm_weight").to(idt).unsqueeze(0).expand({B, nh, f}).reshape({N, 1, f});
  in.lnb = param("ttt_norm_bias").to(idt).unsqueeze(0).expand({B, nh, f}).reshape({N, 1, f});
  const size_t nl = static_cast<size_t>(c.inner_layers());
  auto flat = [&](const at::Tensor& t) { return t.reshape({N, t.size(2), t.size(3)}); };
  for (size_t l = 0; l < nl; ++l) {
    in.W.push_back(flat(st.W[l]));
    in.G.push_back(flat(st.G[l]));
  }

  detail::ScanSpec spec;
  spec.layers = c.inner_layers();
  spec.K = K;
  spec.s0 = pos0 % K;
  spec.group_size = c.scan_checkpoint_group_size;

  detail::ScanProbes pr;
  if (probes) {
    at::NoGradGuard ng;
    auto prev_idx = (idx - 1).clamp_min(0);
    pr.tokprev = tok_all.detach().index_select(0, prev_idx).to(idt).masked_fill(idx.eq(0), 0.0);
    for (const auto& w : inner_init())
      pr.W0.push_back(w.detach().unsqueeze(0).expand({B, -1, -1, -1}).reshape({N, w.size(1), w.size(2)}));
    auto popt = in.XV.options();
    pr.l0 = at::empty({N, L}, popt);
    pr.lprev = at::empty({N, L}, popt);
    pr.lafter = at::empty({N, L}, popt);
  }

  auto o = detail::scan(spec, in, probes ? &pr : nullptr);

  for (size_t l = 0; l < nl; ++l) {
    st.W[l] = o.W[l].view(st.W[l].sizes());
    st.G[l] = o.G[l].view(st.W[l].sizes());
  }

  if (probes) {
    at::NoGradGuard ng;
    probes->l0 = pr.l0.view({B, nh, L}).to(at::kFloat);
    probes->lprev = pr.lprev.view({B, nh, L}).to(at::kFloat);
    probes->lafter = pr.lafter.view({B, nh, L}).to(at::kFloat);
    if (pitfall::on(15)) {  // tests only: pitfalls.md row 15, one probe per mini-batch instead of per token
      for (at::Tensor* t : {&probes->l0, &probes->lprev, &probes->lafter}) *t = t->slice(-1, 0, L, K);
    }
    // ||W_t - W_0|| with W_t the weights the last token used (mini-batch start minus its pending sum).
    auto tl = tok_all.detach()[(pos0 + L - 1) % K].to(idt);
    std::vector<at::Tensor> per_layer;
    for (size_t l = 0; l < nl; ++l) {
      auto d = (st.W[l].detach() - tl * st.G[l].detach()) - pr.W0[l].view(st.W[l].sizes());
      per_layer.push_back(d.square().sum({1, 2, 3}));
    }
    auto sq = at::stack(per_layer, 1);  // [B, nl]
    probes->w_delta_norm_per_layer = sq.sqrt().to(at::kFloat);
    probes->w_delta_norm = sq.sum(1).sqrt().to(at::kFloat);
    if (pitfall::on(16)) {  // tests only: pitfalls.md row 16, a difference of checksums
      auto s1 =
          (st.W[0].detach() - tl * st.G[0].detach()).sum({1, 2, 3}) - pr.W0[0].view(st.W[0].sizes()).sum({1, 2, 3});
      probes->w_delta_norm = s1.abs().to(at::kFloat);
    }
  }

  // Output path (spec 1.7): merge heads, post-norm over C, optional GELU gate, output projection.
  auto z = o.out.view({B, nh, L, f}).permute({0, 2, 1, 3}).reshape({B, L, C}).to(x.scalar_type());
  if (pitfall::on(2)) return z;  // tests only: pitfalls.md row 2, post-norm and o_proj bypassed
  z = at::layer_norm(z, {C}, param("post_norm.weight"), param("post_norm.bias"), 1e-6);
  if (c.use_gate) z = at::gelu(at::linear(x, param("g_proj.weight")), "tanh") * z;
  return at::linear(z, param("o_proj.weight"));
}

at::Tensor TTTLayer::forward(const at::Tensor& x, TTTState& st, TTTProbes* probes) const {
  const int64_t C = cfg_.hidden_size, K = cfg_.mini_batch_size;
  MT_CHECK(x.defined() && x.dim() == 3 && x.size(2) == C && x.size(1) >= 1, "ttt forward: x must be [B, L>=1, ", C,
           "], got ", x.defined() ? shape_str(x.sizes().vec()) : std::string("undefined"));
  MT_CHECK(st.batch > 0, "ttt forward: state has no batch slots (use layer.init_state(B))");
  MT_CHECK(x.size(0) == st.batch, "ttt forward: x has batch ", x.size(0), ", state has ", st.batch, " slots");
  MT_CHECK(x.scalar_type() == dtype(), "ttt forward: x dtype ", c10::toString(x.scalar_type()),
           " differs from the parameters' ", c10::toString(dtype()));
  MT_CHECK(x.device() == device(), "ttt forward: x on ", x.device().str(), ", parameters on ", device().str());
  materialize(st, x);
  const int64_t B = st.batch, L = x.size(1);
  // Tests only: pitfalls.md row 5, a state that is never written back.
  const TTTState before = pitfall::on(5) ? st : TTTState();

  // Slots at different offsets inside their mini-batch (after a per-slot reset) run separately: the
  // segment boundaries, token factors and RoPE positions depend on position mod K.
  std::map<int64_t, std::vector<int64_t>> by_offset;
  for (int64_t b = 0; b < B; ++b) by_offset[st.position[b] % K].push_back(b);

  at::Tensor y;
  if (by_offset.size() == 1) {
    y = run_uniform(x, st, by_offset.begin()->first, probes);
  } else {
    auto lopt = at::TensorOptions().dtype(at::kLong).device(x.device());
    TTTProbes all;
    for (const auto& [off, slots] : by_offset) {
      auto idx = at::tensor(slots, at::kLong).to(x.device());
      TTTState sub(static_cast<int64_t>(slots.size()));
      std::fill(sub.fresh.begin(), sub.fresh.end(), 0);
      auto sel = [&](const at::Tensor& t) { return t.defined() ? t.index_select(0, idx) : t; };
      for (const auto& t : st.W) sub.W.push_back(sel(t));
      for (const auto& t : st.G) sub.G.push_back(sel(t));
      sub.conv_tail = sel(st.conv_tail);
      TTTProbes sp;
      auto ys = run_uniform(x.index_select(0, idx), sub, off, probes ? &sp : nullptr);
      if (!y.defined()) y = at::zeros({B, L, C}, ys.options());
      y = y.index_copy(0, idx, ys);
      auto put = [&](at::Tensor& dst, const at::Tensor& src) {
        if (src.defined()) dst = dst.index_copy(0, idx, src);
      };
      for (size_t l = 0; l < st.W.size(); ++l) {
        put(st.W[l], sub.W[l]);
        put(st.G[l], sub.G[l]);
      }
      put(st.conv_tail, sub.conv_tail);
      if (probes) {
        at::NoGradGuard ng;
        if (!all.l0.defined()) {
          all.l0 = at::zeros({B, cfg_.num_attention_heads, L}, sp.l0.options());
          all.lprev = at::zeros_like(all.l0);
          all.lafter = at::zeros_like(all.l0);
          all.w_delta_norm = at::zeros({B}, sp.w_delta_norm.options());
          all.w_delta_norm_per_layer = at::zeros({B, sp.w_delta_norm_per_layer.size(1)}, sp.w_delta_norm.options());
        }
        all.l0.index_copy_(0, idx, sp.l0);
        all.lprev.index_copy_(0, idx, sp.lprev);
        all.lafter.index_copy_(0, idx, sp.lafter);
        all.w_delta_norm.index_copy_(0, idx, sp.w_delta_norm);
        all.w_delta_norm_per_layer.index_copy_(0, idx, sp.w_delta_norm_per_layer);
      }
      (void)lopt;
    }
    if (probes) *probes = all;
  }
  for (auto& p : st.position) {
    st.updates += (p % K + L) / K;  // mini-batch boundaries this call crosses
    p += L;
  }
  if (before.batch) {
    st.W = before.W, st.G = before.G;
    st.conv_tail = before.conv_tail;
  }
  return y;
}

at::Tensor TTTLayer::forward(const at::Tensor& x) const {
  MT_CHECK(x.defined() && x.dim() == 3, "ttt forward: x must be [B, L, C]");
  TTTState st(x.size(0));
  return forward(x, st);
}

}  // namespace mt::ttt
