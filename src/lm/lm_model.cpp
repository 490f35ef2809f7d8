#include "lm/lm_model.h"

#include <c10/core/DefaultDtype.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <regex>
#include <set>

#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "lm/release_checkpoint.h"
#include "util/error.h"
#include "util/gemv_q8.h"

namespace mt::lm {

bool is_ttt_param(const std::string& name) {
  for (const char* k : {".ttt.", ".ttt_adapter.", ".ttt_conv.", ".ttt_proj."})
    if (name.find(k) != std::string::npos) return true;
  return false;
}
bool is_lora_param(const std::string& name) {
  return name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
}

LMModelImpl::LMModelImpl(const LMConfig& c, const TTTIntegrationConfig& t, const LoRAConfig& l)
    : cfg(c), ttt_cfg(t), lora_cfg(l) {
  cfg.validate();
  emb = register_module("emb", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.n_q; ++i) emb->push_back(ScaledEmbedding(cfg.card + 1, cfg.dim));
  text_emb = register_module("text_emb", ScaledEmbedding(cfg.text_card + 1, cfg.dim));
  text_linear = register_module("text_linear", Linear(cfg.dim, cfg.text_out_card()));
  const nn::TransformerConfig tc = cfg.transformer();
  transformer = register_module("transformer", StreamingTransformer(tc, layer_configs(tc, ttt_cfg)));
  install_ttt(*transformer, ttt_cfg, tc.norm);
  out_norm = register_module("out_norm", Norm(cfg.norm, cfg.dim));
  depformer_in = register_module("depformer_in", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_depformer_in(); ++i) depformer_in->push_back(Linear(cfg.dim, cfg.depformer_dim));
  linears = torch::nn::ModuleList();
  if (cfg.dep_q > 0) {
    depformer_emb = register_module("depformer_emb", torch::nn::ModuleList());
    for (int64_t i = 0; i + 1 < cfg.dep_q; ++i)
      depformer_emb->push_back(ScaledEmbedding(cfg.card + 1, cfg.depformer_dim, cfg.depformer_low_rank_embeddings));
    depformer_text_emb = register_module(
        "depformer_text_emb", ScaledEmbedding(cfg.text_card + 1, cfg.depformer_dim, cfg.depformer_low_rank_embeddings));
    depformer = register_module("depformer", StreamingTransformer(cfg.depformer()));
    if (cfg.depformer_norm) {
      depformer_norms = register_module("depformer_norms", torch::nn::ModuleList());
      for (int64_t i = 0; i < cfg.dep_q; ++i) depformer_norms->push_back(Norm(*cfg.depformer_norm, cfg.depformer_dim));
    }
  }
  register_module("linears", linears);
  for (int64_t i = 0; i < cfg.dep_q; ++i) linears->push_back(Linear(cfg.depformer_dim, cfg.card));
  if (lora_cfg.enable) {
    std::vector<std::pair<std::string, LinearImpl*>> targets;
    for (const auto& item : named_modules("", /*include_self=*/false)) {
      auto* lin = dynamic_cast<LinearImpl*>(item.value().get());
      if (!lin) continue;
      const std::string& name = item.key();
      bool chosen = lora_cfg.targets.empty() && !is_ttt_param(name + ".");
      for (const auto& t : lora_cfg.targets) chosen |= name.find(t) != std::string::npos;
      if (chosen) targets.emplace_back(name, lin);
    }
    MT_CHECK(!targets.empty(), "lora.targets: no linear layer matches");
    for (auto& [name, lin] : targets) lin->enable_lora(lora_cfg.rank, lora_cfg.scaling);
  }
  if (cfg.quantize) make_q8();
  // No initialisation here: a checkpoint load overwrites every weight (initialising a 7B model first
  // would cost minutes); call init_weights() for a random model.
}

void LMModelImpl::make_q8() {
  // In-Place TTT rewrites its FFN's weights as fast weights: it needs them as floats.
  MT_CHECK(!(ttt_cfg.enable && ttt_cfg.variant == TTTVariant::kInPlace),
           "quantize: true: In-Place TTT updates the base FFN weights and needs a float checkpoint");
  for (auto& [name, lin] : q8_linears(/*all=*/true)) lin->make_q8();
}

std::vector<std::pair<std::string, LinearImpl*>> LMModelImpl::q8_linears(bool all) const {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    auto* lin = dynamic_cast<LinearImpl*>(item.value().get());
    const std::string dotted = item.key() + ".";
    if (lin && !is_ttt_param(dotted) && !is_lora_param(dotted) && (all || lin->is_q8()))
      out.emplace_back(item.key(), lin);
  }
  return out;
}

