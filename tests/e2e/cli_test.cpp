// End-to-end: the CLI as users run it, on tiny models. Bad input gives one clear line and a
// non-zero exit, never a crash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"
#include "train/synthetic.h"

using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

namespace {
// The error path: exit 1, and the message is a single "moshi-ttt: error: ..." line (no backtrace).
void expect_clean_error(const std::string& args, const std::string& needle) {
  std::string out;
  int rc = run(cli() + " " + args, &out);
  EXPECT_EQ(rc, 1) << args << "\n" << out;
  EXPECT_NE(out.find("moshi-ttt: error: "), std::string::npos) << out;
  EXPECT_NE(out.find(needle), std::string::npos) << "wanted '" << needle << "' in:\n" << out;
  EXPECT_EQ(out.find("frame #"), std::string::npos) << "backtrace leaked:\n" << out;
  size_t err_line = out.find("moshi-ttt: error: ");
  if (err_line != std::string::npos) EXPECT_EQ(out.find('\n', err_line), out.size() - 1) << out;
}
}  // namespace

TEST(Cli, VersionNamesLibtorchBlasAndThreads) {
  std::string out;
  ASSERT_EQ(run(cli() + " --version", &out), 0) << out;
  EXPECT_NE(out.find("libtorch"), std::string::npos);
  EXPECT_NE(out.find("threads"), std::string::npos);
  EXPECT_NE(out.find("BLAS"), std::string::npos);
}

TEST(Cli, UnknownSubcommandOrOptionFails) {
  std::string out;
  EXPECT_NE(run(cli() + " frobnicate", &out), 0);
  EXPECT_NE(run(cli() + " generate --stepz 3", &out), 0);
}

TEST(Cli, InitThenGenerateWritesTokens) {
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --preset tiny --seed 3", &out), 0) << out;
  EXPECT_TRUE(std::filesystem::exists(d.file("m/config.json")));
  ASSERT_EQ(run(cli() + " generate --model " + d.file("m") + " --steps 12 --batch 2 --greedy --threads 1 --out " +
                    d.file("tok.safetensors") + " --run-dir " + d.file("run"),
                &out),
            0)
      << out;
  mt::io::SafeTensors f(d.file("tok.safetensors"));
  EXPECT_EQ(f.info("tokens").shape, (std::vector<int64_t>{2, 3, 11}));  // tiny: dep_q 2, max delay 1
  EXPECT_TRUE(std::filesystem::exists(d.file("run/metrics.jsonl")));
  EXPECT_TRUE(std::filesystem::exists(d.file("run/summary.json")));
  // Greedy generation is deterministic.
  ASSERT_EQ(run(cli() + " generate --model " + d.file("m") + " --steps 12 --batch 2 --greedy --threads 1 -q --out " +
                    d.file("tok2.safetensors"),
                &out),
            0);
  EXPECT_TRUE(at::equal(f.get("tokens"), mt::io::SafeTensors(d.file("tok2.safetensors")).get("tokens")));
  // init refuses to overwrite without --force.
  expect_clean_error("init " + d.file("m"), "--force");
}

// init --dtype bfloat16 writes Kyutai's dtype; --stream (what a 7B gets) writes Kyutai's release layout
// (fused attention names) one tensor at a time, which generate loads and streams in bf16.
TEST(Cli, InitBf16AndStreamedReleaseLayoutGenerate) {
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --preset tiny --dtype bfloat16", &out), 0) << out;
  {
    mt::io::SafeTensors f(d.file("m/model.safetensors"));
    for (const auto& t : f.tensors()) EXPECT_EQ(t.dtype, "BF16") << t.name;
    EXPECT_TRUE(f.contains("transformer.layers.0.self_attn.in_projs.0.weight"));  // our split names, as before
  }
  ASSERT_EQ(run(cli() + " init " + d.file("r") + " --preset tiny --dtype bfloat16 --stream --seed 2", &out), 0) << out;
  EXPECT_NE(out.find("peak RSS"), std::string::npos) << out;
  {
    mt::io::SafeTensors f(d.file("r/model.safetensors"));
    for (const auto& t : f.tensors()) EXPECT_EQ(t.dtype, "BF16") << t.name;
    EXPECT_TRUE(f.contains("transformer.layers.0.self_attn.in_proj_weight"));
    EXPECT_TRUE(f.contains("depformer.layers.0.self_attn.out_proj.weight"));
    EXPECT_FALSE(f.contains("transformer.layers.0.self_attn.in_projs.0.weight"));
  }
  EXPECT_TRUE(std::filesystem::exists(d.file("r/config.json")));
  ASSERT_EQ(run(cli() + " generate --model " + d.file("r") + " --dtype bfloat16 --steps 4 --greedy --threads 1", &out),
            0)
      << out;
  EXPECT_NE(out.find("peak RSS"), std::string::npos) << out;
  expect_clean_error("init " + d.file("r") + " --stream", "--force");
  expect_clean_error("init " + d.file("x") + " --dtype int3", "unknown --dtype");
}

