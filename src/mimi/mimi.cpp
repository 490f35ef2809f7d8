#include "mimi/mimi.h"

#include <ATen/ATen.h>
#include <torch/nn/utils.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/hub.h"
#include "io/safetensors.h"
#include "util/error.h"

namespace mt::mimi {

// ---------------------------------------------------------------- config

MimiConfig MimiConfig::released() {
  MimiConfig c;
  auto& t = c.transformer;
  t.d_model = 512;
  t.num_heads = 8;
  t.num_layers = 8;
  t.dim_feedforward = {2048};
  t.norm = "layer_norm";
  t.positional_embedding = "rope";
  t.max_period = 10000;
  t.gating = "none";
  t.layer_scale = 0.01;
  t.context = 250;
  t.causal = true;
  return c;
}

namespace {

template <class T>
void get(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    out = j[key].get<T>();
  } catch (const std::exception& e) {
    fail(where, ".", key, ": ", e.what());
  }
}

void check_keys(const nlohmann::json& j, const std::set<std::string>& known, const std::string& where) {
  MT_CHECK(j.is_object(), where, ": expected an object");
  for (const auto& [k, v] : j.items()) MT_CHECK(known.count(k), where, ": unknown key '", k, "'");
}

}  // namespace

MimiConfig MimiConfig::from_json(const nlohmann::json& j, const std::string& src) {
  MimiConfig c = released();
  check_keys(j,
             {"sample_rate", "channels", "frame_rate", "seanet", "quantizer", "transformer", "num_codebooks",
              "encoder_frame_rate", "causal", "model_type"},
             src);
  get(j, "sample_rate", c.sample_rate, src);
  get(j, "channels", c.channels, src);
  get(j, "frame_rate", c.frame_rate, src);
  get(j, "num_codebooks", c.num_codebooks, src);
  if (j.contains("seanet")) {
    const auto& s = j["seanet"];
    const std::string w = src + ".seanet";
    check_keys(s,
               {"channels", "dimension", "causal", "n_filters", "n_residual_layers", "activation", "compress",
                "dilation_base", "disable_norm_outer_blocks", "kernel_size", "residual_kernel_size", "last_kernel_size",
                "norm", "pad_mode", "ratios", "true_skip", "lstm", "final_activation"},
               w);
    auto& o = c.seanet;
    get(s, "channels", o.channels, w);
    get(s, "dimension", o.dimension, w);
    get(s, "causal", o.causal, w);
    get(s, "n_filters", o.n_filters, w);
    get(s, "n_residual_layers", o.n_residual_layers, w);
    get(s, "activation", o.activation, w);
    get(s, "compress", o.compress, w);
    get(s, "dilation_base", o.dilation_base, w);
    get(s, "kernel_size", o.kernel_size, w);
    get(s, "residual_kernel_size", o.residual_kernel_size, w);
    get(s, "last_kernel_size", o.last_kernel_size, w);
    get(s, "norm", o.norm, w);
    get(s, "pad_mode", o.pad_mode, w);
    get(s, "ratios", o.ratios, w);
    get(s, "true_skip", o.true_skip, w);
    int64_t lstm = 0;
    get(s, "lstm", lstm, w);
    MT_CHECK(lstm == 0, w, ".lstm: LSTM layers are not supported (Mimi has none)");
    MT_CHECK(!s.contains("final_activation") || s["final_activation"].is_null(), w,
             ".final_activation: not supported (Mimi has none)");
  }
  if (j.contains("quantizer")) {
    const auto& q = j["quantizer"];
    const std::string w = src + ".quantizer";
    check_keys(q, {"dimension", "n_q", "bins", "input_dimension", "output_dimension"}, w);
    get(q, "dimension", c.quantizer.dimension, w);
    get(q, "n_q", c.quantizer.n_q, w);
    get(q, "bins", c.quantizer.bins, w);
    get(q, "input_dimension", c.quantizer.input_dimension, w);
    get(q, "output_dimension", c.quantizer.output_dimension, w);
  }
  if (j.contains("transformer")) {
    const auto& t = j["transformer"];
    const std::string w = src + ".transformer";
    check_keys(t,
               {"d_model", "num_heads", "num_layers", "causal", "layer_scale", "context", "conv_layout", "max_period",
                "gating", "norm", "positional_embedding", "dim_feedforward", "input_dimension", "output_dimensions",
                "bias_ff", "bias_attn"},
               w);
    auto& o = c.transformer;
    get(t, "d_model", o.d_model, w);
    get(t, "num_heads", o.num_heads, w);
    get(t, "num_layers", o.num_layers, w);
    get(t, "causal", o.causal, w);
    if (t.contains("layer_scale"))
      o.layer_scale = t["layer_scale"].is_null() ? std::nullopt : std::optional<double>(t["layer_scale"].get<double>());
    if (t.contains("context"))
      o.context = t["context"].is_null() ? std::nullopt : std::optional<int64_t>(t["context"].get<int64_t>());
    get(t, "max_period", o.max_period, w);
    get(t, "gating", o.gating, w);
    get(t, "norm", o.norm, w);
    get(t, "positional_embedding", o.positional_embedding, w);
    int64_t ff = o.dim_feedforward.empty() ? 0 : o.dim_feedforward[0];
    get(t, "dim_feedforward", ff, w);
    o.dim_feedforward = {ff};
    bool conv_layout = true, bias = false;
    get(t, "conv_layout", conv_layout, w);
    MT_CHECK(conv_layout, w, ".conv_layout: only true (Mimi's layout) is supported");
    get(t, "bias_ff", bias, w);
    MT_CHECK(!bias, w, ".bias_ff: biases are not supported (Mimi has none)");
    get(t, "bias_attn", bias, w);
    MT_CHECK(!bias, w, ".bias_attn: biases are not supported (Mimi has none)");
    int64_t in_dim = o.d_model;
    get(t, "input_dimension", in_dim, w);
    MT_CHECK(in_dim == o.d_model, w, ".input_dimension ", in_dim, " != d_model ", o.d_model,
             ": projected transformers are not supported (Mimi has none)");
    std::vector<int64_t> outs{o.d_model};
    get(t, "output_dimensions", outs, w);
    MT_CHECK(outs.size() == 1 && outs[0] == o.d_model, w, ".output_dimensions must be [d_model] (Mimi's)");
  }
  c.validate();
  return c;
}