at::Tensor LMModelImpl::initial_tokens() const {
  std::vector<int64_t> v(static_cast<size_t>(cfg.num_codebooks()), cfg.initial_audio_token());
  v[0] = cfg.initial_text_token();
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).view({1, -1, 1}).to(text_linear->weight.device());
}

std::pair<at::Tensor, at::Tensor> LMModelImpl::forward_text(const at::Tensor& seq, TransformerState* state,
                                                            std::vector<LayerProbes>* probes,
                                                            std::vector<nn::LayerState>* ttt_states) const {
  MT_CHECK(seq.dim() == 3 && seq.size(1) == cfg.num_codebooks(), "forward_text: expected codes [B, ",
           cfg.num_codebooks(), ", T], got ", shape_str(seq.sizes().vec()));
  // Same summation order as the reference: audio streams first, then text.
  at::Tensor x;
  for (int64_t cb = 0; cb < cfg.n_q; ++cb) {
    at::Tensor e = emb->ptr(cb)->as<ScaledEmbeddingImpl>()->forward(seq.select(1, cb + cfg.audio_offset()));
    x = x.defined() ? x + e : e;
  }
  at::Tensor t = text_emb->forward(seq.select(1, 0));
  x = x.defined() ? x + t : t;
  MT_CHECK(!(state && ttt_states), "forward_text: give a streaming state or TTT states, not both");
  nn::ProbeFn collect;
  if (probes) collect = probe_collector(*transformer, *probes);
  const nn::ProbeFn* probe = probes ? &collect : nullptr;
  at::Tensor out = state ? transformer->step(x, *state, probe) : transformer->forward(x, ttt_states, probe);
  out = out_norm->forward(out);
  return {out, text_linear->forward(out).unsqueeze(1)};
}

int64_t LMModelImpl::depformer_in_index(int64_t cb) const {
  if (!cfg.depformer_multi_linear) return 0;
  return cfg.depformer_weights_per_step_schedule.empty() ? cb : cfg.depformer_weights_per_step_schedule[cb];
}

at::Tensor LMModelImpl::depformer_token_emb(int64_t cb, const at::Tensor& tokens) const {
  if (cb == 0) return depformer_text_emb->forward(tokens);
  return depformer_emb->ptr(cb - 1)->as<ScaledEmbeddingImpl>()->forward(tokens);
}

at::Tensor LMModelImpl::depformer_head(int64_t cb, const at::Tensor& x) const {
  at::Tensor h = depformer_norms ? depformer_norms->ptr(cb)->as<NormImpl>()->forward(x) : x;
  return linears->ptr(cb)->as<LinearImpl>()->forward(h);
}

at::Tensor LMModelImpl::forward_depformer_training(const at::Tensor& seq, const at::Tensor& tout) const {
  const int64_t B = seq.size(0), T = seq.size(2), Ka = cfg.dep_q;
  std::vector<at::Tensor> inputs;
  inputs.reserve(Ka);
  for (int64_t cb = 0; cb < Ka; ++cb) {
    at::Tensor tin = depformer_in->ptr(depformer_in_index(cb))->as<LinearImpl>()->forward(tout);
    at::Tensor tok = depformer_token_emb(cb, seq.select(1, cb == 0 ? 0 : cb + cfg.audio_offset() - 1));
    inputs.push_back(tok + tin);
  }
  at::Tensor x = at::stack(inputs, 2).view({B * T, Ka, -1});
  const std::vector<at::Tensor> y = depformer->forward(x).unbind(1);  // (select's backward: Ka zero-filled copies)
  std::vector<at::Tensor> logits;
  for (int64_t cb = 0; cb < Ka; ++cb) logits.push_back(depformer_head(cb, y[cb]).view({B, T, -1}));
  return at::stack(logits, 1);
}

at::Tensor LMModelImpl::depformer_step(int64_t cb, const at::Tensor& prev, const at::Tensor& tout,
                                       TransformerState& st) const {
  at::Tensor x = depformer_in->ptr(depformer_in_index(cb))->as<LinearImpl>()->forward(tout) +
                 depformer_token_emb(cb, prev.view({-1, 1}));
  at::Tensor y = depformer->step(x, st);
  return depformer_head(cb, y.select(1, 0));
}