TEST(Cli, InspectShowsTensorsAndConfig) {
  std::string out;
  ASSERT_EQ(run(cli() + " inspect " + mt::test::reference_dir() + "/lm/lm_small_stream", &out), 0) << out;
  EXPECT_NE(out.find("transformer.layers.0.gating.linear_in.weight"), std::string::npos) << out;
  EXPECT_NE(out.find("parameters:"), std::string::npos);
  EXPECT_NE(out.find("loads strictly as this config: yes"), std::string::npos) << out;
}

TEST(Cli, BadInputGivesOneClearLine) {
  TempDir d;
  expect_clean_error("check-reference " + d.file("nope"), "no such folder");
  expect_clean_error("check-reference " + d.path.string(), "no reference cases");
  expect_clean_error("inspect " + d.file("missing.safetensors"), "missing.safetensors");
  {
    std::ofstream f(d.file("junk.safetensors"));
    f << "this is not a safetensors file at all";
  }
  expect_clean_error("inspect " + d.file("junk.safetensors"), "junk.safetensors");
  expect_clean_error("generate --preset huge", "unknown preset 'huge'");
  expect_clean_error("generate --device cuda:7 --steps 2", "cuda");
  expect_clean_error("generate --steps 0", "--steps");
  expect_clean_error("generate --dtype int3", "unknown dtype");
  {
    std::ofstream f(d.file("cfg.json"));
    f << R"({"n_q": 2, "dep_q": 1, "delays": [0, 0], "num_layers": 1})";
  }
  expect_clean_error("generate --config " + d.file("cfg.json"), "delays");
  // Weights that don't match the config: the tensor is named.
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --preset tiny", &out), 0) << out;
  expect_clean_error("generate --config " + mt::test::reference_dir() + "/lm/lm_small_stream/config.json --weights " +
                         d.file("m/model.safetensors"),
                     "expected shape");
}

TEST(Cli, CheckReferenceFailsOnACorruptedCase) {
  // Copy a reference case and perturb one logit where the mask is true: the run must fail.
  TempDir d;
  namespace fs = std::filesystem;
  fs::copy(mt::test::reference_dir() + "/lm/kyutai_test_lm", d.file("case"), fs::copy_options::recursive);
  auto out_t = mt::io::load_all(d.file("case/out.safetensors"));
  at::Tensor logits = out_t["logits"].clone();
  logits[0][0][0][0] += 1e-3;
  out_t["logits"] = logits;
  mt::io::save(d.file("case/out.safetensors"), out_t);
  std::string out;
  EXPECT_EQ(run(cli() + " check-reference " + d.file("case"), &out), 1) << out;
  EXPECT_NE(out.find("FAIL"), std::string::npos) << out;
  EXPECT_NE(out.find("logits"), std::string::npos) << out;
}

TEST(Cli, ScoreHybridWholeEqualsStreaming) {
  // A tiny hybrid-TTT model: per-position CE whole-sequence == streamed step by step.
  TempDir d;
  at::Tensor codes = at::randint(64, {2, 5, 40}, at::kLong);
  mt::io::save(d.file("codes.safetensors"), std::vector<std::pair<std::string, at::Tensor>>{{"codes", codes}});
  std::string cfg = std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml", out;
  ASSERT_EQ(run(cli() + " score --threads 1 --config " + cfg + " --codes " + d.file("codes.safetensors") + " --out " +
                    d.file("a.safetensors"),
                &out),
            0)
      << out;
  ASSERT_EQ(run(cli() + " score --threads 1 --streaming --chunk 3 --config " + cfg + " --codes " +
                    d.file("codes.safetensors") + " --out " + d.file("b.safetensors"),
                &out),
            0)
      << out;
  at::Tensor a = mt::io::SafeTensors(d.file("a.safetensors")).get("ce");
  at::Tensor b = mt::io::SafeTensors(d.file("b.safetensors")).get("ce");
  at::Tensor m = mt::io::SafeTensors(d.file("a.safetensors")).get("mask");
  EXPECT_EQ(a.sizes(), (at::IntArrayRef{2, 3, 40}));
  EXPECT_LT((a - b).abs().masked_select(m).max().item<float>(), 1e-4);
  // init writes a model folder for the same config (same seed): scoring it gives the same CE.
  ASSERT_EQ(run(cli() + " init " + d.file("hm") + " --config " + cfg, &out), 0) << out;
  EXPECT_TRUE(std::filesystem::exists(d.file("hm/model.yaml"))) << out;
  ASSERT_EQ(run(cli() + " score --threads 1 --model " + d.file("hm") + " --codes " + d.file("codes.safetensors") +
                    " --out " + d.file("c.safetensors"),
                &out),
            0)
      << out;
  at::Tensor c = mt::io::SafeTensors(d.file("c.safetensors")).get("ce");
  EXPECT_LT((a - c).abs().masked_select(m).max().item<float>(), 1e-5);
  ASSERT_EQ(run(cli() + " init --config " + cfg + " --out " + d.file("w.safetensors"), &out), 0) << out;
  EXPECT_TRUE(mt::io::SafeTensors(d.file("w.safetensors")).contains("transformer.layers.1.ttt.gating_alpha"));
  // A mistyped field in the YAML config is named.
  {
    std::ofstream f(d.file("bad.yaml"));
    f << "preset: tiny\nttt:\n  enable: true\n  layers: \"1\"\n  mini_batch: 8\n";
  }
  expect_clean_error("score --config " + d.file("bad.yaml") + " --codes " + d.file("codes.safetensors"),
                     "ttt.mini_batch: unknown field");
}

