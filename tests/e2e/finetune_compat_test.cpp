// Coming from moshi / moshi-finetune: moshi-finetune's example YAML trains as it stands with the
// weights in the Hugging Face cache (moshi_paths.hf_repo_id), its wandb section is accepted with one
// note, and the run folder holds its files (args.yaml, metrics.train.jsonl, metrics.eval.jsonl).
// `--hf-repo` does the same for the other commands. The cache is laid out here by hand, exactly as the
// Python hub client writes it, and read offline (no network in these tests).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "lm/config.h"
#include "lm/lm_model.h"
#include "test_util.h"
#include "train/data.h"

namespace fs = std::filesystem;
using mt::test::cli;
using mt::test::run;
using mt::test::slurp;
using mt::test::TempDir;

namespace {

constexpr const char* kRepo = "kyutai/moshiko-pytorch-bf16";
constexpr const char* kCommit = "0123456789abcdef0123456789abcdef01234567";

// A hub cache holding `files` (name -> source path) of kRepo at kCommit, refs/main naming it; blobs are
// named by a made-up etag per file (the cache layout does not check it). `absent` get .no_exist markers.
std::string make_cache(TempDir& d, const std::map<std::string, std::string>& files,
                       const std::vector<std::string>& absent = {}) {
  const fs::path repo = fs::path(d.file("hf/hub")) / "models--kyutai--moshiko-pytorch-bf16";
  fs::create_directories(repo / "refs");
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "snapshots" / kCommit);
  std::ofstream(repo / "refs" / "main") << kCommit;
  int n = 0;
  for (const auto& [name, src] : files) {
    const std::string etag = "e" + std::to_string(n++) + std::string(63, 'a');
    fs::copy_file(src, repo / "blobs" / etag);
    fs::create_symlink(fs::path("../../blobs") / etag, repo / "snapshots" / kCommit / name);
  }
  for (const auto& name : absent) {
    fs::create_directories(repo / ".no_exist" / kCommit);
    std::ofstream(repo / ".no_exist" / kCommit / name);
  }
  return d.file("hf/hub");
}

// The tiny preset as a Kyutai-style repo: config.json (its LMModel kwargs) and model.safetensors.
std::map<std::string, std::string> tiny_repo(TempDir& d) {
  std::string out;
  EXPECT_EQ(run(cli() + " init " + d.file("tiny") + " --preset tiny", &out), 0) << out;
  return {{"config.json", d.file("tiny/config.json")}, {"model.safetensors", d.file("tiny/model.safetensors")}};
}

// Token data for the tiny preset (K = 5 streams): files long enough for a few windows of 8 s.
std::string make_data(TempDir& d) {
  std::vector<std::pair<std::string, at::Tensor>> files;
  at::Generator g = at::detail::createCPUGenerator(5);
  for (int i = 0; i < 3; ++i) files.emplace_back("f" + std::to_string(i), at::randint(64, {5, 260}, g, at::kLong));
  mt::train::write_token_dataset(d.file("data"), files);
  return d.file("data/index.jsonl");
}

std::string offline_env(const std::string& cache) { return "HF_HUB_OFFLINE=1 HF_HUB_CACHE=" + cache + " "; }

std::vector<nlohmann::json> jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

const std::string kExample = std::string(MT_SOURCE_DIR) + "/tests/data/moshi_finetune_example.yaml";

}  // namespace

