// Kyutai's q8 checkpoints (util/gemv_q8.h, LMModelImpl with quantize: true): the int8 gemv equals the
// product with the dequantised weight on every tail, row count and thread split; quantisation follows
// the export's formula (zero rows, one large value); q8 models of the tiny and small presets give the
// logits of the float model built from the dequantised weights, whole-sequence and streaming (and their
// steps equal their forward); fused attention tensors load as split ones; mismatches name the tensor.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cstdio>
#include <map>

#include "io/safetensors.h"
#include "lm/lm_model.h"
#include "test_util.h"
#include "util/gemv_q8.h"

using namespace mt;
using namespace mt::lm;
using util::dequantize_q8;
using util::fast_gemv_q8;
using util::fast_gemv_q8_applies;
using util::quantize_q8;

namespace {
using StateDict = std::vector<std::pair<std::string, at::Tensor>>;

util::Q8Weight random_q8(int64_t out, int64_t in) { return quantize_q8(at::randn({out, in})); }

// |y - x Wᵀ| against float64 with W = CB · SCB / 127, relative to the row's sum of |w_i x_i| (as
// gemv_test.cpp): float32 accumulation in another order errs by ~in · 2^-24 of that sum at most.
double worst_relative_error(const at::Tensor& y, const util::Q8Weight& q, const at::Tensor& x) {
  at::Tensor w64 = dequantize_q8(q.cb, q.scb, at::kDouble), x64 = x.reshape({-1, q.cb.size(1)}).to(at::kDouble);
  at::Tensor exact = at::mm(x64, w64.t()), scale = at::mm(x64.abs(), w64.abs().t()).clamp_min(1e-30);
  return ((y.reshape({-1, q.cb.size(0)}).to(at::kDouble) - exact).abs() / scale).max().item<double>();
}

bool kernel_available() { return fast_gemv_q8_applies(at::ones({1, 8}), at::ones({4, 8}, at::kChar), at::ones({4})); }

// A float model with random weights, its q8 tensors, and the float model of the dequantised weights.
struct Trio {
  LMConfig cfg;
  StateDict q8;
  LMModel q{nullptr}, deq{nullptr};
};

StateDict dequantized(const StateDict& q8) {
  std::map<std::string, at::Tensor> scb;
  for (const auto& [n, t] : q8)
    if (t.scalar_type() == at::kFloat && n.size() > 4 && n.compare(n.size() - 4, 4, "_scb") == 0) scb[n] = t;
  StateDict out;
  for (const auto& [n, t] : q8)
    if (t.scalar_type() == at::kChar)
      out.emplace_back(n, dequantize_q8(t, scb.at(n + "_scb")));
    else if (!scb.count(n))
      out.emplace_back(n, t);
  return out;
}

// With `d`, through files (model.q8.safetensors, deq.safetensors) and load_lm; else in memory.
Trio make_trio(LMConfig c, const test::TempDir* d) {
  Trio r;
  c.quantize = false;
  LMModel f(c);
  f->init_weights(3);
  r.q8 = quantized_state_dict(*f);
  r.cfg = c;
  r.cfg.quantize = true;
  if (d) {
    io::save(d->file("model.q8.safetensors"), r.q8);
    io::save(d->file("deq.safetensors"), dequantized(r.q8));
    r.deq = load_lm(c, d->file("deq.safetensors"));
    r.q = load_lm(r.cfg, d->file("model.q8.safetensors"));
    return r;
  }
  auto load = [](const LMConfig& cfg, const StateDict& sd) {
    LMModel m(cfg);
    m->load(std::map<std::string, at::Tensor>(sd.begin(), sd.end()), "memory");
    for (auto& p : m->parameters()) p.set_requires_grad(false);
    return m;
  };
  r.deq = load(c, dequantized(r.q8));
  r.q = load(r.cfg, r.q8);
  return r;
}

at::Tensor random_codes(const LMConfig& c, int64_t T, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  at::Tensor codes = at::randint(c.card, {1, c.num_codebooks(), T}, g, at::kLong);
  codes.select(1, 0).random_(0, c.text_card, g);
  return codes;
}

// Streaming outputs of one model: temporal steps of one token, then the depformer codebook by codebook
// with the teacher tokens; returns (transformer_out, text_logits, depformer logits [B, dep_q, T, card]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> streamed(const LMModel& m, const at::Tensor& seq) {
  TransformerState st = m->make_state(1);
  std::vector<at::Tensor> outs, tls, logits;
  for (int64_t t = 0; t < seq.size(2); ++t) {
    auto [o, tl] = m->forward_text(seq.narrow(2, t, 1), &st);
    outs.push_back(o);
    tls.push_back(tl);
  }
  at::Tensor tout = at::cat(outs, 1);
  TransformerState ds = m->make_depformer_state(1);
  for (int64_t cb = 0; cb < m->cfg.dep_q; ++cb) logits.push_back(at::Tensor());
  std::vector<std::vector<at::Tensor>> per_cb(m->cfg.dep_q);
  for (int64_t t = 0; t < seq.size(2); ++t) {
    ds.reset();
    for (int64_t cb = 0; cb < m->cfg.dep_q; ++cb) {
      at::Tensor prev = cb == 0 ? seq.select(1, 0).select(1, t) : seq.select(1, cb).select(1, t);
      per_cb[cb].push_back(m->depformer_step(cb, prev, tout.narrow(1, t, 1), ds));
    }
  }
  for (int64_t cb = 0; cb < m->cfg.dep_q; ++cb) logits[cb] = at::stack(per_cb[cb], 1);  // [B, T, card]
  return {tout, at::cat(tls, 2), at::stack(logits, 1)};
}

