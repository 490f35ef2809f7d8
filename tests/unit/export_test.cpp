// lm/export: the merge is W + s·B@A; a LoRA export holds adapters for exactly the linears Kyutai's
// LoRA loader wraps (zeros where ours had none); TTT tensors are refused by name; what is exported loads
// back into our loader with the exporting model's logits.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "lm/export.h"
#include "lm/lm_model.h"
#include "lm_test_util.h"
#include "test_util.h"

using namespace mt::lm;
using mt::test::TempDir;
namespace fs = std::filesystem;

namespace {

LoRAConfig lora_yaml(const std::string& y) { return LoRAConfig::from_yaml(YAML::Load("enable: true\n" + y)); }

// A tiny model with seeded weights and non-zero LoRA B (training's zeros would make any merge a no-op).
LMModel lora_model(const LoRAConfig& lora, const TTTIntegrationConfig& ttt = {}) {
  LMModel m(mt::test::tiny_lm(), ttt, lora);
  m->init_weights(5);
  at::NoGradGuard ng;
  at::Generator g = at::detail::createCPUGenerator(9);
  for (auto& kv : m->named_parameters())
    if (kv.key().find(".lora_B.") != std::string::npos) kv.value().copy_(at::randn(kv.value().sizes(), g) * 0.05);
  for (auto& p : m->parameters()) p.set_requires_grad(false);
  m->eval();
  return m;
}

// Kyutai's LMModel for the tiny preset, written out by hand from moshi/models/lm.py and
// moshi/modules/transformer.py: per temporal layer one in/out projection and a gated FFN; the
// depformer has weights per step (dep_q of each, and one gating per step); one depformer_in and one
// head per audio codebook; the text head.
std::set<std::string> tiny_kyutai_linears(const LMConfig& c) {
  std::set<std::string> s = {"text_linear"};
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (const char* n : {"self_attn.in_projs.0", "self_attn.out_projs.0", "gating.linear_in", "gating.linear_out"})
      s.insert("transformer.layers." + std::to_string(l) + "." + n);
  for (int64_t i = 0; i < c.dep_q; ++i) {
    const std::string k = std::to_string(i);
    for (const std::string n : {"self_attn.in_projs." + k, "self_attn.out_projs." + k, "gating." + k + ".linear_in",
                                "gating." + k + ".linear_out"})
      s.insert("depformer.layers.0." + n);
    s.insert("depformer_in." + k);
    s.insert("linears." + k);
  }
  return s;
}

at::Tensor all_logits(const LMModelImpl& m, const at::Tensor& codes) {
  LMOutput o = m.forward(codes);
  return at::cat({o.text_logits.flatten(), o.logits.nan_to_num(0).flatten()});
}

}  // namespace

TEST(Export, MergeIsWPlusScaledBA) {
  at::Generator g = at::detail::createCPUGenerator(1);
  const at::Tensor w = at::randn({6, 5}, g), a = at::randn({3, 5}, g), b = at::randn({6, 3}, g);
  const at::Tensor want = w.to(at::kDouble) + 1.5 * at::mm(b.to(at::kDouble), a.to(at::kDouble));
  EXPECT_LT(mt::test::max_abs_diff(merge_lora(w, a, b, 1.5), want), 1e-5);
  // bf16 inputs are merged in float32 (the sum is rounded once, by the caller's cast).
  const at::Tensor m16 = merge_lora(w.to(at::kBFloat16), a.to(at::kBFloat16), b.to(at::kBFloat16), 1.5);
  EXPECT_EQ(m16.scalar_type(), at::kFloat);
  mt::test::expect_error([&] { merge_lora(w, b, a, 1.0); }, {"merge_lora", "[6, 3]", "[3, 5]"});
}

TEST(Export, LoRAFileCoversExactlyKyutaisLinears) {
  LMModel m = lora_model(lora_yaml("rank: 2\nscaling: 2.0\ntargets: [transformer.layers.1.self_attn]"),
                         mt::test::ttt_yaml("variant: hybrid\nmini_batch_size: 4"));
  const std::set<std::string> want = tiny_kyutai_linears(m->cfg);
  const auto linears = kyutai_linears(*m);
  EXPECT_EQ(std::set<std::string>(linears.begin(), linears.end()), want);
  auto params = m->named_parameters();
  std::set<std::string> got;
  int64_t adapted = 0;
  for (const auto& [name, t] : lora_tensors(*m, at::kFloat)) {
    got.insert(name);
    EXPECT_EQ(t.dim(), 2);
    EXPECT_TRUE(name.find(".lora_A.weight") != std::string::npos ? t.size(0) == 2 : t.size(1) == 2) << name;
    if (const at::Tensor* p = params.find(name)) {  // ours: the trained adapter, as is
      ++adapted;
      EXPECT_TRUE(at::equal(*p, t)) << name;
    } else {  // completion: B = 0, so the adapter adds nothing
      EXPECT_EQ(t.abs().max().item<float>(), 0.f) << name;
    }
  }
  EXPECT_EQ(adapted, 4);  // in_projs.0 and out_projs.0 of layer 1, A and B each
  std::set<std::string> want_keys;
  for (const auto& l : want) want_keys.insert({l + ".lora_A.weight", l + ".lora_B.weight"});
  EXPECT_EQ(got, want_keys);
}