namespace {
// Shifts stream k right by its delay, filling with the initial token (reference _delay_sequence).
at::Tensor delay_sequence(const std::vector<int64_t>& delays, const at::Tensor& codes, const at::Tensor& initial) {
  const int64_t B = codes.size(0), T = codes.size(2);
  std::vector<at::Tensor> lines;
  for (size_t k = 0; k < delays.size(); ++k) {
    const int64_t d = std::min<int64_t>(delays[k], T);
    at::Tensor line = codes.select(1, static_cast<int64_t>(k));
    if (d > 0) line = at::cat({initial.select(1, static_cast<int64_t>(k)).expand({B, d}), line.narrow(1, 0, T - d)}, 1);
    lines.push_back(line);
  }
  return at::stack(lines, 1);
}
// Shifts stream k left by its delay; the last `delay` steps become NaN and mask false.
std::pair<at::Tensor, at::Tensor> undelay(const std::vector<int64_t>& delays, const at::Tensor& x) {
  const int64_t B = x.size(0), T = x.size(2);
  at::Tensor mask = at::ones({B, static_cast<int64_t>(delays.size()), T}, x.options().dtype(at::kBool));
  if (std::all_of(delays.begin(), delays.end(), [](int64_t d) { return d == 0; })) return {x, mask};  // no copy
  // unbind, not select: the backward of K selects is K zero-filled copies of x summed (9 passes over
  // the audio logits); that of unbind is one stack.
  const std::vector<at::Tensor> streams = x.unbind(1);
  std::vector<at::Tensor> lines;
  for (size_t k = 0; k < delays.size(); ++k) {
    const int64_t d = std::min<int64_t>(delays[k], T);
    at::Tensor line = streams[k];
    if (d > 0) {
      auto shape = line.sizes().vec();
      shape[1] = d;
      line = at::cat({line.narrow(1, d, T - d), at::full(shape, NAN, line.options())}, 1);
      mask.select(1, static_cast<int64_t>(k)).narrow(1, T - d, d).fill_(false);
    }
    lines.push_back(line);
  }
  return {at::stack(lines, 1), mask};
}
}  // namespace

at::Tensor LMModelImpl::delayed_input(const at::Tensor& codes) const {
  MT_CHECK(codes.dim() == 3 && codes.size(1) == cfg.num_codebooks(), "LM forward: expected codes [B, ",
           cfg.num_codebooks(), ", T], got ", shape_str(codes.sizes().vec()));
  MT_CHECK(codes.scalar_type() == at::kLong, "LM forward: codes must be int64");
  const int64_t B = codes.size(0);
  at::Tensor initial = initial_tokens().to(codes.device()).expand({B, -1, -1});
  return at::cat({initial, delay_sequence(cfg.delays, codes, initial)}, 2);  // [B, K, T+1]
}

LMOutput LMModelImpl::finish(const at::Tensor& codes, const at::Tensor& delayed, const at::Tensor& tout,
                             const at::Tensor& text_logits) const {
  const int64_t T = codes.size(2);
  LMOutput out;
  std::vector<int64_t> audio_delays(cfg.delays.begin() + 1, cfg.delays.begin() + 1 + cfg.dep_q);
  if (cfg.dep_q > 0) {
    at::Tensor logits = forward_depformer_training(delayed.narrow(2, 1, T), tout);
    std::tie(out.logits, out.mask) = undelay(audio_delays, logits);
    out.mask = out.mask & codes.narrow(1, cfg.audio_offset(), cfg.dep_q).ne(LMConfig::kZeroToken);
  }
  std::tie(out.text_logits, out.text_mask) = undelay({cfg.delays[0]}, text_logits);
  out.text_mask = out.text_mask & codes.narrow(1, 0, 1).ne(LMConfig::kZeroToken);
  return out;
}

LMOutput LMModelImpl::forward(const at::Tensor& codes, std::vector<LayerProbes>* probes,
                              std::vector<nn::LayerState>* ttt_states) const {
  at::Tensor delayed = delayed_input(codes);
  auto [tout, text_logits] = forward_text(delayed.narrow(2, 0, codes.size(2)), nullptr, probes, ttt_states);
  return finish(codes, delayed, tout, text_logits);
}