MimiConfig MimiConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  MT_CHECK(in, path, ": cannot open the Mimi config");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    fail(path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

nlohmann::json MimiConfig::to_json() const {
  const auto& s = seanet;
  const auto& t = transformer;
  nlohmann::json j;
  j["sample_rate"] = sample_rate;
  j["channels"] = channels;
  j["frame_rate"] = frame_rate;
  j["num_codebooks"] = num_codebooks;
  j["seanet"] = {{"channels", s.channels},
                 {"dimension", s.dimension},
                 {"causal", s.causal},
                 {"n_filters", s.n_filters},
                 {"n_residual_layers", s.n_residual_layers},
                 {"activation", s.activation},
                 {"compress", s.compress},
                 {"dilation_base", s.dilation_base},
                 {"kernel_size", s.kernel_size},
                 {"residual_kernel_size", s.residual_kernel_size},
                 {"last_kernel_size", s.last_kernel_size},
                 {"norm", s.norm},
                 {"pad_mode", s.pad_mode},
                 {"ratios", s.ratios},
                 {"true_skip", s.true_skip}};
  j["quantizer"] = {{"dimension", quantizer.dimension},
                    {"n_q", quantizer.n_q},
                    {"bins", quantizer.bins},
                    {"input_dimension", quantizer.input_dimension},
                    {"output_dimension", quantizer.output_dimension}};
  j["transformer"] = {{"d_model", t.d_model},
                      {"num_heads", t.num_heads},
                      {"num_layers", t.num_layers},
                      {"causal", t.causal},
                      {"max_period", t.max_period},
                      {"gating", t.gating},
                      {"norm", t.norm},
                      {"positional_embedding", t.positional_embedding},
                      {"dim_feedforward", t.dim_feedforward.at(0)},
                      {"conv_layout", true},
                      {"input_dimension", t.d_model},
                      {"output_dimensions", {t.d_model}}};
  j["transformer"]["layer_scale"] = t.layer_scale ? nlohmann::json(*t.layer_scale) : nlohmann::json(nullptr);
  j["transformer"]["context"] = t.context ? nlohmann::json(*t.context) : nlohmann::json(nullptr);
  return j;
}

int64_t MimiConfig::frame_size() const { return static_cast<int64_t>(std::llround(sample_rate / frame_rate)); }

int64_t MimiConfig::resample_stride() const { return frame_size() / seanet.hop_length(); }

void MimiConfig::validate() const {
  MT_CHECK(sample_rate > 0 && frame_rate > 0, "mimi config: sample_rate and frame_rate must be positive");
  MT_CHECK(channels == 1 && seanet.channels == 1, "mimi config: only mono codecs are supported (channels 1)");
  const int64_t hop = seanet.hop_length();
  MT_CHECK(std::abs(sample_rate / frame_rate - static_cast<double>(frame_size())) < 1e-6,
           "mimi config: sample_rate / frame_rate = ", sample_rate / frame_rate, " is not a whole number of samples");
  MT_CHECK(frame_size() % hop == 0 && resample_stride() >= 1, "mimi config: frame size ", frame_size(),
           " is not a multiple of the SEANet hop ", hop);
  MT_CHECK(seanet.dimension == transformer.d_model, "mimi config: seanet.dimension ", seanet.dimension,
           " != transformer.d_model ", transformer.d_model);
  MT_CHECK(quantizer.input_dimension == seanet.dimension && quantizer.output_dimension == seanet.dimension,
           "mimi config: quantizer input/output dimension must equal the latent dimension ", seanet.dimension);
  MT_CHECK(num_codebooks >= 1 && num_codebooks <= quantizer.n_q, "mimi config: num_codebooks ", num_codebooks,
           " outside 1..n_q (", quantizer.n_q, ")");
  MT_CHECK(transformer.gating == "none", "mimi config: transformer.gating '", transformer.gating, "' (Mimi's is none)");
  MT_CHECK(transformer.d_model % transformer.num_heads == 0, "mimi config: d_model ", transformer.d_model,
           " not divisible by num_heads ", transformer.num_heads);
}

// ---------------------------------------------------------------- model

ProjectedTransformerImpl::ProjectedTransformerImpl(const nn::TransformerConfig& c) {
  transformer = register_module("transformer", nn::StreamingTransformer(c));
}

DownsampleImpl::DownsampleImpl(int64_t dim, int64_t stride) {
  conv = register_module("conv", StreamingConv1d(dim, dim, 2 * stride, stride, 1, 1, false, "replicate"));
}

UpsampleImpl::UpsampleImpl(int64_t dim, int64_t stride) {
  convtr = register_module("convtr", StreamingConvTranspose1d(dim, dim, 2 * stride, stride, dim, false));
}

void MimiState::reset() {
  enc.reset();
  dec.reset();
  enc_tr.reset();
  dec_tr.reset();
  down.reset();
  up.reset();
}

void MimiState::reset_slot(int64_t b) {
  MT_CHECK(b >= 0 && b < batch, "mimi state: slot ", b, " out of range [0, ", batch, ")");
  enc.reset_slot(b);
  dec.reset_slot(b);
  enc_tr.reset_slot(b);
  dec_tr.reset_slot(b);
  down.reset_slot(b);
  up.reset_slot(b);
}

MimiImpl::MimiImpl(const MimiConfig& c) : cfg(c) {
  cfg.validate();
  encoder = register_module("encoder", SEANet(cfg.seanet, true));
  decoder = register_module("decoder", SEANet(cfg.seanet, false));
  encoder_transformer = register_module("encoder_transformer", ProjectedTransformer(cfg.transformer));
  decoder_transformer = register_module("decoder_transformer", ProjectedTransformer(cfg.transformer));
  const int64_t stride = cfg.resample_stride();
  MT_CHECK(stride > 1, "mimi config: the encoder frame rate equals the frame rate (no resampling) is not supported");
  downsample = register_module("downsample", Downsample(cfg.seanet.dimension, stride));
  upsample = register_module("upsample", Upsample(cfg.seanet.dimension, stride));
  quantizer = register_module("quantizer", SplitRVQ(cfg.quantizer));
}

at::Tensor MimiImpl::to_frame_rate(const at::Tensor& emb, MimiState* st) const {
  return st ? downsample->conv->step(emb, st->down) : downsample->conv->forward(emb);
}

at::Tensor MimiImpl::to_encoder_rate(const at::Tensor& emb, MimiState* st) const {
  return st ? upsample->convtr->step(emb, st->up) : upsample->convtr->forward(emb);
}

at::Tensor MimiImpl::encode_latent(const at::Tensor& wav) const {
  MT_CHECK(wav.dim() == 3 && wav.size(1) == 1, "mimi encode: expected wav [B, 1, N], got ",
           shape_str(wav.sizes().vec()));
  const int64_t fs = cfg.frame_size();
  at::Tensor x = wav.to(at::kFloat);
  const int64_t rem = x.size(2) % fs;
  if (rem) x = at::constant_pad_nd(x, {0, fs - rem});
  at::Tensor e = encoder->forward(x);                                                // [B, D, 2F]
  e = encoder_transformer->transformer->forward(e.transpose(1, 2)).transpose(1, 2);  // conv layout
  return to_frame_rate(e, nullptr);
}

at::Tensor MimiImpl::encode(const at::Tensor& wav) const {
  return quantizer->encode(encode_latent(wav), cfg.num_codebooks);
}

at::Tensor MimiImpl::decode_latent(const at::Tensor& codes) const {
  MT_CHECK(codes.dim() == 3, "mimi decode: expected codes [B, K, T], got ", shape_str(codes.sizes().vec()));
  check_code_range(codes, "mimi decode");
  return quantizer->decode(codes.to(at::kLong));
}

void MimiImpl::check_code_range(const at::Tensor& codes, const std::string& source) const {
  MT_CHECK(codes.numel() == 0 || (codes.min().item<int64_t>() >= 0 && codes.max().item<int64_t>() < cfg.quantizer.bins),
           source, ": codes outside [0, ", cfg.quantizer.bins, ")");
}

at::Tensor MimiImpl::decode(const at::Tensor& codes) const {
  at::Tensor e = to_encoder_rate(decode_latent(codes), nullptr);
  e = decoder_transformer->transformer->forward(e.transpose(1, 2)).transpose(1, 2);
  return decoder->forward(e);
}

MimiState MimiImpl::make_state(int64_t batch, int64_t max_frames, bool exact) const {
  MT_CHECK(batch >= 1 && max_frames >= 1, "mimi make_state: batch and max_frames_per_step must be >= 1");
  MimiState s;
  s.batch = batch;
  s.enc = encoder->make_state();
  s.dec = decoder->make_state();
  const int64_t chunk = max_frames * cfg.resample_stride();
  MT_CHECK(cfg.transformer.context, "mimi streaming needs a transformer context (attention window)");
  const int64_t ctx = *cfg.transformer.context;
  // The ring holds window + chunk - 1 entries (see StreamingTransformer::make_state).
  std::optional<int64_t> window;
  if (!exact) window = std::max<int64_t>(1, ctx - chunk + 1);
  s.enc_tr = encoder_transformer->transformer->make_state(batch, chunk, window);
  s.dec_tr = decoder_transformer->transformer->make_state(batch, chunk, window);
  return s;
}

at::Tensor MimiImpl::encode_step(const at::Tensor& wav, MimiState& st) const {
  return quantizer->encode(encode_latent_step(wav, st), cfg.num_codebooks);
}

at::Tensor MimiImpl::encode_latent_step(const at::Tensor& wav, MimiState& st) const {
  MT_CHECK(wav.dim() == 3 && wav.size(0) == st.batch && wav.size(1) == 1, "mimi encode_step: expected wav [", st.batch,
           ", 1, k*", cfg.frame_size(), "], got ", shape_str(wav.sizes().vec()));
  MT_CHECK(wav.size(2) % cfg.frame_size() == 0, "mimi encode_step: ", wav.size(2), " samples is not a whole number of ",
           cfg.frame_size(), "-sample frames");
  at::Tensor e = encoder->step(wav.to(at::kFloat), st.enc);
  e = encoder_transformer->transformer->step(e.transpose(1, 2), st.enc_tr).transpose(1, 2);
  return to_frame_rate(e, &st);
}

at::Tensor MimiImpl::decode_step(const at::Tensor& codes, MimiState& st) const {
  MT_CHECK(codes.dim() == 3 && codes.size(0) == st.batch, "mimi decode_step: expected codes [", st.batch,
           ", K, k], got ", shape_str(codes.sizes().vec()));
  at::Tensor e = to_encoder_rate(quantizer->decode(codes), &st);
  e = decoder_transformer->transformer->step(e.transpose(1, 2), st.dec_tr).transpose(1, 2);
  return decoder->step(e, st.dec);
}

void MimiImpl::load(const std::map<std::string, at::Tensor>& tensors, const std::string& source) {
  at::NoGradGuard ng;
  // Older names -> current ones.
  auto alias = [](std::string n) {
    auto repl = [&](const std::string& from, const std::string& to) {
      if (n.size() >= from.size() && n.compare(n.size() - from.size(), from.size(), from) == 0)
        n = n.substr(0, n.size() - from.size()) + to;
    };
    repl(".self_attn.in_proj_weight", ".self_attn.in_projs.0.weight");
    repl(".self_attn.out_proj.weight", ".self_attn.out_projs.0.weight");
    repl("._codebook.embed_sum", "._codebook.embedding_sum");
    repl("._codebook.embed_avg", "._codebook.embedding_sum");
    repl("._codebook.cluster_size", "._codebook.cluster_usage");
    repl("._codebook.inited", "._codebook._initialized");
    return n;
  };
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [k, v] : tensors) {
    const std::string n = alias(k);
    MT_CHECK(!by_name.count(n), source, ": tensor '", k, "' given twice (old and new name)");
    by_name[n] = &v;
  }
  std::set<std::string> used;
  auto fill = [&](const std::string& name, at::Tensor& dst) {
    auto it = by_name.find(name);
    MT_CHECK(it != by_name.end(), source, ": missing tensor '", name, "' (expected shape ",
             shape_str(dst.sizes().vec()), ")");
    const at::Tensor& src = *it->second;
    MT_CHECK(src.sizes() == dst.sizes(), source, ": tensor '", name, "': expected shape ", shape_str(dst.sizes().vec()),
             ", got ", shape_str(src.sizes().vec()));
    MT_CHECK(at::isFloatingType(src.scalar_type()), source, ": tensor '", name, "': expected a float dtype, got ",
             c10::toString(src.scalar_type()));
    dst.copy_(src);
    used.insert(name);
  };
  for (auto& kv : named_parameters()) fill(kv.key(), kv.value());
  for (auto& kv : named_buffers()) fill(kv.key(), kv.value());
  std::vector<std::string> extra;
  for (const auto& [n, t] : by_name)
    if (!used.count(n)) extra.push_back(n);
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", '" : "'") + extra[i] + "'";
    if (extra.size() > 5) list += str(" and ", extra.size() - 5, " more");
    fail(source, ": unexpected tensor", extra.size() > 1 ? "s " : " ", list, " (not part of this Mimi config)");
  }
  quantizer->refresh();
}

