// Real speech through the fine-tuning data path: a two-speaker stereo dialogue synthesised at test time
// with espeak-ng (Debian) with known word timings -> alignments JSON -> moshi-finetune JSONL -> Mimi
// tokens (cached) + text stream -> a few training steps of a tiny LM with a hybrid TTT layer.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "audio/audio_io.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "text/tokenizer.h"

#if defined(MOSHI_TTT_SPM_TRAINER) && __has_include(<sentencepiece_trainer.h>)
#include <sentencepiece_trainer.h>
#define MT_E2E_SPM_TRAINER 1
#endif

namespace fs = std::filesystem;
using mt::test::cli;
using mt::test::run;
using mt::test::TempDir;

namespace {

struct Word {
  std::string text;
  int channel;  // 0 = Moshi (left), 1 = user (right)
  double start;
};

// Synthesises every word alone (22.05 kHz, espeak-ng) and places it at its start time; returns the
// stereo signal and fills each word's end time.
at::Tensor synthesize(const TempDir& d, const std::vector<Word>& words, std::vector<double>& ends, int64_t& rate) {
  std::vector<at::Tensor> clips;
  rate = 0;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string w = d.file("w" + std::to_string(i) + ".wav");
    const char* voice = words[i].channel == 0 ? "en+m3" : "en+f3";
    std::string out;
    if (run("espeak-ng -v " + std::string(voice) + " -s 170 -w " + w + " '" + words[i].text + "'", &out) != 0)
      return {};
    mt::audio::Audio a = mt::audio::read_audio(w);
    rate = a.sample_rate;
    clips.push_back(a.samples[0]);
  }
  double total = 0;
  for (size_t i = 0; i < words.size(); ++i)
    total = std::max(total, words[i].start + static_cast<double>(clips[i].size(0)) / static_cast<double>(rate));
  at::Tensor st = at::zeros({2, static_cast<int64_t>(std::ceil((total + 0.3) * static_cast<double>(rate)))});
  ends.clear();
  for (size_t i = 0; i < words.size(); ++i) {
    const int64_t s = static_cast<int64_t>(words[i].start * static_cast<double>(rate));
    st[words[i].channel].narrow(0, s, clips[i].size(0)).add_(clips[i]);
    ends.push_back(words[i].start + static_cast<double>(clips[i].size(0)) / static_cast<double>(rate));
  }
  return st;
}

#ifdef MT_E2E_SPM_TRAINER
// Trains a SentencePiece model (ids: unk 0, bos 1, eos 2, pad 3) small enough for the tiny LM's 64 text
// ids on one sentence repeated; returns the model-config line that points at it.
std::string spm_tokenizer_line(const TempDir& d, const std::string& sentence, int vocab) {
  {
    std::ofstream c(d.file("corpus.txt"));
    for (int i = 0; i < 300; ++i) c << sentence << "\n";
  }
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      std::unordered_map<std::string, std::string>{{"input", d.file("corpus.txt")},
                                                   {"model_prefix", d.file("spm")},
                                                   {"vocab_size", std::to_string(vocab)},
                                                   {"hard_vocab_limit", "false"},
                                                   {"model_type", "unigram"},
                                                   {"unk_id", "0"},
                                                   {"bos_id", "1"},
                                                   {"eos_id", "2"},
                                                   {"pad_id", "3"},
                                                   {"minloglevel", "2"},
                                                   {"num_threads", "1"}});
  EXPECT_TRUE(status.ok()) << status.ToString();
  return "\n  tokenizer_path: " + d.file("spm.model");
}
#endif

}  // namespace