std::string load_error(const LMConfig& c, const std::string& path) {
  try {
    load_lm(c, path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Q8Gemv, EqualsDequantisedProductOnEveryTailAndRowCount) {
  if (!kernel_available()) GTEST_SKIP() << "this CPU lacks AVX2/FMA: _weight_int8pack_mm is used";
  at::manual_seed(0);
  for (bool avx512 : {true, false}) {  // the AVX-512 kernel where the CPU has one, and the AVX2 one
    const bool before = util::allow_avx512_q8(avx512);
    for (int64_t rows : {1, 2, 3, 4})
      for (int64_t in : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 100, 512, 1037})
        for (int64_t out : {1, 3, 17, 300}) {
          const util::Q8Weight q = random_q8(out, in);
          at::Tensor x = at::randn({rows, 1, in});
          ASSERT_TRUE(fast_gemv_q8_applies(x, q.cb, q.scb));
          at::Tensor y = fast_gemv_q8(x, q.cb, q.scb);
          ASSERT_EQ(y.sizes(), (at::IntArrayRef{rows, 1, out}));
          EXPECT_LT(worst_relative_error(y, q, x), 1e-5) << avx512 << ": " << rows << " rows, " << out << " x " << in;
        }
    util::allow_avx512_q8(before);
  }
}

TEST(Q8Gemv, LongerInputsAndOtherDtypesUseTheLibtorchPaths) {
  at::manual_seed(1);
  // Widths that are multiples of 64 take at::_weight_int8pack_mm, others the dequantised matmul;
  // N with tails (37) and the kernel's row blocks (5, 16 rows) on both.
  for (int64_t in : {70, 128, 192}) {
    const util::Q8Weight q = random_q8(37, in);
    for (int64_t rows : {5, 16}) {  // past kMaxGemvRows
      at::Tensor x = at::randn({rows, in});
      EXPECT_FALSE(fast_gemv_q8_applies(x, q.cb, q.scb));
      EXPECT_LT(worst_relative_error(util::linear_q8(x, q.cb, q.scb), q, x), 1e-5) << rows << " x " << in;
    }
    for (auto dt : {at::kBFloat16, at::kHalf}) {
      at::Tensor x = at::randn({2, 3, in}).to(dt);
      at::Tensor y = util::linear_q8(x, q.cb, q.scb);
      EXPECT_EQ(y.scalar_type(), dt);
      EXPECT_LT(worst_relative_error(y.to(at::kFloat), q, x.to(at::kFloat)), 2e-2) << in;
    }
  }
  // Gradients through x: the dequantised weight's matmul (the op has no derivative).
  const util::Q8Weight q = random_q8(37, 128);
  at::Tensor xg = at::randn({6, 128}).requires_grad_(true);
  util::linear_q8(xg, q.cb, q.scb).sum().backward();
  EXPECT_TRUE(at::allclose(xg.grad(), dequantize_q8(q.cb, q.scb).sum(0).expand({6, 128}), 1e-5, 1e-5));
}

TEST(Q8Gemv, ThreadSplitsAgree) {
  if (!kernel_available()) GTEST_SKIP() << "this CPU lacks AVX2/FMA";
  const util::Q8Weight q = random_q8(4099, 1000);
  for (int64_t rows : {1, 2, 4}) {
    at::Tensor x = at::randn({rows, 1000});
    const int threads = at::get_num_threads();
    at::set_num_threads(1);
    at::Tensor one = fast_gemv_q8(x, q.cb, q.scb);
    at::set_num_threads(std::max(2, threads));
    at::Tensor many = fast_gemv_q8(x, q.cb, q.scb);
    at::set_num_threads(threads);
    EXPECT_TRUE(at::equal(one, many)) << rows;  // each output is summed by one thread in a fixed order
  }
}

TEST(Q8Gemv, TakenOnlyWhereValid) {
  const util::Q8Weight q = random_q8(6, 8);
  const bool ok = kernel_available();
  EXPECT_EQ(fast_gemv_q8_applies(at::randn({2, 2, 8}), q.cb, q.scb), ok);
  EXPECT_FALSE(fast_gemv_q8_applies(at::randn({5, 8}), q.cb, q.scb));                       // too many rows
  EXPECT_FALSE(fast_gemv_q8_applies(at::randn({8, 2}).t(), q.cb, q.scb));                   // not contiguous
  EXPECT_FALSE(fast_gemv_q8_applies(at::randn({1, 8}, at::kBFloat16), q.cb, q.scb));        // not float32
  EXPECT_FALSE(fast_gemv_q8_applies(at::randn({1, 8}), q.cb, q.scb.to(at::kBFloat16)));     // scales not float32
  EXPECT_FALSE(fast_gemv_q8_applies(at::randn({1, 7}), q.cb, q.scb));                       // wrong width
  EXPECT_FALSE(fast_gemv_q8_applies(at::randn({1, 8}).requires_grad_(true), q.cb, q.scb));  // autograd
}

TEST(Q8Quantize, FollowsTheExportFormula) {
  // Row 0: plain; row 1: all zeros (scale 0, codes 0, no NaN); row 2: one large value rounds the
  // small ones to 0; row 3: values that are not fp16 (the export quantises an fp16 copy).
  at::Tensor w =
      at::tensor({1.f, -2.f, 0.5f, 4.f, 0.f, 0.f, 0.f, 0.f, 1000.f, 1.f, -3.f, 0.001f, 0.1f, -0.05f, 0.0333f, 0.07f})
          .view({4, 4});
  const util::Q8Weight q = quantize_q8(w);
  ASSERT_EQ(q.cb.scalar_type(), at::kChar);
  ASSERT_EQ(q.scb.scalar_type(), at::kFloat);
  const float s3 = static_cast<float>(c10::Half(0.1f));
  EXPECT_TRUE(at::equal(q.scb, at::tensor({4.f, 0.f, 1000.f, s3})));
  // round(w · 127 / SCB), half to even: 31.75 -> 32, -63.5 -> -64, 15.875 -> 16; 1.0 · 0.127 -> 0, -0.381 -> 0.
  at::Tensor expect_cb = at::tensor({32, -64, 16, 127, 0, 0, 0, 0, 127, 0, 0, 0, 127, 0, 0, 0}, at::kChar).view({4, 4});
  at::Tensor w16 = w.to(at::kHalf).to(at::kFloat);
  expect_cb[3] = at::round(w16[3] * (127.0 / s3)).to(at::kChar);  // [127, -64 (63.5 rounded), 42, 89]
  EXPECT_TRUE(at::equal(q.cb, expect_cb)) << q.cb;
  EXPECT_EQ(q.cb[3][1].item<int>(), -64);
  // Dequantised: within half a code (SCB / 254) of the fp16 weight, per row.
  at::Tensor err = (dequantize_q8(q.cb, q.scb) - w16).abs().amax(1);
  EXPECT_TRUE((err <= q.scb / 254 + 1e-6).all().item<bool>()) << err;
  EXPECT_TRUE(dequantize_q8(q.cb, q.scb)[1].eq(0).all().item<bool>());
}

// Logits of the q8 model vs the float model of the dequantised weights: the same products in float32
// (int8 codes times the row scale), summed in another order, so they agree to float32 rounding of the
// dot products (~1e-6 relative) grown through the layers; 1e-4 absolute on logits of magnitude ~1-10
// leaves room for that and fails on any real mistake (a wrong scale, a transposed or missing row
// changes logits by >1e-2).
class Q8Model : public ::testing::TestWithParam<std::string> {};

TEST_P(Q8Model, LogitsMatchTheDequantisedFloatModel) {
  test::TempDir d;
  const bool small = GetParam() == "small";
  // The small preset in memory (its files would be 300 MB); the tiny one through files and load_lm.
  Trio r = make_trio(small ? LMConfig::small() : LMConfig::tiny(), small ? nullptr : &d);
  // The q8 model's linears hold int8 codes and float32 scales; nothing else is int8.
  int64_t q8 = 0;
  for (const auto& [name, p] : r.q->state_dict()) q8 += p.scalar_type() == at::kChar;
  EXPECT_EQ(q8, static_cast<int64_t>(r.q->q8_linears().size()));
  EXPECT_GT(q8, 0);
  at::InferenceMode im;
  at::Tensor codes = random_codes(r.cfg, small ? 4 : 10, 5);
  const double tol = 1e-4;
  LMOutput a = r.q->forward(codes), b = r.deq->forward(codes);
  const double text = test::max_abs_diff(a.text_logits, b.text_logits);
  const double audio = test::max_abs_diff(a.logits.masked_fill(~a.mask.unsqueeze(-1), 0),
                                          b.logits.masked_fill(~b.mask.unsqueeze(-1), 0));
  EXPECT_LT(text, tol);
  EXPECT_LT(audio, tol);
  // Streaming (the int8 gemv): equal to the q8 model's own forward, and to the dequantised model's steps.
  at::Tensor seq = r.q->delayed_input(codes).narrow(2, 0, codes.size(2));
  auto [tout, tl] = r.q->forward_text(seq);
  at::Tensor dep = r.q->forward_depformer_training(seq, tout);
  auto [sq_out, sq_tl, sq_dep] = streamed(r.q, seq);
  EXPECT_LT(test::max_abs_diff(sq_out, tout), 5e-5);
  EXPECT_LT(test::max_abs_diff(sq_tl, tl), tol);
  EXPECT_LT(test::max_abs_diff(sq_dep, dep), tol);
  auto [sd_out, sd_tl, sd_dep] = streamed(r.deq, seq);
  EXPECT_LT(test::max_abs_diff(sq_tl, sd_tl), tol);
  EXPECT_LT(test::max_abs_diff(sq_dep, sd_dep), tol);
  std::printf(
      "%s: q8 vs dequantised float, max |logit diff|: forward text %.2e audio %.2e; streaming text %.2e "
      "audio %.2e; q8 steps vs q8 forward: text %.2e audio %.2e (logits up to %.1f)\n",
      GetParam().c_str(), text, audio, test::max_abs_diff(sq_tl, sd_tl), test::max_abs_diff(sq_dep, sd_dep),
      test::max_abs_diff(sq_tl, tl), test::max_abs_diff(sq_dep, dep), tl.abs().max().item<double>());
}

INSTANTIATE_TEST_SUITE_P(Presets, Q8Model, ::testing::Values("tiny", "small"));

TEST(Q8Load, FusedAttentionTensorsLoadAsSplitOnes) {
  test::TempDir d;
  Trio r = make_trio(LMConfig::tiny(), &d);
  // Kyutai's fused names: in_proj_weight (+ in_proj_weight_scb), out_proj.weight (+ out_proj.weight_scb).
  std::map<std::string, std::vector<at::Tensor>> fused;
  StateDict out;
  for (const auto& [n, t] : r.q8) {
    const auto p = n.find("self_attn.in_projs."), q = n.find("self_attn.out_projs.");
    const std::string suffix = n.compare(n.size() - 4, 4, "_scb") == 0 ? "_scb" : "";
    if (p != std::string::npos)
      fused[n.substr(0, p) + "self_attn.in_proj_weight" + suffix].push_back(t);
    else if (q != std::string::npos)
      fused[n.substr(0, q) + "self_attn.out_proj.weight" + suffix].push_back(t);
    else
      out.emplace_back(n, t);
  }
  ASSERT_TRUE(fused.count("depformer.layers.0.self_attn.in_proj_weight_scb"));
  for (auto& [n, ts] : fused) out.emplace_back(n, at::cat(ts, 0));
  io::save(d.file("fused.safetensors"), out);
  LMModel f = load_lm(r.cfg, d.file("fused.safetensors"));
  auto a = r.q->state_dict(), b = f->state_dict();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
}

TEST(Q8Load, MismatchesNameTheTensorAndTheSetting) {
  test::TempDir d;
  Trio r = make_trio(LMConfig::tiny(), &d);
  const std::string name = "transformer.layers.0.gating.linear_in.weight";
  auto edited = [&](const std::string& file, auto&& edit) {
    StateDict sd = r.q8;
    for (auto& [n, t] : sd) edit(n, t);
    io::save(d.file(file), sd);
    return d.file(file);
  };
  // Scales not float32.
  std::string e = load_error(r.cfg, edited("bf16scb.safetensors", [&](const std::string& n, at::Tensor& t) {
                               if (n == name + "_scb") t = t.to(at::kBFloat16);
                             }));
  EXPECT_NE(e.find("'" + name + "_scb'"), std::string::npos) << e;
  EXPECT_NE(e.find("float32"), std::string::npos) << e;
  EXPECT_NE(e.find("BFloat16"), std::string::npos) << e;
  // Scales of the wrong length.
  e = load_error(r.cfg, edited("shape.safetensors", [&](const std::string& n, at::Tensor& t) {
                   if (n == name + "_scb") t = at::cat({t, t.narrow(0, 0, 1)});
                 }));
  EXPECT_NE(e.find("'" + name + "_scb'"), std::string::npos) << e;
  EXPECT_NE(
      e.find("expected shape [" + std::to_string(r.q->transformer->layer_ptrs[0]->gating->linear_in->out_features())),
      std::string::npos)
      << e;
  // A q8 file read with quantize false: the int8 tensor is named with the setting it needs.
  LMConfig float_cfg = r.cfg;
  float_cfg.quantize = false;
  e = load_error(float_cfg, d.file("model.q8.safetensors"));
  EXPECT_NE(e.find("int8"), std::string::npos) << e;
  EXPECT_NE(e.find("\"quantize\": true"), std::string::npos) << e;
  EXPECT_NE(e.find("' ["), std::string::npos) << e;  // with its shape
  // A float file read with quantize true.
  e = load_error(r.cfg, d.file("deq.safetensors"));
  EXPECT_NE(e.find("quantize: true"), std::string::npos) << e;
  EXPECT_NE(e.find("Float"), std::string::npos) << e;
}

TEST(Q8Load, RunsInBf16AndKeepsTheFormatDtypes) {
  test::TempDir d;
  Trio r = make_trio(LMConfig::tiny(), &d);
  LMModel m = load_lm(r.cfg, d.file("model.q8.safetensors"), at::kBFloat16);
  for (const auto& [name, p] : m->state_dict()) {
    const bool scb = name.size() > 4 && name.compare(name.size() - 4, 4, "_scb") == 0;
    const bool q8 = p.scalar_type() == at::kChar;
    EXPECT_TRUE(q8 || (scb ? p.scalar_type() == at::kFloat : p.scalar_type() == at::kBFloat16)) << name;
  }
  at::InferenceMode im;
  at::Tensor codes = random_codes(r.cfg, 8, 2);
  LMOutput a = m->forward(codes), b = r.deq->forward(codes);
  EXPECT_EQ(a.text_logits.scalar_type(), at::kBFloat16);
  EXPECT_LT(test::max_abs_diff(a.text_logits, b.text_logits), 0.3);  // bf16 activations
}

TEST(Q8Model, LoraOverAQ8BaseStartsAtTheBase) {
  test::TempDir d;
  Trio r = make_trio(LMConfig::tiny(), &d);
  LoRAConfig lora;
  lora.enable = true;
  lora.rank = 4;
  lora.scaling = 2.0;
  int64_t initialised = 0;
  LMModel m = load_lm(r.cfg, d.file("model.q8.safetensors"), at::kFloat, {}, &initialised, lora);
  EXPECT_GT(initialised, 0);
  for (const auto& [name, p] : m->state_dict())
    if (is_lora_param(name)) EXPECT_EQ(p.scalar_type(), at::kFloat) << name;
  at::InferenceMode im;
  at::Tensor codes = random_codes(r.cfg, 6, 4);
  EXPECT_LT(test::max_abs_diff(m->forward(codes).text_logits, r.q->forward(codes).text_logits), 1e-6);
}

TEST(Q8Model, RandomQ8ModelsAndConfigRoundTrip) {
  LMConfig c = LMConfig::tiny();
  c.quantize = true;
  LMModel m(c);
  m->init_weights(0);
  for (const auto& [name, lin] : m->q8_linears()) EXPECT_TRUE((lin->weight_scb > 0).all().item<bool>()) << name;
  EXPECT_TRUE(LMConfig::from_json(c.to_json()).quantize);
  EXPECT_FALSE(LMConfig::tiny().to_json().contains("quantize"));
}

// `moshi-ttt quantize` writes one linear at a time (a 7B's q8 beside its bf16 model in 24 GB): the
// file holds exactly the bytes of the in-memory quantisation written whole.
TEST(Q8Quantize, StreamedFileEqualsTheWholeOne) {
  test::TempDir d;
  LMModel m(LMConfig::tiny(), TTTIntegrationConfig{}, LoRAConfig{});
  m->init_weights(3);
  m->to(at::kBFloat16);
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  const Q8FileStats st = save_quantized(*m, d.file("streamed.safetensors"), meta);
  io::save(d.file("whole.safetensors"), quantized_state_dict(*m), meta);
  EXPECT_EQ(test::slurp(d.file("streamed.safetensors")), test::slurp(d.file("whole.safetensors")));
  EXPECT_GT(st.linears, 0);
  io::SafeTensors f(d.file("streamed.safetensors"));
  int64_t codes = 0;
  for (const auto& t : f.tensors())
    if (t.dtype == "I8") codes += t.numel();
  EXPECT_EQ(codes, st.code_bytes);
}