void MimiImpl::init_random(uint64_t seed) {
  at::NoGradGuard ng;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& kv : named_parameters()) {
    at::Tensor& p = kv.value();
    const std::string& n = kv.key();
    at::Tensor v;
    if (n.find("layer_scale") != std::string::npos)
      v = at::full(p.sizes(), cfg.transformer.layer_scale.value_or(1.0));
    else if (n.find("norm") != std::string::npos)
      v = n.size() > 5 && n.substr(n.size() - 4) == "bias" ? at::zeros(p.sizes()) : at::ones(p.sizes());
    else if (p.dim() == 1)
      v = at::zeros(p.sizes());
    else {
      const int64_t fan_in = p.numel() / p.size(0);
      v = at::empty(p.sizes()).normal_(0, 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(1, fan_in))), gen);
    }
    p.copy_(v);
  }
  for (auto& kv : named_buffers()) {
    const std::string& n = kv.key();
    at::Tensor& b = kv.value();
    if (n.find("embedding_sum") != std::string::npos)
      b.copy_(at::empty(b.sizes()).normal_(0, 1, gen));
    else
      b.fill_(1.0);
  }
  quantizer->refresh();
}

Mimi load_mimi(const std::string& weights_path, const std::string& config_path) {
  const std::string weights = io::hub::resolve(weights_path);  // Kyutai's hf:// and file:// forms too
  MimiConfig c = config_path.empty() ? MimiConfig::released() : MimiConfig::from_file(io::hub::resolve(config_path));
  Mimi m(c);
  m->load(io::load_all(weights), weights);
  m->eval();
  return m;
}

}  // namespace mt::mimi