namespace {
// Appends the per-token probes of one streaming call to `acc` (concatenated along tokens); norms and
// counts are replaced by the newest.
void append_probes(std::vector<LayerProbes>& acc, const std::vector<LayerProbes>& part) {
  auto cat = [](at::Tensor& a, const at::Tensor& b) {
    if (!b.defined()) return;
    a = a.defined() ? at::cat({a, b}, -1) : b;
  };
  auto merge = [&](ttt::TTTProbes& a, const ttt::TTTProbes& b) {
    cat(a.l0, b.l0);
    cat(a.lprev, b.lprev);
    cat(a.lafter, b.lafter);
    if (b.w_delta_norm.defined()) a.w_delta_norm = b.w_delta_norm;
  };
  if (acc.empty()) {
    acc = part;
    return;
  }
  for (size_t i = 0; i < part.size(); ++i) {
    merge(acc[i].hybrid, part[i].hybrid);
    if (acc[i].adapters.size() < part[i].adapters.size()) acc[i].adapters.resize(part[i].adapters.size());
    for (size_t j = 0; j < part[i].adapters.size(); ++j) merge(acc[i].adapters[j], part[i].adapters[j]);
    if (part[i].inplace_dw_norm.defined()) acc[i].inplace_dw_norm = part[i].inplace_dw_norm;
    acc[i].inplace_updates = part[i].inplace_updates;
  }
}
}  // namespace

LMOutput LMModelImpl::forward_streaming(const at::Tensor& codes, TransformerState& st,
                                        std::vector<LayerProbes>* probes) const {
  at::Tensor delayed = delayed_input(codes);
  const int64_t T = codes.size(2);
  std::vector<at::Tensor> outs, tls;
  if (probes) probes->clear();
  std::vector<LayerProbes> part;
  for (int64_t t = 0; t < T; t += st.max_chunk) {
    auto [o, tl] = forward_text(delayed.narrow(2, t, std::min(st.max_chunk, T - t)), &st, probes ? &part : nullptr);
    outs.push_back(o);
    tls.push_back(tl);
    if (probes) append_probes(*probes, part);
  }
  return finish(codes, delayed, at::cat(outs, 1), at::cat(tls, 2));
}

// ---------------------------------------------------------------------------------------------
namespace {
void trunc_normal_(at::Tensor w, double std, at::Generator& gen) {
  at::NoGradGuard ng;
  at::Tensor t = at::empty(w.sizes(), w.options().dtype(at::kFloat));
  t.normal_(0, std, gen);
  for (int it = 0; it < 100; ++it) {
    at::Tensor bad = t.abs() > 3 * std;
    if (!bad.any().item<bool>()) break;
    at::Tensor fresh = at::empty_like(t).normal_(0, std, gen);
    t = at::where(bad, fresh, t);
  }
  w.copy_(t.clamp(-3 * std, 3 * std));
}
void uniform_fan_in_(at::Tensor w, at::Generator& gen) {
  at::NoGradGuard ng;
  double b = 1.0 / std::sqrt(static_cast<double>(w.size(-1)));
  w.uniform_(-b, b, gen);
}
}  // namespace

void init_base_param(const std::string& n, at::Tensor p, at::Generator& gen, const LMConfig& cfg) {
  at::NoGradGuard ng;
  // Depformer layers keep PyTorch's default Linear init; every other weight is trunc-normal 1/sqrt(fan_in),
  // embeddings 1/sqrt(dim) (the reference's _init_weights).
  if (n.find("norm") != std::string::npos || n.find("alpha") != std::string::npos) {
    if (n.size() >= 4 && n.compare(n.size() - 4, 4, "bias") == 0)
      p.zero_();
    else
      p.fill_(1.0);
  } else if (n.find("layer_scale") != std::string::npos) {
    p.fill_(cfg.layer_scale.value_or(1.0));
  } else if (n.rfind("depformer.", 0) == 0) {
    uniform_fan_in_(p, gen);
  } else {
    trunc_normal_(p, 1.0 / std::sqrt(static_cast<double>(p.size(-1))), gen);
  }
}

void LMModelImpl::init_weights(uint64_t seed) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::map<std::string, at::Tensor> q8_drawn;  // a q8 weight is drawn in float32 by its rule, then quantised
  for (auto& kv : named_parameters()) {
    const std::string& n = kv.key();
    at::Tensor p = kv.value();
    if (is_ttt_param(n) || is_lora_param(n)) continue;  // initialised below by their own rules
    if (n.size() >= 10 && n.compare(n.size() - 10, 10, "weight_scb") == 0) continue;  // with its weight
    if (p.scalar_type() == at::kChar) {
      init_base_param(n, q8_drawn[n] = at::empty(p.sizes(), at::kFloat), gen, cfg);
    } else if (p.device().is_cpu()) {
      init_base_param(n, p, gen, cfg);
    } else {
      at::Tensor t = at::empty(p.sizes(), p.options().device(at::kCPU));
      init_base_param(n, t, gen, cfg);
      p.copy_(t);
    }
  }
  for (auto& [name, lin] : q8_linears()) lin->assign_q8_from(q8_drawn.at(name + ".weight"));
  init_added(seed, true, true);
}

