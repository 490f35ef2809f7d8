// The sampling knobs `generate` shares with `serve`: the model's lm_gen_config as defaults (as Kyutai's
// server reads it), the command line over it, pad_mult and the repetition penalty.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_util.h"

using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

namespace {
at::Tensor tokens(const std::string& path) { return mt::io::SafeTensors(path).get("tokens"); }
}  // namespace

TEST(SamplingCli, LmGenConfigGivesDefaultsAndTheCommandLineWins) {
  TempDir d;
  std::string out;
  ASSERT_EQ(run(cli() + " init " + d.file("m") + " --preset tiny", &out), 0) << out;
  const std::string gen = cli() + " generate -q --model " + d.file("m") + " --steps 24 --out ";
  ASSERT_EQ(run(gen + d.file("sampled.safetensors"), &out), 0) << out;
  ASSERT_EQ(run(gen + d.file("greedy.safetensors") + " --greedy", &out), 0) << out;
  ASSERT_FALSE(at::equal(tokens(d.file("sampled.safetensors")), tokens(d.file("greedy.safetensors"))));
  // Temperatures 0 in the model's config.json: argmax, as Kyutai's LMGen does.
  nlohmann::json cfg = nlohmann::json::parse(mt::test::slurp(d.file("m/config.json")));
  cfg["lm_gen_config"] = {{"temp", 0.0}, {"temp_text", 0.0}, {"top_k", 250}, {"top_k_text", 25}};
  std::ofstream(d.file("m/config.json")) << cfg.dump(1);
  ASSERT_EQ(run(gen + d.file("cfg.safetensors"), &out), 0) << out;
  EXPECT_TRUE(at::equal(tokens(d.file("cfg.safetensors")), tokens(d.file("greedy.safetensors"))));
  // Explicit options override the file.
  ASSERT_EQ(run(gen + d.file("cli.safetensors") + " --temp 0.8 --temp-text 0.7", &out), 0) << out;
  EXPECT_TRUE(at::equal(tokens(d.file("cli.safetensors")), tokens(d.file("sampled.safetensors"))));
  // pad_mult far up: the text stream is all padding.
  ASSERT_EQ(run(gen + d.file("quiet.safetensors") + " --temp 0.8 --temp-text 0.7 --pad-mult 60", &out), 0) << out;
  at::Tensor text = tokens(d.file("quiet.safetensors")).select(1, 0);
  EXPECT_TRUE((text == 3).all().item<bool>()) << text;
  // A bad knob is one clear line naming it.
  EXPECT_EQ(run(gen + d.file("x.safetensors") + " --repetition-penalty 0 --repetition-context 8", &out), 1);
  EXPECT_NE(out.find("repetition_penalty"), std::string::npos) << out;
}