TEST(Export, TTTTensorsAreRefusedByName) {
  LMModel m = lora_model(lora_yaml("rank: 2"), mt::test::ttt_yaml("variant: hybrid\nmini_batch_size: 4"));
  const auto names = ttt_tensor_names(*m);
  ASSERT_GT(names.size(), 5u);
  TempDir d;
  ExportOptions o;
  o.format = ExportFormat::kMerged;
  mt::test::expect_error([&] { write_export(*m, o, d.file("out")); },
                         {names[0], names[4], std::to_string(names.size()) + " TTT tensor(s)",
                          "Kyutai's moshi has no TTT layers", "--drop-ttt"});
  EXPECT_EQ(ttt_refusal(names).find(names[5]), std::string::npos);  // five named, then "..."
  EXPECT_FALSE(fs::exists(d.file("out")));
  // With --drop-ttt: written, without them, and the note says what changed.
  o.drop_ttt = true;
  const ExportResult r = write_export(*m, o, d.file("out"));
  EXPECT_NE(r.note.find("hybrid TTT blocks removed from layer(s) 1"), std::string::npos) << r.note;
  EXPECT_NE(r.note.find("outputs differ"), std::string::npos) << r.note;
  const mt::io::SafeTensors written(d.file("out/consolidated.safetensors"));
  for (const auto& t : written.tensors()) {
    EXPECT_FALSE(is_ttt_param(t.name)) << t.name;
    EXPECT_FALSE(is_lora_param(t.name)) << t.name;
    EXPECT_EQ(t.dtype, "BF16");
  }
  EXPECT_NE(drop_ttt_note(mt::test::ttt_yaml("variant: inplace"), 2).find("base down-projection"), std::string::npos);
  EXPECT_NE(drop_ttt_note(mt::test::ttt_yaml("variant: adapter"), 2).find("TTT adapters removed"), std::string::npos);
}

TEST(Export, RefusesLoRAFormatWithoutLoRAAndAnOccupiedFolder) {
  LMModel m(mt::test::tiny_lm());
  m->init_weights(1);
  TempDir d;
  ExportOptions o;
  o.format = ExportFormat::kLora;
  mt::test::expect_error([&] { write_export(*m, o, d.file("out")); }, {"no LoRA", "--format merged"});
  fs::create_directories(d.file("full"));
  mt::io::atomic_write(d.file("full/keep"), "x");
  o.format = ExportFormat::kMerged;
  mt::test::expect_error([&] { write_export(*m, o, d.file("full")); }, {"full", "not empty", "--force"});
  EXPECT_TRUE(fs::exists(d.file("full/keep")));
}

// Both exports, read back by our own loader (plain for merged, base + every-linear LoRA for lora), give
// the exporting model's logits.
TEST(Export, ExportsLoadBackWithTheLoRAModelsLogits) {
  LMModel m = lora_model(lora_yaml("rank: 3\nscaling: 1.5\ntargets: [self_attn, text_linear]"));
  const at::Tensor codes = mt::test::random_codes(m->cfg, 1, 12, 4);
  at::InferenceMode im;
  const at::Tensor want = all_logits(*m, codes);
  TempDir d;
  ExportOptions o;
  o.dtype = at::kFloat;
  o.format = ExportFormat::kMerged;
  write_export(*m, o, d.file("merged"));
  const auto cj = nlohmann::json::parse(mt::test::slurp(d.file("merged/config.json")));
  EXPECT_FALSE(cj.at("lora").get<bool>());
  LMModel merged =
      load_lm(LMConfig::from_file(d.file("merged/config.json")), d.file("merged/consolidated.safetensors"));
  const double scale = want.abs().max().item<double>();
  EXPECT_LT(mt::test::max_abs_diff(all_logits(*merged, codes), want), 1e-5 * scale);

  o.format = ExportFormat::kLora;
  const ExportResult r = write_export(*m, o, d.file("lora"));
  EXPECT_EQ(r.base_weights, (fs::absolute(d.file("lora")) / "model.safetensors").string());  // no base file given
  const auto lj = nlohmann::json::parse(mt::test::slurp(d.file("lora/config.json")));
  EXPECT_TRUE(lj.at("lora").get<bool>());
  EXPECT_EQ(lj.at("lora_rank").get<int64_t>(), 3);
  EXPECT_EQ(lj.at("lora_scaling").get<double>(), 1.5);
  // As Kyutai loads it: every linear adapted, rank and scaling from config.json.
  LMModel back = load_lm(LMConfig::from_file(d.file("lora/config.json")), r.base_weights, at::kFloat, {}, nullptr,
                         lora_yaml("rank: 3\nscaling: 1.5"), d.file("lora/lora.safetensors"));
  EXPECT_LT(mt::test::max_abs_diff(all_logits(*back, codes), want), 1e-5 * scale);
}
