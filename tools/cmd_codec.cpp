// moshi-ttt encode / decode: audio <-> Mimi codes.
//   encode IN.(wav|flac|ogg) OUT.safetensors   codes [channels, K, T] int64 ("codes"), every channel
//                                              encoded on its own (stereo: left = Moshi, right = user)
//   decode IN.safetensors OUT.wav              the codes back to 24 kHz audio, one channel per row
// The codec: --mimi WEIGHTS.safetensors [--mimi-config config.json] (default: the released config).
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "audio/audio_io.h"
#include "io/codes_file.h"
#include "io/safetensors.h"
#include "mimi/mimi.h"
#include "tools/commands.h"
#include "util/error.h"
#include "util/runtime.h"

namespace mt::cli {

namespace {

struct CodecOpts {
  std::string in, out, mimi, mimi_config, device = "cpu";
  int64_t num_codebooks = 0;
  bool streaming = false;
};

void add_codec_options(CLI::App* sub, CodecOpts& o) {
  sub->add_option("--mimi", o.mimi, "Mimi weights (.safetensors, Kyutai's tensor names)")->required();
  sub->add_option("--mimi-config", o.mimi_config,
                  "Mimi config JSON (the reference's dict; default: the released model)");
  sub->add_option("--device", o.device, "cpu or cuda")->capture_default_str();
  sub->add_flag("--streaming", o.streaming, "run frame by frame (80 ms) as a live stream would");
}

mimi::Mimi open_mimi(const CodecOpts& o) {
  mimi::Mimi m = mimi::load_mimi(o.mimi, o.mimi_config);
  if (o.num_codebooks > 0) {
    MT_CHECK(o.num_codebooks <= m->cfg.quantizer.n_q, "--num-codebooks ", o.num_codebooks, ": the codec has ",
             m->cfg.quantizer.n_q);
    m->cfg.num_codebooks = o.num_codebooks;
  }
  m->to(at::Device(o.device));
  m->quantizer->refresh();
  return m;
}

}  // namespace

void add_codec(CLI::App& app) {
  auto e = std::make_shared<CodecOpts>();
  auto* enc = app.add_subcommand("encode", "audio file -> Mimi codes (.safetensors)");
  enc->add_option("in", e->in, "audio file (wav, flac, ogg; any rate, mono or stereo)")->required();
  enc->add_option("out", e->out, "output .safetensors (codes [channels, K, T])")->required();
  enc->add_option("--num-codebooks", e->num_codebooks, "codebooks to keep (default: the config's, 8 for Moshi)");
  add_codec_options(enc, *e);
  set_handler(enc, [e]() {
    mimi::Mimi m = open_mimi(*e);
    audio::Audio a = audio::read_audio_24k(e->in);
    MT_CHECK(m->cfg.sample_rate == audio::kMimiSampleRate, e->mimi, ": codec sample rate ", m->cfg.sample_rate,
             ", only 24000 is supported");
    at::InferenceMode im;
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor wav = a.samples.unsqueeze(1).to(at::Device(e->device));  // [C, 1, N]: channels as a batch
    at::Tensor codes;
    if (e->streaming) {
      const int64_t fs = m->cfg.frame_size();
      const int64_t n = (wav.size(2) + fs - 1) / fs;
      wav = at::constant_pad_nd(wav, {0, n * fs - wav.size(2)});
      mimi::MimiState st = m->make_state(wav.size(0));
      std::vector<at::Tensor> parts;
      for (int64_t f = 0; f < n; ++f) parts.push_back(m->encode_step(wav.narrow(2, f * fs, fs), st));
      codes = at::cat(parts, 2);
    } else {
      codes = m->encode(wav);
    }
    codes = codes.cpu().contiguous();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    io::save(e->out, std::vector<std::pair<std::string, at::Tensor>>{{"codes", codes}},
             {{"source", e->in},
              {"sample_rate", std::to_string(m->cfg.sample_rate)},
              {"frame_rate", str(m->cfg.frame_rate)},
              {"channels", std::to_string(codes.size(0))}});
    std::printf("%s: %lld channel(s), %.2f s -> codes [%lld, %lld, %lld] in %s; %.1fx real time\n", e->in.c_str(),
                (long long)a.channels(), a.duration_sec(), (long long)codes.size(0), (long long)codes.size(1),
                (long long)codes.size(2), e->out.c_str(), a.duration_sec() / std::max(secs, 1e-9));
    return 0;
  });

  auto d = std::make_shared<CodecOpts>();
  auto* dec = app.add_subcommand("decode", "Mimi codes (.safetensors) -> 24 kHz wav");
  dec->add_option("in", d->in, ".safetensors with 'codes' [channels, K, T] or [K, T]")->required();
  dec->add_option("out", d->out, "output .wav")->required();
  add_codec_options(dec, *d);
  set_handler(dec, [d]() {
    mimi::Mimi m = open_mimi(*d);
    at::Tensor codes = io::read_codes(d->in);  // [C, K, T] int64
    at::InferenceMode im;
    const auto t0 = std::chrono::steady_clock::now();
    codes = codes.to(at::Device(d->device));
    at::Tensor wav;
    m->check_code_range(codes, d->in);
    if (d->streaming) {
      mimi::MimiState st = m->make_state(codes.size(0));
      std::vector<at::Tensor> parts;
      for (int64_t t = 0; t < codes.size(2); ++t) parts.push_back(m->decode_step(codes.narrow(2, t, 1), st));
      wav = at::cat(parts, 2);
    } else {
      wav = m->decode(codes);
    }
    wav = wav.squeeze(1).cpu();  // [C, N]
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    audio::write_wav(d->out, wav, m->cfg.sample_rate);
    const double dur = static_cast<double>(wav.size(1)) / static_cast<double>(m->cfg.sample_rate);
    std::printf("%s: codes [%lld, %lld, %lld] -> %.2f s of audio in %s; %.1fx real time\n", d->in.c_str(),
                (long long)codes.size(0), (long long)codes.size(1), (long long)codes.size(2), dur, d->out.c_str(),
                dur / std::max(secs, 1e-9));
    return 0;
  });
}

}  // namespace mt::cli