void LMModelImpl::init_added(uint64_t seed, bool ttt, bool lora) {
  if (ttt)
    for (size_t l = 0; l < transformer->layer_ptrs.size(); ++l)
      init_ttt(*transformer->layer_ptrs[l], seed * 1000003ull + l);
  if (lora) {
    uint64_t i = 0;
    for (const auto& item : named_modules("", /*include_self=*/false))
      if (auto* lin = dynamic_cast<LinearImpl*>(item.value().get()); lin && lin->lora_A)
        lin->init_lora(seed * 7919ull + ++i);
  }
}

std::vector<std::pair<std::string, at::Tensor>> LMModelImpl::state_dict() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& kv : named_parameters()) out.emplace_back(kv.key(), kv.value());
  return out;
}

int64_t LMModelImpl::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

namespace {
// The file's tensor for parameter `name`: its own name, or its part of a fused attention tensor
// (Kyutai's released files: in_proj_weight / out_proj.weight, and their q8 `_scb` row scales, hold
// every weight set stacked along dim 0). Undefined when absent; names used are added to `used`.
at::Tensor find_source(const std::map<std::string, at::Tensor>& tensors, const std::string& name, const at::Tensor& p,
                       const std::string& source, std::set<std::string>& used) {
  if (auto it = tensors.find(name); it != tensors.end()) {
    used.insert(name);
    return it->second;
  }
  static const std::regex split_re(R"((.*self_attn\.)(in|out)_projs\.(\d+)\.weight(_scb)?)");
  std::smatch m;
  if (!std::regex_match(name, m, split_re)) return {};
  const std::string prefix = m[1], suffix = m[4];
  const int64_t i = std::stoll(m[3]);
  const std::vector<std::string> fused =
      m[2] == "in" ? std::vector<std::string>{prefix + "in_proj_weight" + suffix, prefix + "in_proj.weight" + suffix}
                   : std::vector<std::string>{prefix + "out_proj.weight" + suffix};
  for (const auto& f : fused) {
    auto ft = tensors.find(f);
    if (ft == tensors.end()) continue;
    const at::Tensor& w = ft->second;
    const int64_t rows = p.size(0);
    const bool cols_ok = p.dim() == 1 || (w.dim() == 2 && w.size(1) == p.size(1));
    MT_CHECK(w.dim() == p.dim() && cols_ok && w.size(0) % rows == 0, source, ": tensor '", f, "': expected shape [k*",
             rows, p.dim() == 2 ? str(", ", p.size(1)) : "", "], got ", shape_str(w.sizes().vec()));
    const int64_t mult = w.size(0) / rows;
    MT_CHECK(i < mult, source, ": tensor '", f, "' holds ", mult, " weight sets, the model needs set ", i);
    used.insert(f);
    return p.dim() == 1 ? w.view({mult, rows})[i] : w.view({mult, rows, -1})[i];
  }
  return {};
}

// q8 weights (int8 codes, float32 row scales) where the config says quantize: true, floats elsewhere;
// a mismatch says which setting the file needs.
void check_source_dtype(const at::Tensor& src, const at::Tensor& p, const std::string& name,
                        const std::string& source) {
  const auto got = src.scalar_type();
  const bool scb = name.size() >= 10 && name.compare(name.size() - 10, 10, "weight_scb") == 0;
  if (p.scalar_type() == at::kChar)
    MT_CHECK(got == at::kChar, source, ": tensor '", name, "' ", shape_str(src.sizes().vec()), " is ",
             c10::toString(got),
             " but the config says quantize: true (int8 expected): set quantize false for a "
             "float checkpoint, or convert it with `moshi-ttt quantize`");
  else if (scb)
    MT_CHECK(got == at::kFloat, source, ": tensor '", name, "' ", shape_str(src.sizes().vec()),
             ": expected float32 q8 row scales, got ", c10::toString(got));
  else if (got == at::kChar)
    fail(source, ": tensor '", name, "' ", shape_str(src.sizes().vec()),
         " is int8 (a q8 checkpoint) where the model "
         "expects floats: set \"quantize\": true in the config");
  else
    MT_CHECK(at::isFloatingType(got), source, ": tensor '", name, "': expected a float dtype, got ",
             c10::toString(got));
}

// LMModelImpl::load's work; `copied` (when given) is called with each source tensor, or slice of a
// fused one, once it is copied into its parameter.
int64_t load_strict(LMModelImpl& self, const std::map<std::string, at::Tensor>& tensors, const std::string& source,
                    const std::function<void(const at::Tensor&)>& copied) {
  at::NoGradGuard ng;
  std::set<std::string> used;
  // A base checkpoint has no TTT (or LoRA) tensors at all: those keep their initial values.
  bool file_has_ttt = false, file_has_lora = false;
  for (const auto& kv : tensors) {
    file_has_ttt |= is_ttt_param(kv.first);
    file_has_lora |= is_lora_param(kv.first);
  }
  int64_t kept_ttt = 0, kept_lora = 0;
  for (auto& kv : self.named_parameters()) {
    const std::string& name = kv.key();
    at::Tensor p = kv.value();
    at::Tensor src = find_source(tensors, name, p, source, used);
    if (!src.defined() && is_ttt_param(name) && !file_has_ttt) {
      ++kept_ttt;
      continue;
    }
    if (!src.defined() && is_lora_param(name) && !file_has_lora) {
      ++kept_lora;
      continue;
    }
    MT_CHECK(src.defined(), source, ": missing tensor '", name, "' (expected shape ", shape_str(p.sizes().vec()), ")");
    MT_CHECK(src.sizes() == p.sizes(), source, ": tensor '", name, "': expected shape ", shape_str(p.sizes().vec()),
             ", got ", shape_str(src.sizes().vec()));
    check_source_dtype(src, p, name, source);
    p.copy_(src);
    if (copied) copied(src);
  }
  std::vector<std::string> extra;
  for (const auto& kv : tensors)
    if (!used.count(kv.first)) extra.push_back(kv.first);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
    if (extra.size() > 5) list += str(" and ", extra.size() - 5, " more");
    fail(source, ": unexpected tensor", extra.size() > 1 ? "s " : " ", list, " (not part of this model's config)");
  }
  // TTT / LoRA tensors absent from a base checkpoint get their reference initial values (as init_weights(0)).
  self.init_added(0, kept_ttt > 0, kept_lora > 0);
  return kept_ttt + kept_lora;
}