TEST(Cli, ScoreWithYarnPastTheOriginalContext) {
  // A model YAML adds YaRN (4x over 16 frames) to the tiny preset: score 80 frames whole and streamed.
  TempDir d;
  at::Tensor codes = at::randint(64, {1, 5, 80}, at::kLong);
  mt::io::save(d.file("codes.safetensors"), std::vector<std::pair<std::string, at::Tensor>>{{"codes", codes}});
  std::ofstream(d.file("yarn.yaml")) << "preset: tiny\nrope_scaling:\n  type: yarn\n  factor: 4\n"
                                        "  original_max_position_embeddings: 16\n";
  std::ofstream(d.file("plain.yaml")) << "preset: tiny\n";
  std::string out;
  for (const char* name : {"yarn", "plain"})
    ASSERT_EQ(run(cli() + " score --threads 1 --config " + d.file(std::string(name) + ".yaml") + " --codes " +
                      d.file("codes.safetensors") + " --out " + d.file(std::string(name) + ".safetensors"),
                  &out),
              0)
        << out;
  ASSERT_EQ(run(cli() + " score --threads 1 --streaming --chunk 5 --config " + d.file("yarn.yaml") + " --codes " +
                    d.file("codes.safetensors") + " --out " + d.file("yarn_s.safetensors"),
                &out),
            0)
      << out;
  at::Tensor y = mt::io::SafeTensors(d.file("yarn.safetensors")).get("ce");
  at::Tensor ys = mt::io::SafeTensors(d.file("yarn_s.safetensors")).get("ce");
  at::Tensor p = mt::io::SafeTensors(d.file("plain.safetensors")).get("ce");
  at::Tensor m = mt::io::SafeTensors(d.file("yarn.safetensors")).get("mask");
  EXPECT_TRUE(y.masked_select(m).isfinite().all().item<bool>());
  EXPECT_LT((y - ys).abs().masked_select(m).max().item<float>(), 1e-4);
  EXPECT_GT((y - p).abs().masked_select(m).max().item<float>(), 1e-4);
  // YaRN on a model without RoPE, or a mistyped field, is a clear error.
  std::ofstream(d.file("bad.yaml")) << "preset: tiny\nrope_scaling:\n  type: yarn\n  factor: 4\n";
  expect_clean_error("score --config " + d.file("bad.yaml") + " --codes " + d.file("codes.safetensors"),
                     "original_max_position_embeddings");
}

TEST(Cli, SynthDataWritesTheDemosTaskWithItsRecallFrames) {
  // synth-data's files read back as a token dataset, its recall masks are those the generator's own
  // rule finds in the codes, the output depends only on the seed, and bad options are clean errors.
  TempDir d;
  const std::string args = " --pattern motifs --files 3 --frames 96 --min-gap 20 --seed 5 --masks";
  std::string out;
  ASSERT_EQ(run(cli() + " synth-data " + d.file("a") + args, &out), 0) << out;
  EXPECT_NE(out.find("3 motifs files of 96 frames x 5 streams"), std::string::npos) << out;
  ASSERT_EQ(run(cli() + " synth-data " + d.file("b") + args, &out), 0) << out;
  mt::train::SyntheticConfig cfg;
  cfg.frames = 96;
  cfg.min_gap = 20;
  at::Tensor recall = mt::io::SafeTensors(d.file("a/recall.safetensors")).get("recall");
  ASSERT_EQ(recall.sizes(), (at::IntArrayRef{3, 96}));
  auto files = mt::train::read_token_index(d.file("a/index.jsonl"));
  ASSERT_EQ(files.size(), 3u);
  for (size_t i = 0; i < files.size(); ++i) {
    at::Tensor codes = mt::io::SafeTensors(files[i].path).get("codes");
    ASSERT_EQ(codes.sizes(), (at::IntArrayRef{5, 96}));
    EXPECT_TRUE(codes.ge(0).all().item<bool>() && codes.lt(64).all().item<bool>());
    EXPECT_TRUE(at::equal(recall[static_cast<int64_t>(i)].to(at::kBool), mt::train::recall_mask(codes, cfg))) << i;
    const std::string name = std::filesystem::path(files[i].path).filename().string();
    EXPECT_TRUE(at::equal(codes, mt::io::SafeTensors(d.file("b/" + name)).get("codes"))) << name;
  }
  EXPECT_GT(recall.sum().item<int64_t>(), 0);
  expect_clean_error("synth-data " + d.file("a") + args, "--force");
  expect_clean_error("synth-data " + d.file("c") + " --pattern spiral", "pattern");
  expect_clean_error("synth-data " + d.file("c") + " --frames 10 --min-gap 20", "too short");
}