// The example YAML with only what a user fills in (run_dir, train_data) and a CI-sized run (steps,
// batch, window): the repo's config and weights come from the cache, LoRA rank 128 on every linear.
TEST(FinetuneCompat, ExampleYamlTrainsFromTheHubCache) {
  TempDir d;
  const std::string cache = make_cache(d, tiny_repo(d));
  const std::string data = make_data(d), rd = d.file("run");
  std::string out;
  const std::string cmd = offline_env(cache) + cli() + " train --config " + kExample + " --set run_dir=" + rd +
                          " --set data.train_data=" + data +
                          " --set max_steps=2 --set batch_size=2 --set duration_sec=8 --set ckpt_freq=2";
  ASSERT_EQ(run(cmd, &out), 0) << out;
  // The example sets eval_freq with do_eval false: said once, not an error.
  EXPECT_NE(out.find("note: eval_freq is set, but do_eval is false"), std::string::npos) << out;
  EXPECT_NE(out.find("note: model config: "), std::string::npos) << out;
  EXPECT_NE(out.find(std::string("snapshots/") + kCommit + "/config.json"), std::string::npos) << out;
  ASSERT_TRUE(fs::exists(rd + "/args.yaml"));
  EXPECT_NE(slurp(rd + "/args.yaml").find("hf_repo_id"), std::string::npos);
  const auto train = jsonl(rd + "/metrics.train.jsonl");
  ASSERT_EQ(train.size(), 2u) << out;
  for (const char* k : {"lr", "step", "loss", "prob_real_tokens", "percent_done", "peak_allocated_mem", "allocated_mem",
                        "wps", "avg_wps", "eta_in_seconds", "at"})
    EXPECT_TRUE(train[1].contains(k)) << k << " missing: " << train[1].dump();
  EXPECT_EQ(train[1]["step"], 2);
  EXPECT_DOUBLE_EQ(train[1]["percent_done"].get<double>(), 100.0);
  EXPECT_GT(train[1]["prob_real_tokens"].get<double>(), 0.0);
  EXPECT_LE(train[1]["prob_real_tokens"].get<double>(), 1.0);
  EXPECT_GT(train[1]["peak_allocated_mem"].get<double>(), 0.0);
  EXPECT_GE(train[1]["peak_allocated_mem"].get<double>(), train[1]["allocated_mem"].get<double>());
  // The adapters' checkpoint names its base as the hub path, so it loads offline from the same cache.
  const std::string ck = rd + "/checkpoints/checkpoint_000002/consolidated";
  ASSERT_TRUE(fs::exists(ck + "/lora.safetensors")) << out;
  EXPECT_NE(slurp(ck + "/model.yaml").find(std::string("hf://") + kRepo + "/model.safetensors"), std::string::npos)
      << slurp(ck + "/model.yaml");
  ASSERT_EQ(run(offline_env(cache) + cli() + " generate --model " + ck + " --steps 3 --greedy", &out), 0) << out;
}

// wandb: accepted with one note (never the key); do_eval writes moshi-finetune's eval records; an
// unknown wandb field is still an error.
TEST(FinetuneCompat, WandbSectionAndEvalRecords) {
  TempDir d;
  const std::string cache = make_cache(d, tiny_repo(d));
  const std::string data = make_data(d), rd = d.file("run");
  std::ofstream(d.file("ft.yaml")) << slurp(kExample)
                                   << "\nwandb:\n  project: my-proj\n  run_name: r1\n  key: SECRET123\n"
                                      "  offline: true\n";
  std::string out;
  const std::string base = offline_env(cache) + cli() + " train --config " + d.file("ft.yaml") +
                           " --set run_dir=" + rd + " --set data.train_data=" + data + " --set data.eval_data=" + data +
                           " --set max_steps=2 --set batch_size=2 --set duration_sec=8 --set do_ckpt=false";
  ASSERT_EQ(run(base + " --set do_eval=true --set eval_freq=1", &out), 0) << out;
  EXPECT_NE(out.find("note: wandb: not used (project 'my-proj')"), std::string::npos) << out;
  EXPECT_EQ(out.find("SECRET123"), std::string::npos) << out;
  const auto ev = jsonl(rd + "/metrics.eval.jsonl");
  ASSERT_EQ(ev.size(), 2u) << out;
  for (const char* k : {"step", "train_loss", "eval_loss", "perplexity", "at"})
    EXPECT_TRUE(ev[1].contains(k)) << k << " missing: " << ev[1].dump();
  EXPECT_NEAR(ev[1]["perplexity"].get<double>(), std::exp(ev[1]["eval_loss"].get<double>()), 1e-6);
  std::ofstream(d.file("bad.yaml")) << slurp(kExample) << "\nwandb:\n  projet: x\n";
  EXPECT_NE(run(offline_env(cache) + cli() + " train --dry-run --config " + d.file("bad.yaml") +
                    " --set run_dir=" + rd + "2 --set data.train_data=" + data,
                &out),
            0);
  EXPECT_NE(out.find("wandb.projet: unknown field"), std::string::npos) << out;
}

// A repo without config.json (as Kyutai's bf16 repos): the built-in 7B config, said in a note; here
// its tiny weights then fail to load with shapes named, which proves the 7B config was the one used.
TEST(FinetuneCompat, RepoWithoutConfigUsesTheSevenBConfig) {
  TempDir d;
  auto files = tiny_repo(d);
  files.erase("config.json");
  const std::string cache = make_cache(d, files, {"config.json"});
  std::string out;
  EXPECT_NE(run(offline_env(cache) + cli() + " generate --hf-repo " + kRepo + " --steps 2", &out), 0);
  EXPECT_NE(out.find("expected shape"), std::string::npos) << out;
  EXPECT_NE(out.find("4096"), std::string::npos) << out;
}