// Drops the mapped file pages under [p, p + n) (rounded out to whole pages, which stay inside the
// mapping: it spans whole pages) from this process's resident set; a later read faults them in again,
// unchanged, since a read-only private mapping holds no modified page.
void release_mapped_pages(const void* p, size_t n) {
  if (n == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n + page - 1) & ~(page - 1);
  madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}
}  // namespace

int64_t LMModelImpl::load(const io::SafeTensors& file) {
  std::map<std::string, at::Tensor> m;
  std::set<const void*> mapped;  // storages of the views that alias the mapping
  for (const auto& t : file.tensors()) {
    m[t.name] = file.view(t.name);
    // view() copies data misaligned for its dtype: two views of one tensor share an address only
    // when both alias the mapping.
    if (m[t.name].numel() > 0 && file.view(t.name).const_data_ptr() == m[t.name].const_data_ptr())
      mapped.insert(m[t.name].storage().data());
  }
  // The parameters are fresh allocations: once a tensor is copied into them its mapped pages can go,
  // so the peak resident set is about one copy of the weights, not the copies plus the whole mapping
  // (a 7B in bf16: 15.4 GB instead of 30.8 GB, on a 24 GB machine).
  return load_strict(*this, m, file.path(), [&](const at::Tensor& src) {
    if (mapped.count(src.storage().data())) release_mapped_pages(src.const_data_ptr(), src.nbytes());
  });
}

int64_t LMModelImpl::load(const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  return load_strict(*this, tensors, source, nullptr);
}

int64_t LMModelImpl::load_overlay(const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  at::NoGradGuard ng;
  auto params = named_parameters();
  for (const auto& [name, t] : tensors) {
    const at::Tensor* p = params.find(name);
    MT_CHECK(p, source, ": tensor '", name, "' is not a parameter of this model (check its ttt: / lora: sections)");
    MT_CHECK(t.sizes() == p->sizes(), source, ": tensor '", name, "': expected shape ", shape_str(p->sizes().vec()),
             ", got ", shape_str(t.sizes().vec()));
  }
  for (const auto& kv : params)
    if (is_ttt_param(kv.key()) || is_lora_param(kv.key()))
      MT_CHECK(tensors.count(kv.key()), source, ": missing tensor '", kv.key(), "' (expected shape ",
               shape_str(kv.value().sizes().vec()), ")");
  for (const auto& [name, t] : tensors) params[name].copy_(t);
  return static_cast<int64_t>(tensors.size());
}

