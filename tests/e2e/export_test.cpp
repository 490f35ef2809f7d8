// `moshi-ttt export` against Kyutai's own loader (moshi 0.2.13 in the reference venv,
// scripts/reference/check_export.py): a tiny model trained with LoRA on some linears, exported as a
// LoRA file and merged, loads with get_moshi_lm and gives our logits. A TTT checkpoint is refused by
// name, and exported with --drop-ttt with its one-line note; its raw lora.safetensors is what Kyutai's
// loader refuses (the reason for the export).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

namespace {

// float32 export, float32 compute on both sides: what is left is summation order.
constexpr double kRelTol = 1e-4;

std::string make_data(TempDir& d) {
  std::vector<std::pair<std::string, at::Tensor>> files;
  at::Generator g = at::detail::createCPUGenerator(3);
  for (int i = 0; i < 4; ++i) files.emplace_back("f" + std::to_string(i), at::randint(64, {5, 50}, g, at::kLong));
  mt::train::write_token_dataset(d.file("data"), files);
  return d.file("data/index.jsonl");
}

// Trains `model_yaml` two steps (LoRA/TTT from the base folder when it names one) and returns the
// checkpoint's consolidated/ folder.
std::string train(TempDir& d, const std::string& name, const std::string& model_yaml) {
  std::ofstream(d.file(name + ".yaml"))
      << model_yaml << "\nrun_dir: " << d.file(name + ".run") << "\ndata:\n  train_data: " << make_data(d)
      << "\nduration_sec: 1.6\nbatch_size: 2\nmax_steps: 2\nseed: 1\noptim:\n  lr: 0.02\n  pct_start: 0.3\n"
         "param_dtype: float32\ngradient_checkpointing: false\n";
  std::string out;
  EXPECT_EQ(run(cli() + " train --quiet --config " + d.file(name + ".yaml"), &out), 0) << out;
  return d.file(name + ".run/checkpoints/checkpoint_000002/consolidated");
}

std::string base_model(TempDir& d) {
  std::string out;
  EXPECT_EQ(run(cli() + " init " + d.file("base") + " --preset tiny --seed 7", &out), 0) << out;
  return "moshi_paths:\n  config_path: " + d.file("base/config.json") +
         "\n  moshi_path: " + d.file("base/model.safetensors") + "\n";
}

// Our logits of `model_args`'s model on codes.safetensors, as check_export.py reads them.
void our_logits(TempDir& d, const std::string& model_args, const std::string& out_file) {
  if (!fs::exists(d.file("codes.safetensors"))) {
    at::Generator g = at::detail::createCPUGenerator(11);
    mt::io::save(d.file("codes.safetensors"),
                 std::vector<std::pair<std::string, at::Tensor>>{{"codes", at::randint(64, {2, 5, 24}, g, at::kLong)}});
  }
  std::string out;
  ASSERT_EQ(
      run(cli() + " score " + model_args + " --codes " + d.file("codes.safetensors") + " --logits --out " + out_file,
          &out),
      0)
      << out;
}

// The reference venv's python, or "" with the reason in *why.
std::string reference_python(std::string* why) {
  std::string out;
  const int rc = run(std::string(MT_SOURCE_DIR) + "/scripts/reference/setup_reference_env.sh", &out);
  std::string last = out.substr(0, out.find_last_not_of('\n') + 1);
  last = last.substr(last.find_last_of('\n') + 1);
  if (rc != 0 || !fs::exists(last)) {
    *why = "scripts/reference/setup_reference_env.sh failed (exit " + std::to_string(rc) + "):\n" + out;
    return "";
  }
  return last;
}

// Runs check_export.py on a list of checks in one process; name -> its result.
std::map<std::string, json> check(TempDir& d, const std::string& py, const json& plan) {
  std::ofstream(d.file("plan.json")) << plan.dump(2);
  std::string out;
  const std::string cmd = py + " " + MT_SOURCE_DIR + "/scripts/reference/check_export.py " + d.file("plan.json");
  EXPECT_EQ(run(cmd, &out), 0) << cmd << "\n" << out;
  std::map<std::string, json> r;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("name")) r[j["name"].get<std::string>()] = j;
  }
  for (const auto& c : plan) EXPECT_TRUE(r.count(c["name"].get<std::string>())) << c.dump() << "\n" << out;
  return r;
}

