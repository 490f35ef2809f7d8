// End-to-end: Kyutai's q8 format from the command line. A float model folder is quantised into a q8
// folder (model.q8.safetensors + config.json with quantize true and moshi_name), which generates,
// inspects as q8, and is refused for training; init --q8 writes a random q8 folder directly.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "test_util.h"

using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

TEST(CliQ8, QuantizeThenGenerateAndInspect) {
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --preset tiny --seed 3", &out), 0) << out;
  std::filesystem::create_directories(d.file("q"));
  ASSERT_EQ(run(cli() + " quantize " + d.file("m/model.safetensors") + " " + d.file("q/model.q8.safetensors") +
                    " --config " + d.file("m/config.json"),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("q8 linears"), std::string::npos) << out;
  mt::io::SafeTensors f(d.file("q/model.q8.safetensors"));
  EXPECT_EQ(f.info("text_linear.weight").dtype, "I8");
  EXPECT_EQ(f.info("text_linear.weight_scb").dtype, "F32");
  EXPECT_EQ(f.info("text_emb.weight").dtype, "F32");  // embeddings stay as given
  const std::string cfg = mt::test::slurp(d.file("q/config.json"));
  EXPECT_NE(cfg.find("\"quantize\": true"), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("\"moshi_name\": \"model.q8.safetensors\""), std::string::npos) << cfg;
  // The folder's config names its weights: generate finds model.q8.safetensors.
  ASSERT_EQ(run(cli() + " generate --model " + d.file("q") + " --steps 6 --greedy --threads 1 -q --out " +
                    d.file("tok.safetensors"),
                &out),
            0)
      << out;
  ASSERT_EQ(run(cli() + " inspect " + d.file("q/model.q8.safetensors"), &out), 0) << out;
  EXPECT_NE(out.find("quantised linears"), std::string::npos) << out;
  EXPECT_NE(out.find("loads strictly as this config: yes"), std::string::npos) << out;
  // Without --out-config, an existing config.json beside the output is not overwritten.
  EXPECT_NE(run(cli() + " quantize " + d.file("m/model.safetensors") + " " + d.file("m/model.q8.safetensors") +
                    " --config " + d.file("m/config.json"),
                &out),
            0);
  EXPECT_NE(out.find("--out-config"), std::string::npos) << out;
}

TEST(CliQ8, InitQ8WritesARandomQ8Folder) {
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --preset tiny --q8", &out), 0) << out;
  mt::io::SafeTensors f(d.file("m/model.safetensors"));
  EXPECT_EQ(f.info("linears.0.weight").dtype, "I8");
  ASSERT_EQ(run(cli() + " generate --model " + d.file("m") + " --steps 4 --greedy --threads 1 -q --out " +
                    d.file("tok.safetensors"),
                &out),
            0)
      << out;
}