TEST(AudioData, EspeakDialogueEncodesCachesAndTrains) {
  if (run("command -v espeak-ng >/dev/null") != 0)
    GTEST_SKIP() << "espeak-ng not installed (scripts/setup.sh installs it)";
  TempDir d;
  const std::vector<Word> words = {
      {"hello", 0, 0.10}, {"there", 1, 0.90}, {"moshi", 0, 1.70}, {"speaks", 0, 2.40}, {"again", 1, 3.20}};
  std::vector<double> ends;
  int64_t rate = 0;
  at::Tensor stereo = synthesize(d, words, ends, rate);
  ASSERT_TRUE(stereo.defined()) << "espeak-ng failed";
  ASSERT_EQ(rate, 22050);  // not 24 kHz: the pipeline resamples
  fs::create_directories(d.file("ds/audio"));
  mt::audio::write_wav(d.file("ds/audio/dialogue.wav"), stereo, rate);
  // Alignments of channel 0 (as moshi-finetune's annotate.py: every word of the main speaker).
  nlohmann::json al = nlohmann::json::array();
  for (size_t i = 0; i < words.size(); ++i)
    if (words[i].channel == 0) al.push_back({words[i].text, {words[i].start, ends[i]}, "SPEAKER_MAIN"});
  std::ofstream(d.file("ds/audio/dialogue.json")) << nlohmann::json{{"alignments", al}}.dump();
  const double dur = static_cast<double>(stereo.size(1)) / static_cast<double>(rate);
  std::ofstream(d.file("ds/data.jsonl")) << nlohmann::json{{"path", "audio/dialogue.wav"}, {"duration", dur}}.dump()
                                         << "\n";

  // A SentencePiece model small enough for the tiny LM's 64 text ids.
  std::string tok_line;
#ifdef MT_E2E_SPM_TRAINER
  tok_line = spm_tokenizer_line(d, "hello there moshi speaks again and the user talks back to it", 48);
  ASSERT_FALSE(HasFailure()) << "SentencePiece training failed";
#endif
  const std::string ref = mt::test::reference_dir() + "/mimi/mimi_small";
  {
    std::ofstream f(d.file("train.yaml"));
    std::ifstream h(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml");
    std::stringstream hs;
    hs << h.rdbuf();
    f << hs.str() << "\nmoshi_paths:\n  mimi_path: " << ref << "/model.safetensors\n  mimi_config_path: " << ref
      << "/config.json" << tok_line << "\nrun_dir: " << d.file("run")
      << "\ndata:\n  train_data: " << d.file("ds/data.jsonl") << "\n  token_cache: " << d.file("cache")
      << "\nduration_sec: 1.6\nbatch_size: 1\nmax_steps: 3\nseed: 1\noptim:\n  lr: 0.002\nparam_dtype: float32\n"
         "gradient_checkpointing: false\nlog_freq: 1\n";
  }
  std::string out;
  ASSERT_EQ(run(cli() + " train --quiet --config " + d.file("train.yaml"), &out), 0) << out;
  EXPECT_NE(out.find("1 encoded now, 0 from the cache"), std::string::npos) << out;
  // Three steps with finite losses.
  int steps = 0;
  std::ifstream m(d.file("run/metrics.jsonl"));
  for (std::string line; std::getline(m, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.value("kind", "") != "train") continue;
    ++steps;
    EXPECT_TRUE(j["loss"].is_number()) << line;
  }
  EXPECT_EQ(steps, 3);
  // The cached shard: [1 + 2 + 2, ceil(duration * 12.5)]; text tokens at the Moshi words' start frames.
  std::string shard;
  for (const auto& e : fs::recursive_directory_iterator(d.file("cache")))
    if (e.path().extension() == ".safetensors") shard = e.path().string();
  ASSERT_FALSE(shard.empty());
  at::Tensor codes = mt::io::load_all(shard).at("codes");
  ASSERT_EQ(codes.size(0), 5);
  EXPECT_EQ(codes.size(1), static_cast<int64_t>(std::ceil(dur * 24000 / 1920.0)));
  at::Tensor text = codes[0];
#ifdef MT_E2E_SPM_TRAINER
  mt::text::Tokenizer tok(d.file("spm.model"));
  for (size_t i = 0; i < words.size(); ++i) {
    const int64_t f = static_cast<int64_t>(std::floor(words[i].start * 12.5));
    if (words[i].channel == 0)
      EXPECT_EQ(text[f].item<int64_t>(), tok.encode_word(words[i].text).at(0)) << words[i].text << " at frame " << f;
    else
      EXPECT_TRUE(text[f].item<int64_t>() == 3 || text[f].item<int64_t>() == 0) << "user word in Moshi's text stream";
  }
#endif
  // Moshi's channel is silent where only the user speaks and vice versa: the two code groups differ.
  EXPECT_FALSE(codes.narrow(0, 1, 2).equal(codes.narrow(0, 3, 2)));
  // A second run reads the cache instead of encoding again.
  ASSERT_EQ(run(cli() + " train --quiet --config " + d.file("train.yaml") + " --set run_dir=" + d.file("run2"), &out),
            0)
      << out;
  EXPECT_NE(out.find("0 encoded now, 1 from the cache"), std::string::npos) << out;
}

// Audio-only long-form data (LibriLight style): a mono file with no alignments beside it. The text
// stream is all padding, the mono audio is on both audio streams (or silence on the user's with
// data.user_stream: silence), and training reads the file continuously (shuffle off).
TEST(AudioData, MonoWithoutAlignmentsIsAudioOnlyOnBothStreams) {
  TempDir d;
  // 4 s of a gliding tone with a slow amplitude envelope, mono, 16 kHz (resampled by the pipeline).
  const int64_t rate = 16000, n = 4 * rate;
  at::Tensor t = at::arange(n, at::kDouble) / static_cast<double>(rate);
  at::Tensor mono = (0.3 * at::sin(2 * M_PI * (220.0 + 60.0 * t) * t) * (0.6 + 0.4 * at::sin(2 * M_PI * 0.7 * t)))
                        .to(at::kFloat)
                        .unsqueeze(0);
  fs::create_directories(d.file("ds"));
  mt::audio::write_wav(d.file("ds/long.wav"), mono, rate);
  std::ofstream(d.file("ds/data.jsonl")) << nlohmann::json{{"path", "long.wav"}, {"duration", 4.0}}.dump() << "\n";
  std::string tok_line;
#ifdef MT_E2E_SPM_TRAINER
  tok_line = spm_tokenizer_line(d, "a long recording read aloud from a book without any alignments", 40);
  ASSERT_FALSE(HasFailure()) << "SentencePiece training failed";
#endif
  const std::string ref = mt::test::reference_dir() + "/mimi/mimi_small";
  auto write = [&](const std::string& name, const std::string& user_stream) {
    std::ofstream f(d.file(name));
    std::ifstream h(std::string(MT_SOURCE_DIR) + "/configs/tiny-hybrid.yaml");
    std::stringstream hs;
    hs << h.rdbuf();
    f << hs.str() << "\nmoshi_paths:\n  mimi_path: " << ref << "/model.safetensors\n  mimi_config_path: " << ref
      << "/config.json" << tok_line << "\nrun_dir: " << d.file("run_" + user_stream)
      << "\ndata:\n  train_data: " << d.file("ds/data.jsonl") << "\n  token_cache: " << d.file("cache_" + user_stream)
      << "\n  shuffle: false\n  user_stream: " << user_stream
      << "\nduration_sec: 1.6\nbatch_size: 1\nmax_steps: 3\nseed: 1\noptim:\n  lr: 0.002\nparam_dtype: float32\n"
      << "gradient_checkpointing: false\nlog_freq: 1\n";
  };
  auto shard_of = [&](const std::string& cache) {
    for (const auto& e : fs::recursive_directory_iterator(d.file(cache)))
      if (e.path().extension() == ".safetensors") return mt::io::load_all(e.path().string()).at("codes");
    return at::Tensor();
  };
  std::string out;
  write("copy.yaml", "copy");
  ASSERT_EQ(run(cli() + " train --config " + d.file("copy.yaml"), &out), 0) << out;
#ifdef MT_E2E_SPM_TRAINER
  EXPECT_NE(out.find("1 of 1 files have no alignments beside them: audio-only"), std::string::npos) << out;
#endif
  // Three 20-frame sequences of the one 50-frame file: the state runs on through them.
  EXPECT_NE(out.find("TTT updates per layer"), std::string::npos) << out;
  at::Tensor copy = shard_of("cache_copy");
  ASSERT_TRUE(copy.defined());
  ASSERT_EQ(copy.size(0), 5);
  EXPECT_EQ(copy.size(1), 50);
  EXPECT_TRUE(copy[0].eq(3).all().item<bool>()) << "text stream must be all padding";
  EXPECT_TRUE(copy.narrow(0, 1, 2).equal(copy.narrow(0, 3, 2))) << "mono audio on both streams";

  write("silence.yaml", "silence");
  ASSERT_EQ(run(cli() + " train --quiet --config " + d.file("silence.yaml"), &out), 0) << out;
  at::Tensor sil = shard_of("cache_silence");
  ASSERT_TRUE(sil.defined());
  EXPECT_TRUE(sil.narrow(0, 1, 2).equal(copy.narrow(0, 1, 2))) << "Moshi's stream is the audio";
  EXPECT_FALSE(sil.narrow(0, 3, 2).equal(copy.narrow(0, 3, 2))) << "the user's stream is silence";

  // Bad option value: named.
  write("bad.yaml", "nobody");
  EXPECT_NE(run(cli() + " train --quiet --config " + d.file("bad.yaml"), &out), 0);
  EXPECT_NE(out.find("data.user_stream"), std::string::npos) << out;
}
