// encode / decode as users run them: a stereo 16 kHz wav through the reference's small Mimi and back.
#include <gtest/gtest.h>

#include <cmath>

#include "audio/audio_io.h"
#include "io/safetensors.h"
#include "test_util.h"

using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

namespace {
std::string mimi_args() {
  const std::string d = mt::test::reference_dir() + "/mimi/mimi_small";
  return " --mimi " + d + "/model.safetensors --mimi-config " + d + "/config.json";
}
}  // namespace

TEST(Codec, EncodeDecodeStereoRoundTripAndStreamingCodesAgree) {
  TempDir d;
  // 1 s stereo at 16 kHz: a 220 Hz tone left, a 330 Hz chirp-ish tone right.
  const int64_t n = 16000;
  at::Tensor t = at::arange(n, at::kFloat) / 16000.0;
  at::Tensor wav = at::stack({0.3 * at::sin(2 * M_PI * 220 * t), 0.2 * at::sin(2 * M_PI * (330 + 200 * t) * t)});
  mt::audio::write_wav(d.file("in.wav"), wav, 16000);
  std::string out;
  ASSERT_EQ(run(cli() + " encode " + d.file("in.wav") + " " + d.file("codes.safetensors") + mimi_args(), &out), 0)
      << out;
  EXPECT_NE(out.find("real time"), std::string::npos) << out;
  at::Tensor codes = mt::io::load_all(d.file("codes.safetensors")).at("codes");
  // 1 s at 24 kHz = 12.5 frames, padded to 13; 8 codebooks; one row per channel.
  ASSERT_EQ(codes.sizes(), (std::vector<int64_t>{2, 8, 13}));
  EXPECT_EQ(codes.scalar_type(), at::kLong);
  EXPECT_FALSE(codes[0].equal(codes[1])) << "the two channels must be encoded separately";
  ASSERT_EQ(
      run(cli() + " encode --streaming " + d.file("in.wav") + " " + d.file("codes_s.safetensors") + mimi_args(), &out),
      0)
      << out;
  at::Tensor cs = mt::io::load_all(d.file("codes_s.safetensors")).at("codes");
  ASSERT_EQ(cs.sizes(), codes.sizes());
  EXPECT_GE(cs.eq(codes).to(at::kDouble).mean().item<double>(), 0.8)
      << "streaming codes drifted far from whole-signal ones";
  ASSERT_EQ(run(cli() + " decode " + d.file("codes.safetensors") + " " + d.file("out.wav") + mimi_args(), &out), 0)
      << out;
  mt::audio::Audio back = mt::audio::read_audio(d.file("out.wav"));
  EXPECT_EQ(back.sample_rate, 24000);
  EXPECT_EQ(back.channels(), 2);
  EXPECT_EQ(back.frames(), 13 * 1920);
  EXPECT_TRUE(at::isfinite(back.samples).all().item<bool>());
}

TEST(Codec, BadInputsGiveOneClearError) {
  TempDir d;
  std::string out;
  EXPECT_EQ(run(cli() + " encode " + d.file("missing.wav") + " " + d.file("c.safetensors") + mimi_args(), &out), 1);
  EXPECT_NE(out.find("missing.wav"), std::string::npos) << out;
  EXPECT_EQ(out.find("frame #"), std::string::npos) << out;
  // Codes outside the codebook range are refused before decoding.
  mt::io::save(d.file("bad.safetensors"),
               std::map<std::string, at::Tensor>{{"codes", at::full({1, 8, 3}, 4096, at::kLong)}});
  EXPECT_EQ(run(cli() + " decode " + d.file("bad.safetensors") + " " + d.file("o.wav") + mimi_args(), &out), 1);
  EXPECT_NE(out.find("codes outside [0, 64)"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(d.file("o.wav")));
  // A wrong checkpoint names the tensor.
  EXPECT_EQ(
      run(cli() + " encode " + d.file("bad.safetensors") + " x.safetensors --mimi " + d.file("bad.safetensors"), &out),
      1);
  EXPECT_NE(out.find("missing tensor"), std::string::npos) << out;
}

// Full duplex: the user's wav streams through Mimi -> tiny LM (with a hybrid TTT layer whose state
// persists over the file) -> Mimi decode; Moshi's audio and text come out.
TEST(Codec, FullDuplexGenerateWritesAudioAndText) {
  TempDir d;
  std::string out;
  ASSERT_EQ(
      run(cli() + " init " + d.file("tiny") + " --config " + std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml",
          &out),
      0)
      << out;
  at::Tensor t = at::arange(2 * 16000, at::kFloat) / 16000.0;
  mt::audio::write_wav(d.file("user.wav"), (0.3 * at::sin(2 * M_PI * 220 * t)).unsqueeze(0), 16000);
  ASSERT_EQ(run(cli() + " generate --model " + d.file("tiny") + " --user " + d.file("user.wav") + " --out " +
                    d.file("moshi.wav") + " --text " + d.file("moshi.txt") + " --seed 3" + mimi_args(),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("real-time factor"), std::string::npos) << out;
  mt::audio::Audio a = mt::audio::read_audio(d.file("moshi.wav"));
  EXPECT_EQ(a.sample_rate, 24000);
  EXPECT_EQ(a.channels(), 1);
  // 25 frames in; the tiny LM's max delay (1) holds back one: 24 frames of 1920 samples out.
  EXPECT_EQ(a.frames(), 24 * 1920);
  EXPECT_GT(std::filesystem::file_size(d.file("moshi.txt")), 1u);
  // Without a codec the mode refuses clearly.
  EXPECT_EQ(run(cli() + " generate --model " + d.file("tiny") + " --user " + d.file("user.wav"), &out), 1);
  EXPECT_NE(out.find("--user needs --mimi"), std::string::npos) << out;
}