// --hf-repo for the other commands, and the errors when the cache lacks the repo (offline).
TEST(FinetuneCompat, HfRepoFlagAndOfflineErrors) {
  TempDir d;
  const std::string cache = make_cache(d, tiny_repo(d));
  std::string out;
  ASSERT_EQ(run(offline_env(cache) + cli() + " generate --hf-repo " + kRepo + " --steps 3 --greedy", &out), 0) << out;
  EXPECT_NE(out.find(kCommit), std::string::npos) << out;  // the weights' origin names the snapshot
  // hf:// and file:// forms for explicit files.
  ASSERT_EQ(run(offline_env(cache) + cli() + " generate --config hf://" + kRepo + "/config.json --weights file://" +
                    d.file("tiny/model.safetensors") + " --steps 2 --greedy",
                &out),
            0)
      << out;
  const std::string empty = d.file("empty-cache");
  fs::create_directories(empty);
  EXPECT_NE(run(offline_env(empty) + cli() + " generate --hf-repo kyutai/other-repo --steps 2", &out), 0);
  EXPECT_NE(out.find("kyutai/other-repo"), std::string::npos) << out;
  EXPECT_NE(out.find(empty), std::string::npos) << out;
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "one line expected: " << out;
}

// A moshi-finetune checkpoint folder (config.json with lora / lora_rank / lora_scaling beside
// consolidated.safetensors, or lora.safetensors alone) loads with --model as it is: the merged one
// and the adapters over their base generate the same greedy tokens as the model they came from.
TEST(FinetuneCompat, KyutaiCheckpointFoldersLoadWithModel) {
  TempDir d;
  tiny_repo(d);
  fs::create_directories(d.file("m"));
  std::ofstream(d.file("m/model.yaml")) << "moshi_paths:\n  config_path: ../tiny/config.json\n"
                                           "  moshi_path: ../tiny/model.safetensors\n  lora_path: lora.safetensors\n"
                                           "lora:\n  enable: true\n  rank: 4\n";
  // Non-zero adapters, so that a folder loaded without them would generate other tokens.
  mt::lm::LoRAConfig lc;
  lc.enable = true;
  lc.rank = 4;
  mt::lm::LMModel m(mt::lm::LMConfig::from_file(d.file("tiny/config.json")), mt::lm::TTTIntegrationConfig{}, lc);
  std::vector<std::pair<std::string, at::Tensor>> adapters;
  at::Generator g = at::detail::createCPUGenerator(11);
  for (const auto& kv : m->named_parameters())
    if (mt::lm::is_lora_param(kv.key())) adapters.emplace_back(kv.key(), at::randn(kv.value().sizes(), g) * 0.5);
  mt::io::save(d.file("m/lora.safetensors"), adapters);
  std::string out;
  const std::string gen = " generate --steps 6 --greedy --out ";
  auto tokens = [&](const std::string& model_args, const std::string& name) {
    std::string o;
    EXPECT_EQ(run(cli() + gen + d.file(name) + " " + model_args, &o), 0) << o;
    return mt::io::SafeTensors(d.file(name)).get("tokens");
  };
  for (const char* fmt : {"merged", "lora"})
    ASSERT_EQ(run(cli() + " export --model " + d.file("m") + " --out " + d.file(std::string("ex_") + fmt) +
                      " --format " + fmt + " --dtype float32",
                  &out),
              0)
        << out;
  const at::Tensor ref = tokens("--model " + d.file("m"), "ref.safetensors");
  EXPECT_TRUE(at::equal(tokens("--model " + d.file("ex_merged"), "merged.safetensors"), ref));
  EXPECT_TRUE(at::equal(
      tokens("--model " + d.file("ex_lora") + " --weights " + d.file("tiny/model.safetensors"), "lora.safetensors"),
      ref));
  // Without the adapters the tokens differ (so the comparisons above can fail).
  EXPECT_FALSE(
      at::equal(tokens("--config " + d.file("tiny/config.json") + " --weights " + d.file("tiny/model.safetensors"),
                       "base.safetensors"),
                ref));
  EXPECT_NE(run(cli() + gen + d.file("x.safetensors") + " --model " + d.file("ex_lora"), &out), 0);
  EXPECT_NE(out.find("LoRA adapters only"), std::string::npos) << out;
}