void expect_close(const json& r, const std::string& what) {
  std::printf("[ kyutai ] %s: %s\n", what.c_str(), r.dump().c_str());
  ASSERT_TRUE(r.contains("text_max_rel")) << what << ": " << r.dump();
  EXPECT_LT(r["text_max_rel"].get<double>(), kRelTol) << what;
  EXPECT_LT(r["audio_max_rel"].get<double>(), kRelTol) << what;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

TEST(Export, KyutaisLoaderGivesOurLogits) {
  std::string why;
  const std::string py = reference_python(&why);
  if (py.empty()) GTEST_SKIP() << why;
  TempDir d;
  // LoRA on some linears only (the export completes the rest with zero adapters), from a base folder.
  const std::string ck = train(d, "lora",
                               base_model(d) +
                                   "lora:\n  enable: true\n  rank: 4\n  scaling: 2.0\n"
                                   "  targets: [transformer.layers.1, text_linear, linears.0]\n");
  ASSERT_TRUE(fs::exists(ck + "/lora.safetensors")) << ck;
  our_logits(d, "--model " + ck, d.file("ours.safetensors"));
  std::string out;
  for (const char* f : {"lora", "merged"}) {
    ASSERT_EQ(run(cli() + " export --model " + ck + " --out " + d.file(std::string("x_") + f) + " --format " + f +
                      " --dtype float32",
                  &out),
              0)
        << out;
    EXPECT_NE(out.find("python -m moshi.server --moshi-weight "), std::string::npos) << out;
    EXPECT_NE(out.find(" --config-path " + d.file(std::string("x_") + f) + "/config.json"), std::string::npos) << out;
    // The LoRA export's base is the training base itself (a plain Moshi file): nothing else to write.
    if (std::string(f) == "lora")
      EXPECT_NE(out.find("--moshi-weight " + d.file("base/model.safetensors")), std::string::npos) << out;
  }
  // The adapters matter: the base alone is far from these logits.
  our_logits(d, "--model " + d.file("base"), d.file("base_logits.safetensors"));
  const double moved = mt::test::max_abs_diff(mt::io::load_all(d.file("base_logits.safetensors")).at("text_logits"),
                                              mt::io::load_all(d.file("ours.safetensors")).at("text_logits"));
  EXPECT_GT(moved, 1e-3);
  // bf16 (Kyutai's dtype): Kyutai's load vs ours of the same bf16 file.
  ASSERT_EQ(run(cli() + " export --model " + ck + " --out " + d.file("x_bf16") + " --format merged", &out), 0) << out;
  EXPECT_NE(out.find("bfloat16"), std::string::npos) << out;
  our_logits(d, "--config " + d.file("x_bf16/config.json") + " --weights " + d.file("x_bf16/consolidated.safetensors"),
             d.file("ours_bf16.safetensors"));
  const json common = {{"codes", d.file("codes.safetensors")}, {"ours", d.file("ours.safetensors")}};
  auto with = [&](json c) {
    for (auto& [k, v] : common.items())
      if (!c.contains(k)) c[k] = v;
    return c;
  };
  const std::string base = d.file("base/model.safetensors");
  auto r = check(d, py,
                 {with({{"name", "lora, unfused"}, {"export", d.file("x_lora")}, {"base", base}, {"fuse", false}}),
                  with({{"name", "lora, fused (moshi.server)"}, {"export", d.file("x_lora")}, {"base", base}}),
                  with({{"name", "merged float32"}, {"export", d.file("x_merged")}}),
                  with({{"name", "merged bfloat16 (vs our load of the same file)"},
                        {"export", d.file("x_bf16")},
                        {"ours", d.file("ours_bf16.safetensors")}})});
  EXPECT_GT(r["lora, unfused"].value("wrapped_linears", 0), 0) << r["lora, unfused"].dump();
  for (const auto& [name, res] : r) expect_close(res, name);
}

// A hybrid TTT checkpoint (configs/tiny-hybrid.yaml): refused with its TTT tensors named, exported with
// --drop-ttt and the one-line note; no LoRA, so --format lora is refused.
TEST(Export, TTTCheckpointNeedsDropTTT) {
  TempDir d;
  const std::string ck =
      train(d, "hybrid",
            "full_finetuning: true\n" + mt::test::slurp(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml"));
  std::string out;
  EXPECT_NE(run(cli() + " export --model " + ck + " --out " + d.file("x") + " --format merged", &out), 0);
  EXPECT_NE(out.find("transformer.layers.1.ttt."), std::string::npos) << out;
  EXPECT_NE(out.find("TTT tensor(s)"), std::string::npos) << out;
  EXPECT_NE(out.find("Kyutai's moshi has no TTT layers"), std::string::npos) << out;
  EXPECT_NE(out.find("--drop-ttt"), std::string::npos) << out;
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "one line: " << out;
  EXPECT_FALSE(fs::exists(d.file("x")));
  ASSERT_EQ(run(cli() + " export --model " + ck + " --out " + d.file("x") + " --format merged --drop-ttt", &out), 0)
      << out;
  EXPECT_EQ(first_line(out).rfind("--drop-ttt: hybrid TTT blocks removed from layer(s) 1", 0), 0u) << out;
  EXPECT_NE(first_line(out).find("outputs differ"), std::string::npos) << out;
  EXPECT_NE(out.find("exported"), std::string::npos) << out;
  const mt::io::SafeTensors written(d.file("x/consolidated.safetensors"));
  for (const auto& t : written.tensors()) EXPECT_EQ(t.name.find(".ttt."), std::string::npos) << t.name;
  // Our loader takes it as a plain Moshi.
  our_logits(d, "--config " + d.file("x/config.json") + " --weights " + d.file("x/consolidated.safetensors"),
             d.file("dropped.safetensors"));
  EXPECT_NE(run(cli() + " export --model " + ck + " --out " + d.file("y") + " --format lora --drop-ttt", &out), 0);
  EXPECT_NE(out.find("no LoRA"), std::string::npos) << out;
}

// The premise: a training checkpoint's own lora.safetensors (LoRA + TTT tensors) breaks
// Kyutai's loader, while its --drop-ttt LoRA export loads.
TEST(Export, RawTTTAdaptersBreakKyutaisLoader) {
  std::string why;
  const std::string py = reference_python(&why);
  if (py.empty()) GTEST_SKIP() << why;
  TempDir d;
  const std::string ck = train(d, "hl",
                               base_model(d) +
                                   "lora:\n  enable: true\n  rank: 2\nttt:\n  enable: true\n  variant: hybrid\n"
                                   "  layers: \"1\"\n  mini_batch_size: 16\n");
  ASSERT_TRUE(fs::exists(ck + "/lora.safetensors")) << ck;
  std::string out;
  ASSERT_EQ(run(cli() + " export --model " + ck + " --out " + d.file("x") + " --format lora --drop-ttt", &out), 0)
      << out;
  EXPECT_EQ(first_line(out).rfind("--drop-ttt: hybrid TTT blocks removed", 0), 0u) << out;
  // Kyutai loads the export (every wrapped linear covered) and computes what our loader does with the
  // same files.
  std::ofstream(d.file("x.yaml")) << "moshi_paths:\n  config_path: " << d.file("x/config.json")
                                  << "\n  moshi_path: " << d.file("base/model.safetensors")
                                  << "\n  lora_path: " << d.file("x/lora.safetensors")
                                  << "\nlora:\n  enable: true\n  rank: 2\n  scaling: 2.0\n";
  our_logits(d, "--config " + d.file("x.yaml"), d.file("ours.safetensors"));
  const std::string base = d.file("base/model.safetensors");
  auto r = check(d, py,
                 {{{"name", "raw"}, {"raw_lora", ck}, {"base", base}},
                  {{"name", "lora --drop-ttt, unfused"},
                   {"export", d.file("x")},
                   {"codes", d.file("codes.safetensors")},
                   {"ours", d.file("ours.safetensors")},
                   {"base", base},
                   {"fuse", false}}});
  EXPECT_TRUE(r["raw"].value("refused", false)) << r["raw"].dump();
  EXPECT_NE(r["raw"].value("error", "").find("unexpected_keys"), std::string::npos) << r["raw"].dump();
  EXPECT_NE(r["raw"].value("error", "").find(".ttt."), std::string::npos) << r["raw"].dump();
  expect_close(r["lora --drop-ttt, unfused"], "lora --drop-ttt, unfused");
}
