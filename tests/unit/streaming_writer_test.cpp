// io::StreamingWriter (a file written one tensor at a time, for checkpoints larger than memory) and the
// release layout it writes for `init` (lm/release_checkpoint.h): the streamed file is byte for byte
// what io::save writes and the normal reader gives back identical tensors; the 7B layout has exactly
// the names, shapes and count of Kyutai's released model.safetensors (spec moshi.md 1.9); a random
// release-layout checkpoint loads strictly through the fused-name path.
#include <gtest/gtest.h>

#include <filesystem>

#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "lm/lm_model.h"
#include "lm/release_checkpoint.h"
#include "test_util.h"

namespace fs = std::filesystem;
using mt::io::SafeTensors;
using mt::io::StreamingWriter;
using mt::io::TensorSpec;
using mt::test::expect_error;
using mt::test::TempDir;

namespace {
std::vector<TensorSpec> specs_of(const std::vector<std::pair<std::string, at::Tensor>>& t) {
  std::vector<TensorSpec> s;
  for (const auto& [n, v] : t) s.push_back({n, v.scalar_type(), v.sizes().vec()});
  return s;
}
size_t files_in(const fs::path& dir) { return static_cast<size_t>(std::distance(fs::directory_iterator(dir), {})); }
}  // namespace

TEST(StreamingWriter, SmallPresetIsByteIdenticalToSaveAndReadsBack) {
  TempDir d;
  mt::lm::LMModel m(mt::lm::LMConfig::small());
  m->init_weights(5);
  m->to(at::kBFloat16);
  const auto tensors = m->state_dict();
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  mt::io::save(d.file("saved.safetensors"), tensors, meta);
  size_t calls = 0;
  mt::io::save_streaming(
      d.file("streamed.safetensors"), specs_of(tensors),
      [&](const TensorSpec& s, size_t i) {
        EXPECT_EQ(s.name, tensors[i].first);
        return tensors[i].second;
      },
      meta, [&](size_t done, size_t total) { EXPECT_EQ(++calls, done) << total; });
  EXPECT_EQ(calls, tensors.size());
  EXPECT_TRUE(mt::test::slurp(d.file("saved.safetensors")) == mt::test::slurp(d.file("streamed.safetensors")));
  SafeTensors f(d.file("streamed.safetensors"));
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(at::equal(f.get(name), t)) << name;
  EXPECT_EQ(files_in(d.path), 2u) << "no temp file left behind";
}

TEST(StreamingWriter, WrongTensorsAndEarlyEndsLeaveNoFile) {
  TempDir d;
  const std::string path = d.file("w.safetensors");
  const std::vector<TensorSpec> specs = {{"a", at::kFloat, {2, 3}}, {"b", at::kBFloat16, {4}}};
  {
    StreamingWriter w(path, specs);
    expect_error([&] { w.write(at::ones({3, 2})); }, {path, "'a'", "[2, 3]", "[3, 2]"});
    w.write(at::ones({2, 3}));
    expect_error([&] { w.write(at::ones({4})); }, {path, "'b'", "BFloat16", "Float"});
    expect_error([&] { w.commit(); }, {path, "1 of 2", "'b'"});
  }  // abandoned: neither the file nor its temporary remains
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(files_in(d.path), 0u);
  expect_error(
      [&] {
        StreamingWriter w(path, {{"a", at::kFloat, {1}}, {"a", at::kFloat, {1}}});
      },
      {path, "duplicate", "'a'"});
  EXPECT_EQ(files_in(d.path), 0u);
  // Zero tensors and empty tensors are fine.
  {
    StreamingWriter w(path, {{"e", at::kFloat, {0, 3}}});
    w.write(at::empty({0, 3}));
    w.commit();
  }
  EXPECT_EQ(SafeTensors(path).info("e").shape, (std::vector<int64_t>{0, 3}));
}

