// End-to-end over every shipped TTT config (hybrid Linear / MLP, adapter + LoRA, In-Place): init a
// model folder, load it over a base checkpoint, score it whole and streamed (equal), and read the TTT
// diagnostics the CLI prints and writes.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "test_util.h"

using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

class ConfigE2E : public ::testing::TestWithParam<std::string> {};

TEST_P(ConfigE2E, InitLoadOverBaseScoreWholeEqualsStreamedWithDiagnostics) {
  TempDir d;
  const std::string cfg = std::string(MT_SOURCE_DIR) + "/configs/" + GetParam() + ".yaml";
  at::Tensor codes = at::randint(64, {2, 5, 37}, at::kLong);
  mt::io::save(d.file("codes.safetensors"), std::vector<std::pair<std::string, at::Tensor>>{{"codes", codes}});
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --seed 4 --config " + cfg, &out), 0) << out;
  const std::string score = cli() + " score --threads 1 --codes " + d.file("codes.safetensors");
  ASSERT_EQ(run(score + " --model " + d.file("m") + " --out " + d.file("a.safetensors") + " --diagnostics-out " +
                    d.file("a.json"),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("TTT diagnostics"), std::string::npos) << out;
  ASSERT_EQ(run(score + " --model " + d.file("m") + " --streaming --chunk 7 --out " + d.file("b.safetensors") +
                    " --diagnostics-out " + d.file("b.json"),
                &out),
            0)
      << out;
  mt::io::SafeTensors a(d.file("a.safetensors")), b(d.file("b.safetensors"));
  at::Tensor m = a.get("mask");
  EXPECT_LT((a.get("ce") - b.get("ce")).abs().masked_select(m).max().item<float>(), 1e-4);
  // Whole and streamed passes report the same diagnostics, and name every TTT unit.
  auto ja = nlohmann::json::parse(std::ifstream(d.file("a.json"))),
       jb = nlohmann::json::parse(std::ifstream(d.file("b.json")));
  ASSERT_EQ(ja.size(), jb.size());
  ASSERT_GE(ja.size(), 1u);
  for (size_t i = 0; i < ja.size(); ++i) {
    EXPECT_EQ(ja[i]["unit"], jb[i]["unit"]);
    if (!ja[i]["state_change"].is_null())
      EXPECT_NEAR(ja[i]["state_change"].get<double>(), jb[i]["state_change"].get<double>(),
                  1e-3 * (1 + ja[i]["state_change"].get<double>()));
    if (!ja[i]["loss_after"].is_null())
      EXPECT_NEAR(ja[i]["loss_after"].get<double>(), jb[i]["loss_after"].get<double>(), 1e-3);
  }
  // The same config loads over a base checkpoint (no TTT / LoRA tensors): they are initialised and said so.
  ASSERT_EQ(run(cli() + " init --preset tiny --out " + d.file("base.safetensors"), &out), 0) << out;
  ASSERT_EQ(run(score + " --config " + cfg + " --weights " + d.file("base.safetensors"), &out), 0) << out;
  EXPECT_NE(out.find("new TTT/LoRA tensors initialised"), std::string::npos) << out;
  // inspect shows what TTT adds.
  ASSERT_EQ(run(cli() + " inspect " + d.file("m"), &out), 0) << out;
  EXPECT_NE(out.find("loads strictly as this config: yes"), std::string::npos) << out;
  EXPECT_NE(out.find("TTT "), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(Configs, ConfigE2E,
                         ::testing::Values("tiny-hybrid", "tiny-hybrid-mlp", "tiny-adapter", "tiny-inplace"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });
