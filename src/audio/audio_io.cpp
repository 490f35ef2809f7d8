#include "audio/audio_io.h"

#include <sndfile.h>
#include <soxr.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <system_error>
#include <vector>

#include "util/error.h"

namespace mt::audio {

namespace {

// Closes the SNDFILE on every path out of a function.
struct SndFile {
  SNDFILE* f = nullptr;
  SndFile() = default;
  SndFile(const SndFile&) = delete;
  SndFile& operator=(const SndFile&) = delete;
  ~SndFile() {
    if (f) sf_close(f);
  }
};

// x as float32 [C, N] on the CPU, contiguous; [N] becomes [1, N]. `what` names the caller.
at::Tensor as_channels(const at::Tensor& x, const std::string& what) {
  MT_CHECK(x.defined(), what, ": undefined tensor");
  MT_CHECK(x.dim() == 1 || x.dim() == 2, what, ": expected samples of shape [C, N] or [N], got ",
           shape_str(x.sizes().vec()));
  MT_CHECK(at::isFloatingType(x.scalar_type()), what, ": expected floating-point samples, got ", x.scalar_type());
  at::Tensor y = x.dim() == 1 ? x.unsqueeze(0) : x;
  return y.to(at::kCPU, at::kFloat).contiguous();
}

// Opens path for reading into file and info; a file libsndfile cannot open is an error naming it.
void open_for_reading(const std::string& path, SndFile& file, SF_INFO& info) {
  info = SF_INFO{};
  file.f = sf_open(path.c_str(), SFM_READ, &info);
  if (!file.f) fail(path, ": cannot read audio: ", sf_strerror(nullptr));
}

}  // namespace

AudioFileInfo read_audio_info(const std::string& path) {
  SF_INFO info{};
  SndFile file;
  open_for_reading(path, file, info);
  AudioFileInfo r;
  r.sample_rate = info.samplerate;
  r.channels = info.channels;
  r.frames = info.frames;
  const int major = info.format & SF_FORMAT_TYPEMASK;
  r.wav = major == SF_FORMAT_WAV || major == SF_FORMAT_WAVEX;
  switch (info.format & SF_FORMAT_SUBMASK) {
    case SF_FORMAT_PCM_S8:
    case SF_FORMAT_PCM_U8: r.pcm_bits = 8; break;
    case SF_FORMAT_PCM_16: r.pcm_bits = 16; break;
    case SF_FORMAT_PCM_24: r.pcm_bits = 24; break;
    case SF_FORMAT_PCM_32: r.pcm_bits = 32; break;
    default: r.pcm_bits = 0;
  }
  return r;
}

Audio read_audio(const std::string& path) {
  SF_INFO info{};
  SndFile file;
  open_for_reading(path, file, info);
  MT_CHECK(info.channels > 0, path, ": audio file reports ", info.channels, " channels");
  MT_CHECK(info.samplerate > 0, path, ": audio file reports sample rate ", info.samplerate);
  MT_CHECK(info.frames > 0, path, ": audio file is empty (0 frames)");
  {
    // libsndfile reads a truncated wav as a shorter one and only says so in its log ("data : N (should
    // be M)"): a cut-off file is an error, not silently shorter audio.
    char log[4096] = {0};
    sf_command(file.f, SFC_GET_LOG_INFO, log, sizeof log);
    const std::string l(log);
    const auto at = l.find("\ndata : ");
    if (at != std::string::npos) {
      long long said = 0, has = 0;
      if (std::sscanf(l.c_str() + at + 8, "%lld (should be %lld)", &said, &has) == 2 && said > has)
        fail(path, ": truncated: the header announces ", said, " bytes of audio data, the file holds ", has);
    }
  }
  constexpr int64_t kMaxSamples = int64_t(1) << 40;  // 4 TiB of floats: a corrupt header, not audio
  MT_CHECK(info.frames <= kMaxSamples / info.channels, path, ": implausible length of ", info.frames, " frames x ",
           info.channels, " channels");
  // Keep integer data scaled to [-1, 1) (libsndfile's default, made explicit).
  sf_command(file.f, SFC_SET_NORM_FLOAT, nullptr, SF_TRUE);

  const int64_t channels = info.channels;
  at::Tensor interleaved = at::empty({info.frames, channels}, at::kFloat);
  float* data = interleaved.data_ptr<float>();
  int64_t done = 0;
  while (done < info.frames) {
    sf_count_t got = sf_readf_float(file.f, data + done * channels, info.frames - done);
    if (got <= 0) break;
    done += got;
  }
  const int err = sf_error(file.f);
  MT_CHECK(err == SF_ERR_NO_ERROR, path, ": read error after ", done, " of ", info.frames,
           " frames: ", sf_strerror(file.f));
  // Some compressed formats announce a length they then fall short of; keep what was decoded.
  MT_CHECK(done > 0, path, ": audio file is empty (no frame could be decoded of ", info.frames, ")");
  if (done < info.frames) interleaved = interleaved.narrow(0, 0, done);
  return Audio{interleaved.t().contiguous(), info.samplerate};
}

at::Tensor resample(const at::Tensor& x, int64_t from_rate, int64_t to_rate) {
  MT_CHECK(from_rate > 0 && to_rate > 0, "resample: sample rates must be positive, got ", from_rate, " -> ", to_rate);
  at::Tensor in = as_channels(x, "resample");
  const bool mono_1d = x.dim() == 1;
  if (from_rate == to_rate) return mono_1d ? in.squeeze(0) : in;

  const int64_t channels = in.size(0), n = in.size(1);
  MT_CHECK(n <= std::numeric_limits<int64_t>::max() / to_rate, "resample: input too long (", n, " samples)");
  // round(n * to / from) in integers.
  const int64_t n_out = (n * to_rate + from_rate / 2) / from_rate;
  at::Tensor out = at::zeros({channels, n_out}, at::kFloat);
  if (n == 0 || n_out == 0) return mono_1d ? out.squeeze(0) : out;

  const soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
  const soxr_quality_spec_t quality = soxr_quality_spec(SOXR_HQ, 0);
  const soxr_runtime_spec_t runtime = soxr_runtime_spec(1);
  for (int64_t c = 0; c < channels; ++c) {
    const float* src = in[c].data_ptr<float>();
    float* dst = out[c].data_ptr<float>();
    size_t idone = 0, odone = 0;
    soxr_error_t e = soxr_oneshot(double(from_rate), double(to_rate), 1, src, size_t(n), &idone, dst, size_t(n_out),
                                  &odone, &io, &quality, &runtime);
    MT_CHECK(e == nullptr, "resample ", from_rate, " -> ", to_rate, " Hz, channel ", c, ": soxr: ", e);
    // soxr flushes its filter at the end of the input; a sample or two short of the rounded length
    // stays zero.
    MT_CHECK(int64_t(odone) + 4 >= n_out, "resample ", from_rate, " -> ", to_rate, " Hz, channel ", c,
             ": soxr produced ", odone, " samples, expected ", n_out);
  }
  return mono_1d ? out.squeeze(0) : out;
}

Audio read_audio_24k(const std::string& path) {
  Audio a = read_audio(path);
  if (a.sample_rate != kMimiSampleRate) {
    try {
      a.samples = resample(a.samples, a.sample_rate, kMimiSampleRate);
    } catch (const Error& e) {
      fail(path, ": ", e.what());
    }
    a.sample_rate = kMimiSampleRate;
  }
  return a;
}

namespace {

void check_sample_rate(const std::string& path, int64_t sample_rate) {
  MT_CHECK(sample_rate > 0 && sample_rate <= std::numeric_limits<int>::max(), path,
           ": sample rate must be positive, got ", sample_rate);
}

// Writes a wav (`subtype`: SF_FORMAT_PCM_16 or SF_FORMAT_FLOAT) of n frames into path + ".tmp" through
// write_frames, which hands them to libsndfile and returns how many it took, then renames that file
// over path, so that a reader never sees half a file.
void write_wav_atomically(const std::string& path, int64_t channels, int64_t n, int64_t sample_rate, int subtype,
                          const std::function<sf_count_t(SNDFILE*)>& write_frames) {
  SF_INFO info{};
  info.samplerate = static_cast<int>(sample_rate);
  info.channels = static_cast<int>(channels);
  info.format = SF_FORMAT_WAV | subtype;
  MT_CHECK(sf_format_check(&info), path, ": libsndfile rejects wav with ", channels, " channels at ", sample_rate,
           " Hz");

  const std::string tmp = path + ".tmp";
  auto drop_tmp = [&] {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
  };
  {
    SndFile file;
    file.f = sf_open(tmp.c_str(), SFM_WRITE, &info);
    if (!file.f) fail(path, ": cannot create ", tmp, ": ", sf_strerror(nullptr));
    const sf_count_t written = write_frames(file.f);
    if (written != n) {
      std::string why = sf_strerror(file.f);
      sf_close(file.f);
      file.f = nullptr;
      drop_tmp();
      fail(path, ": wrote ", written, " of ", n, " frames to ", tmp, ": ", why);
    }
    int rc = sf_close(file.f);
    file.f = nullptr;
    if (rc != 0) {
      drop_tmp();
      fail(path, ": closing ", tmp, " failed: ", sf_error_number(rc));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    drop_tmp();
    fail(path, ": cannot rename ", tmp, " over it: ", ec.message());
  }
}

}  // namespace

void write_wav(const std::string& path, const at::Tensor& samples, int64_t sample_rate, WavFormat format) {
  check_sample_rate(path, sample_rate);
  at::Tensor x = as_channels(samples, path);
  const int64_t channels = x.size(0), n = x.size(1);
  MT_CHECK(channels > 0 && channels <= 1024, path, ": cannot write ", channels, " channels");
  at::Tensor interleaved = x.clamp(-1.0, 1.0).t().contiguous();  // [N, C]
  if (format == WavFormat::Pcm16) {
    // round(x * 32768), clamped: symmetric with the reader's q / 32768.
    at::Tensor q = (interleaved * 32768.0f).round_().clamp_(-32768, 32767).to(at::kShort);
    write_wav_atomically(path, channels, n, sample_rate, SF_FORMAT_PCM_16,
                         [&](SNDFILE* f) { return sf_writef_short(f, q.data_ptr<int16_t>(), n); });
  } else {
    write_wav_atomically(path, channels, n, sample_rate, SF_FORMAT_FLOAT,
                         [&](SNDFILE* f) { return sf_writef_float(f, interleaved.data_ptr<float>(), n); });
  }
}

void write_wav_pcm16(const std::string& path, const std::vector<int16_t>& samples, int64_t sample_rate,
                     int64_t channels) {
  check_sample_rate(path, sample_rate);
  MT_CHECK(channels > 0 && channels <= 1024, path, ": cannot write ", channels, " channels");
  MT_CHECK(int64_t(samples.size()) % channels == 0, path, ": ", samples.size(), " samples are not whole frames of ",
           channels, " channels");
  const int64_t n = int64_t(samples.size()) / channels;
  write_wav_atomically(path, channels, n, sample_rate, SF_FORMAT_PCM_16,
                       [&](SNDFILE* f) { return sf_writef_short(f, samples.data(), n); });
}

bool is_audio_file(const std::string& path) {
  std::string e = std::filesystem::path(path).extension().string();
  for (char& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return e == ".wav" || e == ".flac" || e == ".ogg";
}

}  // namespace mt::audio