TEST(ReleaseLayout, Moshiko7bHasKyutaisNamesShapesAndCount) {
  const auto specs = mt::lm::release_tensor_specs(mt::lm::LMConfig::moshiko_7b(), at::kBFloat16);
  std::map<std::string, std::vector<int64_t>> by_name;
  uint64_t bytes = 0;
  for (const auto& s : specs) {
    EXPECT_EQ(s.dtype, at::kBFloat16) << s.name;
    by_name[s.name] = s.shape;
    bytes += s.nbytes();
  }
  // spec moshi.md 1.9: 355 tensors, 7,687,729,152 parameters, 15,375,458,304 bytes in bf16.
  EXPECT_EQ(specs.size(), 355u);
  EXPECT_EQ(bytes, 15375458304ull);
  using S = std::vector<int64_t>;
  const std::map<std::string, S> expected = {
      {"emb.15.weight", S{2049, 4096}},
      {"text_emb.weight", S{32001, 4096}},
      {"transformer.layers.31.self_attn.in_proj_weight", S{12288, 4096}},
      {"transformer.layers.0.self_attn.out_proj.weight", S{4096, 4096}},
      {"transformer.layers.7.norm1.alpha", S{1, 1, 4096}},
      {"transformer.layers.7.norm2.alpha", S{1, 1, 4096}},
      {"transformer.layers.3.gating.linear_in.weight", S{22528, 4096}},
      {"transformer.layers.3.gating.linear_out.weight", S{4096, 11264}},
      {"out_norm.alpha", S{1, 1, 4096}},
      {"text_linear.weight", S{32000, 4096}},
      {"depformer_in.7.weight", S{1024, 4096}},
      {"depformer_text_emb.weight", S{32001, 1024}},
      {"depformer_emb.6.weight", S{2049, 1024}},
      {"depformer.layers.5.self_attn.in_proj_weight", S{24576, 1024}},
      {"depformer.layers.5.self_attn.out_proj.weight", S{8192, 1024}},
      {"depformer.layers.0.norm1.alpha", S{1, 1, 1024}},
      {"depformer.layers.2.gating.7.linear_in.weight", S{5632, 1024}},
      {"depformer.layers.2.gating.7.linear_out.weight", S{1024, 2816}},
      {"linears.7.weight", S{2048, 1024}},
  };
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_EQ(by_name[name], shape) << name;
  }
  for (const auto& s : specs) EXPECT_EQ(s.name.find("_projs."), std::string::npos) << "split name " << s.name;
  EXPECT_TRUE(std::is_sorted(specs.begin(), specs.end(),
                             [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; }));
}

TEST(ReleaseLayout, RandomCheckpointLoadsStrictlyInBf16AndIsSeeded) {
  TempDir d;
  mt::lm::LMConfig cfg = mt::lm::LMConfig::tiny();
  mt::lm::write_random_release(d.file("a.safetensors"), cfg, at::kBFloat16, 7);
  mt::lm::write_random_release(d.file("b.safetensors"), cfg, at::kBFloat16, 7);
  mt::lm::write_random_release(d.file("c.safetensors"), cfg, at::kBFloat16, 8);
  EXPECT_TRUE(mt::test::slurp(d.file("a.safetensors")) == mt::test::slurp(d.file("b.safetensors")));
  EXPECT_FALSE(mt::test::slurp(d.file("a.safetensors")) == mt::test::slurp(d.file("c.safetensors")));
  SafeTensors f(d.file("a.safetensors"));
  for (const auto& t : f.tensors()) EXPECT_EQ(t.dtype, "BF16") << t.name;
  EXPECT_TRUE(at::equal(f.get("out_norm.alpha"), at::ones({1, 1, cfg.dim}, at::kBFloat16)));
  // Trunc-normal 1/sqrt(fan_in), clipped at 3 sigma.
  const at::Tensor w = f.get("text_linear.weight").to(at::kFloat);
  EXPECT_LE(w.abs().max().item<double>(), 3.0 / std::sqrt(static_cast<double>(cfg.dim)) * 1.01);
  EXPECT_NEAR(w.std().item<double>(), 0.987 / std::sqrt(static_cast<double>(cfg.dim)), 0.1 / std::sqrt(cfg.dim));
  // Loaded (pages released as it goes) through the fused-name split: each step's slice of the file.
  mt::lm::LMModel m = mt::lm::load_lm(cfg, d.file("a.safetensors"), std::nullopt);
  EXPECT_EQ(m->text_linear->weight.scalar_type(), at::kBFloat16);
  const auto params = m->named_parameters();
  const at::Tensor fused = f.get("depformer.layers.0.self_attn.in_proj_weight");
  const int64_t rows = 3 * cfg.depformer_dim;
  for (int64_t i = 0; i < cfg.dep_q; ++i)
    EXPECT_TRUE(at::equal(params["depformer.layers.0.self_attn.in_projs." + std::to_string(i) + ".weight"],
                          fused.narrow(0, i * rows, rows)))
        << i;
  for (const auto& t : f.tensors())
    if (params.find(t.name)) EXPECT_TRUE(at::equal(params[t.name], f.get(t.name))) << t.name;
}
