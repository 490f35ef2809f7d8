#include "train/audio_data.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "audio/audio_io.h"
#include "io/safetensors.h"
#include "mimi/mimi.h"
#include "text/tokenizer.h"
#include "util/error.h"
#include "util/hash.h"

namespace fs = std::filesystem;

namespace mt::train {

namespace {

using hash::fnv;
using hash::fnv_str;
using hash::hex;
using hash::kFnvOffset;

}  // namespace

uint64_t file_hash(const std::string& path) { return hash::file_hash(path); }

std::string prepare_audio_tokens(const std::string& jsonl, const AudioDataConfig& c) {
  MT_CHECK(!c.mimi_weights.empty(), jsonl, ": an audio dataset needs the codec: set moshi_paths.mimi_path");
  MT_CHECK(!c.cache_dir.empty(), "audio data: no cache folder");
  const std::vector<AudioEntry> entries = read_audio_index(jsonl);
  // The codec and layout part of every key.
  uint64_t codec = kFnvOffset;
  const uint64_t wh = file_hash(c.mimi_weights);
  codec = fnv(codec, &wh, 8);
  if (!c.mimi_config.empty()) codec = fnv_str(codec, hex(file_hash(c.mimi_config)));
  codec = fnv_str(codec, c.tokenizer.empty() ? "no-tokenizer" : hex(file_hash(c.tokenizer)));
  codec = fnv_str(codec, str(c.moshi_codebooks, "/", c.user_codebooks, "/", c.text.frame_rate, "/", c.text.pad, "/",
                             c.text.epad, "/", c.text.in_word_pad, "/", c.text.keep_main_only, "/", c.text.main_speaker,
                             "/mono-user:", c.user_stream));
  MT_CHECK(c.user_stream == "copy" || c.user_stream == "silence", "data.user_stream: '", c.user_stream,
           "' (expected copy or silence)");
  const fs::path dir = fs::path(c.cache_dir) / hex(codec);
  fs::create_directories(dir / "shards");

  std::unique_ptr<mimi::Mimi> codec_model;  // loaded on the first miss
  std::unique_ptr<text::Tokenizer> tok;
  if (!c.tokenizer.empty()) tok = std::make_unique<text::Tokenizer>(c.tokenizer);
  nlohmann::json index_lines = nlohmann::json::array();
  std::string index;
  int64_t encoded = 0, cached = 0, audio_only = 0;
  double audio_done = 0, secs_done = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const AudioEntry& e = entries[i];
    MT_CHECK(fs::exists(e.path), jsonl, ": entry ", i + 1, ": audio file ", e.path, " not found");
    const fs::path align = fs::path(e.path).replace_extension(".json");
    uint64_t key = fnv(kFnvOffset, &codec, 8);
    const uint64_t ah = file_hash(e.path);
    key = fnv(key, &ah, 8);
    // No alignments beside the audio: an audio-only entry (text stream all padding).
    const bool aligned = tok && fs::exists(align);
    if (tok && !aligned) ++audio_only;
    if (aligned) {
      const uint64_t jh = file_hash(align.string());
      key = fnv(key, &jh, 8);
    } else {
      key = fnv_str(key, "audio-only");
    }
    const std::string shard = "shards/" + hex(key) + ".safetensors";
    if (fs::exists(dir / shard)) {
      ++cached;
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      if (!codec_model) {
        codec_model = std::make_unique<mimi::Mimi>(mimi::load_mimi(c.mimi_weights, c.mimi_config));
        auto& m = *codec_model;
        MT_CHECK(std::max(c.moshi_codebooks, c.user_codebooks) <= m->cfg.quantizer.n_q, c.mimi_weights,
                 ": the LM needs ", std::max(c.moshi_codebooks, c.user_codebooks), " codebooks, the codec has ",
                 m->cfg.quantizer.n_q);
        m->cfg.num_codebooks = std::max(c.moshi_codebooks, c.user_codebooks);
        m->to(at::Device(c.device));
        m->quantizer->refresh();
      }
      auto& m = *codec_model;
      audio::Audio a = audio::read_audio_24k(e.path);
      MT_CHECK(a.channels() == 2 || a.channels() == 1, e.path,
               ": expected stereo audio (left = Moshi, right = user) or mono, got ", a.channels(), " channels");
      at::InferenceMode im;
      at::Tensor samples = a.samples;  // [channels, N]
      if (a.channels() == 1)
        samples = at::cat({samples, c.user_stream == "silence" ? at::zeros_like(samples) : samples}, 0);
      at::Tensor codes = m->encode(samples.unsqueeze(1).to(at::Device(c.device))).cpu();  // [2, K, F]
      const int64_t frames = codes.size(2);
      std::vector<int64_t> text_stream(static_cast<size_t>(frames), c.text.pad);
      if (aligned) {
        auto words = text::parse_alignments_json(align.string());
        text_stream = text::build_token_stream(
            words, frames, [&](const std::string& w) { return tok->encode_word(w); }, c.text);
      }
      at::Tensor text = at::tensor(text_stream, at::kLong).unsqueeze(0);
      at::Tensor all =
          at::cat({text, codes[0].narrow(0, 0, c.moshi_codebooks), codes[1].narrow(0, 0, c.user_codebooks)}, 0);
      io::save((dir / shard).string(), std::vector<std::pair<std::string, at::Tensor>>{{"codes", all.contiguous()}},
               {{"source", e.path}});
      ++encoded;
      audio_done += a.duration_sec();
      secs_done += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!c.quiet) {
        const double rate = audio_done / std::max(secs_done, 1e-9);
        std::fprintf(stderr, "[data] encoding %zu/%zu %s: %.1f s of audio, %.1fx real time\n", i + 1, entries.size(),
                     e.id.c_str(), a.duration_sec(), rate);
      }
    }
    index += nlohmann::json{{"path", shard}, {"file_id", e.id}}.dump() + "\n";
  }
  const std::string index_path = (dir / ("index-" + hex(fnv_str(kFnvOffset, index)) + ".jsonl")).string();
  if (!fs::exists(index_path)) io::atomic_write(index_path, index);
  std::fprintf(stderr, "[data] %s: %zu files, %lld encoded now, %lld from the cache (%s)\n", jsonl.c_str(),
               entries.size(), (long long)encoded, (long long)cached, dir.string().c_str());
  if (audio_only)
    std::fprintf(stderr,
                 "[data] %s: %lld of %zu files have no alignments beside them: audio-only, text stream all padding\n",
                 jsonl.c_str(), (long long)audio_only, entries.size());
  return index_path;
}

}  // namespace mt::train