int64_t LMModelImpl::load_overlay(const std::string& path) {
  io::SafeTensors f(path);
  std::map<std::string, at::Tensor> t;
  for (const auto& i : f.tensors()) t[i.name] = f.view(i.name);
  return load_overlay(t, path);
}

LMModel load_lm(const LMConfig& cfg, const std::string& path, std::optional<at::ScalarType> dtype,
                const TTTIntegrationConfig& ttt, int64_t* initialised, const LoRAConfig& lora,
                const std::string& lora_path, std::optional<at::Device> device) {
  io::SafeTensors f(path);
  if (!dtype) {
    dtype = at::kFloat;
    for (const auto& t : f.tensors())
      if (t.dtype == "BF16" || t.dtype == "F16") dtype = io::to_scalar_type(t.dtype);
  }
  // Built in the dtype it will hold: a bf16 7B never exists as a float32 copy (30.8 GB) on the way.
  // The constructor allocates without writing, so the host pages are never touched (the kernel backs
  // them lazily): moved to another device before loading, the weights reach it from the mapped file
  // with no host copy in between.
  LMModel m(nullptr);
  const caffe2::TypeMeta before = c10::get_default_dtype();
  c10::set_default_dtype(c10::scalarTypeToTypeMeta(*dtype));
  try {
    m = LMModel(cfg, ttt, lora);
  } catch (...) {
    c10::set_default_dtype(before);
    throw;
  }
  c10::set_default_dtype(before);
  m->to(*dtype);
  if (device && !device->is_cpu()) m->to(*device);
  int64_t n = m->load(f);
  if (!lora_path.empty()) {
    m->load_overlay(lora_path);
    n = 0;
  }
  if (initialised) *initialised = n;
  // A checkpoint holding NaN or inf (a diverged run saved anyway, a corrupt copy) would score and
  // generate garbage without a word: name the tensor instead.
  for (const auto& [name, p] : m->state_dict()) {
    const int64_t bad = (~at::isfinite(p.detach())).sum().item<int64_t>();
    MT_CHECK(bad == 0, path, ": tensor '", name, "' holds ", bad, " non-finite value(s) (NaN or inf) of ", p.numel());
  }
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  return m;
}

std::vector<std::pair<std::string, at::Tensor>> quantized_state_dict(const LMModelImpl& m) {
  MT_CHECK(!m.cfg.quantize, "quantize: the model is q8 already");
  std::set<std::string> q8;
  for (const auto& [name, lin] : m.q8_linears(/*all=*/true)) q8.insert(name + ".weight");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, p] : m.state_dict()) {
    if (!q8.count(name)) {
      out.emplace_back(name, p.detach());
      continue;
    }
    util::Q8Weight q = util::quantize_q8(p);
    out.emplace_back(name, q.cb);
    out.emplace_back(name + "_scb", q.scb);
  }
  return out;
}

Q8FileStats save_quantized(const LMModelImpl& m, const std::string& path,
                           const std::map<std::string, std::string>& metadata) {
  MT_CHECK(!m.cfg.quantize, "quantize: the model is q8 already");
  std::set<std::string> q8;
  for (const auto& [name, lin] : m.q8_linears(/*all=*/true)) q8.insert(name + ".weight");
  enum class Part { kAsIs, kCodes, kScales };
  std::vector<io::TensorSpec> specs;
  std::vector<std::pair<at::Tensor, Part>> sources;  // per spec: the parameter it is made from, and how
  Q8FileStats st;
  for (const auto& [name, p] : m.state_dict()) {
    if (!q8.count(name)) {
      specs.push_back({name, p.scalar_type(), p.sizes().vec()});
      sources.emplace_back(p.detach(), Part::kAsIs);
      st.float_bytes += p.numel() * static_cast<int64_t>(p.element_size());
      continue;
    }
    specs.push_back({name, at::kChar, p.sizes().vec()});
    specs.push_back({name + "_scb", at::kFloat, {p.size(0)}});
    sources.emplace_back(p.detach(), Part::kCodes);
    sources.emplace_back(p.detach(), Part::kScales);
    ++st.linears;
    st.code_bytes += p.numel();
  }
  // One linear quantised at a time, its scales kept for the spec that follows its codes: a 7B's q8
  // file is written beside its bf16 model without a second copy of either in memory.
  util::Q8Weight last;
  io::save_streaming(
      path, specs,
      [&](const io::TensorSpec&, size_t i) {
        const auto& [src, part] = sources[i];
        if (part == Part::kAsIs) return src;
        if (part == Part::kCodes) last = util::quantize_q8(src);
        at::Tensor t = part == Part::kCodes ? last.cb : last.scb;
        if (part == Part::kScales) last = {};
        return t;
      },
      metadata);
  return st;
}

bool infer_config(const io::SafeTensors& f, LMConfig& c, std::vector<std::string>* notes) {
  auto note = [&](const std::string& s) {
    if (notes) notes->push_back(s);
  };
  auto count = [&](const std::string& prefix) {
    int64_t n = 0;
    while (true) {
      bool found = false;
      for (const auto& t : f.tensors())
        if (t.name.rfind(prefix + std::to_string(n) + ".", 0) == 0) {
          found = true;
          break;
        }
      if (!found) return n;
      ++n;
    }
  };
  if (!f.contains("text_emb.weight") || !f.contains("emb.0.weight")) return false;
  c = LMConfig();
  const auto& te = f.info("text_emb.weight");
  c.dim = te.shape.at(1);
  c.text_card = te.shape.at(0) - 1;
  if (f.contains("text_linear.weight") && f.info("text_linear.weight").shape.at(0) != c.text_card)
    c.text_card_out = f.info("text_linear.weight").shape.at(0);
  c.n_q = count("emb.");
  c.card = f.info("emb.0.weight").shape.at(0) - 1;
  c.num_layers = count("transformer.layers.");
  c.norm = f.contains("out_norm.alpha") ? "rms_norm_f32" : "layer_norm";
  if (f.contains("out_norm.alpha")) note("norm: RMSNorm weights; rms_norm_f32 assumed (rms_norm has the same tensors)");
  const std::string l0 = "transformer.layers.0.";
  auto ff_scale = [](int64_t dim, int64_t hidden) {
    if (hidden == (21 * dim) / 8) return 4.0;
    return static_cast<double>((3 * hidden + 1) / 2) / static_cast<double>(dim);
  };
  if (f.contains(l0 + "gating.linear_in.weight")) {
    c.gating = "silu";
    c.hidden_scale = ff_scale(c.dim, f.info(l0 + "gating.linear_out.weight").shape.at(1));
    note("gating: gated FFN; SiLU assumed (the activation is not stored)");
  } else if (f.contains(l0 + "linear1.weight")) {
    c.gating = "none";
    c.hidden_scale = static_cast<double>(f.info(l0 + "linear1.weight").shape.at(0)) / static_cast<double>(c.dim);
  }
  c.dep_q = count("linears.");
  if (c.dep_q > 0) {
    c.depformer_dim = f.info("linears.0.weight").shape.at(1);
    c.depformer_num_layers = count("depformer.layers.");
    c.depformer_multi_linear = count("depformer_in.") > 1;
    c.depformer_weights_per_step = f.contains("depformer.layers.0.gating.0.linear_in.weight");
    if (f.contains("depformer_text_emb.low_rank.weight"))
      c.depformer_low_rank_embeddings = f.info("depformer_text_emb.weight").shape.at(1);
    const std::string g = c.depformer_weights_per_step ? "depformer.layers.0.gating.0." : "depformer.layers.0.gating.";
    if (f.contains(g + "linear_out.weight")) {
      int64_t hidden = f.info(g + "linear_out.weight").shape.at(1);
      c.depformer_dim_feedforward = {hidden == (21 * c.depformer_dim) / 8 ? 4 * c.depformer_dim : (3 * hidden + 1) / 2};
      c.depformer_gating = "silu";
    }
  }
  for (const auto& t : f.tensors())
    if (t.dtype == "I8" && f.contains(t.name + "_scb")) c.quantize = true;
  if (c.quantize) note("quantize: int8 linear weights with float32 row scales (*_scb): Kyutai's q8 format");
  c.delays.assign(static_cast<size_t>(c.n_q + 1), 0);
  if (c.n_q == 16 && c.dep_q == 8) c.delays = LMConfig::moshiko_7b().delays;
  note("delays, heads, positional embedding and context are not stored in the weights: defaults shown");
  if (c.dim == 4096 && c.n_q == 16) {
    LMConfig m = LMConfig::moshiko_7b();
    c.num_heads = m.num_heads;
    c.depformer_num_heads = m.depformer_num_heads;
    c.positional_embedding = m.positional_embedding;
    c.depformer_pos_emb = m.depformer_pos_emb;
    c.context = m.context;
    note("shapes match moshiko 7B: its heads, RoPE and context taken from the preset");
  }
  return true;
}

}  // namespace mt::lm
