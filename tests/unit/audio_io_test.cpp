// Tests of audio I/O and resampling (src/audio/audio_io.{h,cpp}): wav round trips (16-bit and
// float, clipping, channel order, atomic replace, 16-bit samples written as they are), header info,
// flac and ogg files written with libsndfile directly, soxr resampling checked by projecting onto
// sin/cos at the tone's frequency, and the error messages for missing, non-audio and empty files.
#include "audio/audio_io.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sndfile.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "test_util.h"
#include "util/error.h"

namespace fs = std::filesystem;
using mt::audio::Audio;
using mt::test::TempDir;

namespace {

constexpr double kPi = 3.14159265358979323846;

using mt::test::expect_error;

// amplitude * sin(2 pi f n / rate + phase), float32 [n].
at::Tensor sine(double f, int64_t rate, int64_t n, double amplitude, double phase = 0.0) {
  at::Tensor t = at::arange(n, at::kDouble);
  return (amplitude * at::sin(2 * kPi * f / double(rate) * t + phase)).to(at::kFloat);
}

// Least-squares sin and cos coefficients of x[begin, end) at frequency f (end - begin should be a
// whole number of periods, so that sin and cos are orthogonal there).
std::pair<double, double> project(const at::Tensor& x, double f, int64_t rate, int64_t begin, int64_t end) {
  at::Tensor t = at::arange(begin, end, at::kDouble);
  at::Tensor seg = x.narrow(-1, begin, end - begin).to(at::kDouble);
  const double w = 2 * kPi * f / double(rate), m = double(end - begin);
  double s = (seg * at::sin(w * t)).sum().item<double>() * 2 / m;
  double c = (seg * at::cos(w * t)).sum().item<double>() * 2 / m;
  return {s, c};
}

// Writes interleaved frames of x [C, N] with libsndfile itself (not the code under test).
void write_with_sndfile(const std::string& path, const at::Tensor& x, int rate, int format) {
  SF_INFO info{};
  info.samplerate = rate;
  info.channels = static_cast<int>(x.size(0));
  info.format = format;
  ASSERT_TRUE(sf_format_check(&info)) << path;
  SNDFILE* f = sf_open(path.c_str(), SFM_WRITE, &info);
  ASSERT_NE(f, nullptr) << path << ": " << sf_strerror(nullptr);
  if ((format & SF_FORMAT_SUBMASK) == SF_FORMAT_PCM_16) {
    at::Tensor q = (x.t().contiguous() * 32768.0f).round().clamp(-32768, 32767).to(at::kShort);
    EXPECT_EQ(sf_writef_short(f, q.data_ptr<int16_t>(), x.size(1)), x.size(1));
  } else {
    at::Tensor xi = x.t().contiguous().to(at::kFloat);
    EXPECT_EQ(sf_writef_float(f, xi.data_ptr<float>(), x.size(1)), x.size(1));
  }
  EXPECT_EQ(sf_close(f), 0);
}

}  // namespace

// ---- wav round trips -------------------------------------------------------------------------------

TEST(AudioIo, WavPcm16RoundTripWithinOneStep) {
  TempDir d;
  at::manual_seed(1);
  at::Tensor x = at::rand({1, 5000}) * 2 - 1;
  x.index_put_({0, 0}, 1.0f);
  x.index_put_({0, 1}, -1.0f);
  x.index_put_({0, 2}, 0.0f);
  x.index_put_({0, 3}, 1.5f);   // clipped to 1 -> 32767 / 32768
  x.index_put_({0, 4}, -2.0f);  // clipped to -1
  const std::string path = d.file("a.wav");
  mt::audio::write_wav(path, x, 16000);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  Audio a = mt::audio::read_audio(path);
  EXPECT_EQ(a.sample_rate, 16000);
  ASSERT_EQ(a.samples.sizes(), (std::vector<int64_t>{1, 5000}));
  EXPECT_EQ(a.samples.scalar_type(), at::kFloat);
  EXPECT_LE(mt::test::max_abs_diff(a.samples, x.clamp(-1, 1)), 1.0 / 32768 + 1e-9);
  EXPECT_FLOAT_EQ(a.samples[0][3].item<float>(), 32767.0f / 32768.0f);
  EXPECT_FLOAT_EQ(a.samples[0][4].item<float>(), -1.0f);
  EXPECT_FLOAT_EQ(a.samples[0][2].item<float>(), 0.0f);
  // Values are multiples of 1/32768: the file really holds 16-bit samples.
  at::Tensor q = a.samples.to(at::kDouble) * 32768;
  EXPECT_EQ((q - q.round()).abs().max().item<double>(), 0.0);
  EXPECT_EQ(fs::file_size(path), 44u + 2u * 5000u);  // canonical 16-bit mono wav
}

TEST(AudioIo, WavFloatRoundTripIsExactAndOneDimensionalIsMono) {
  TempDir d;
  at::Tensor x = sine(440, 8000, 1000, 0.7);  // [N]
  const std::string path = d.file("f.wav");
  mt::audio::write_wav(path, x, 8000, mt::audio::WavFormat::Float32);
  Audio a = mt::audio::read_audio(path);
  ASSERT_EQ(a.samples.sizes(), (std::vector<int64_t>{1, 1000}));
  EXPECT_EQ(a.sample_rate, 8000);
  EXPECT_TRUE(at::equal(a.samples[0], x));
  EXPECT_DOUBLE_EQ(a.duration_sec(), 0.125);
}

TEST(AudioIo, StereoKeepsChannelOrder) {
  TempDir d;
  at::Tensor left = sine(300, 24000, 2400, 0.5);
  at::Tensor right = at::linspace(-0.25, 0.25, 2400, at::kFloat);
  at::Tensor x = at::stack({left, right});
  const std::string path = d.file("stereo.wav");
  mt::audio::write_wav(path, x, 24000);
  Audio a = mt::audio::read_audio(path);
  ASSERT_EQ(a.channels(), 2);
  ASSERT_EQ(a.frames(), 2400);
  EXPECT_LE(mt::test::max_abs_diff(a.samples[0], left), 1.0 / 32768);
  EXPECT_LE(mt::test::max_abs_diff(a.samples[1], right), 1.0 / 32768);
  EXPECT_GT(mt::test::max_abs_diff(a.samples[0], right), 0.1);  // not swapped
}

TEST(AudioIo, WriteReplacesExistingFileAtomically) {
  TempDir d;
  const std::string path = d.file("r.wav");
  mt::audio::write_wav(path, at::full({2, 100}, 0.5f), 24000);
  mt::audio::write_wav(path, at::full({1, 50}, -0.25f), 12000);
  Audio a = mt::audio::read_audio(path);
  EXPECT_EQ(a.channels(), 1);
  EXPECT_EQ(a.frames(), 50);
  EXPECT_EQ(a.sample_rate, 12000);
  EXPECT_FLOAT_EQ(a.samples.max().item<float>(), -0.25f);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(d.path)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"r.wav"});
}

TEST(AudioIo, WriteErrorsNameTheFile) {
  TempDir d;
  const std::string nodir = d.file("no/such/dir/x.wav");
  expect_error([&] { mt::audio::write_wav(nodir, at::zeros({1, 10}), 24000); }, {nodir});
  expect_error([&] { mt::audio::write_wav(d.file("b.wav"), at::zeros({1, 2, 3}), 24000); }, {"b.wav", "[1, 2, 3]"});
  expect_error([&] { mt::audio::write_wav(d.file("c.wav"), at::zeros({1, 10}), 0); }, {"c.wav", "sample rate"});
  EXPECT_FALSE(fs::exists(d.file("b.wav")));
}

TEST(AudioIo, WavPcm16FromSamplesIsExactAndCanonical) {
  TempDir d;
  const std::vector<int16_t> q = {0, 1, -1, 32767, -32768, 1234, -4321};
  const std::string path = d.file("q.wav");
  mt::audio::write_wav_pcm16(path, q, 22050);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(fs::file_size(path), 44u + 2u * q.size());  // canonical 16-bit mono wav, as espeak-ng writes
  Audio a = mt::audio::read_audio(path);
  EXPECT_EQ(a.sample_rate, 22050);
  ASSERT_EQ(a.samples.sizes(), (std::vector<int64_t>{1, int64_t(q.size())}));
  for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(a.samples[0][int64_t(i)].item<float>() * 32768.0f, float(q[i])) << i;
  // The same values through write_wav give the same bytes.
  at::Tensor x = at::empty({int64_t(q.size())}, at::kFloat);
  for (size_t i = 0; i < q.size(); ++i) x[int64_t(i)] = float(q[i]) / 32768.0f;
  mt::audio::write_wav(d.file("t.wav"), x, 22050);
  EXPECT_EQ(mt::test::slurp(path), mt::test::slurp(d.file("t.wav")));

  // Stereo: interleaved frames, left first.
  mt::audio::write_wav_pcm16(d.file("s.wav"), {100, -100, 200, -200}, 8000, 2);
  Audio s = mt::audio::read_audio(d.file("s.wav"));
  ASSERT_EQ(s.samples.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(s.samples[0][1].item<float>() * 32768.0f, 200.0f);
  EXPECT_EQ(s.samples[1][0].item<float>() * 32768.0f, -100.0f);

  expect_error([&] { mt::audio::write_wav_pcm16(d.file("odd.wav"), {1, 2, 3}, 8000, 2); }, {"odd.wav", "frames"});
  expect_error([&] { mt::audio::write_wav_pcm16(d.file("r.wav"), {1}, 0); }, {"r.wav", "sample rate"});
  EXPECT_FALSE(fs::exists(d.file("odd.wav")));
}

TEST(AudioIo, InfoReadsTheHeaderOnly) {
  TempDir d;
  mt::audio::write_wav(d.file("p.wav"), at::zeros({2, 300}), 16000);
  auto i = mt::audio::read_audio_info(d.file("p.wav"));
  EXPECT_TRUE(i.wav);
  EXPECT_EQ(i.pcm_bits, 16);
  EXPECT_EQ(i.channels, 2);
  EXPECT_EQ(i.frames, 300);
  EXPECT_EQ(i.sample_rate, 16000);
  mt::audio::write_wav(d.file("f.wav"), at::zeros({1, 10}), 8000, mt::audio::WavFormat::Float32);
  i = mt::audio::read_audio_info(d.file("f.wav"));
  EXPECT_TRUE(i.wav);
  EXPECT_EQ(i.pcm_bits, 0);
  write_with_sndfile(d.file("a.flac"), at::zeros({1, 100}), 44100, SF_FORMAT_FLAC | SF_FORMAT_PCM_24);
  i = mt::audio::read_audio_info(d.file("a.flac"));
  EXPECT_FALSE(i.wav);
  EXPECT_EQ(i.pcm_bits, 24);
  EXPECT_EQ(i.sample_rate, 44100);
  // An empty wav has a header to read; read_audio refuses it, read_audio_info does not.
  write_with_sndfile(d.file("e.wav"), at::zeros({1, 0}), 24000, SF_FORMAT_WAV | SF_FORMAT_PCM_16);
  EXPECT_EQ(mt::audio::read_audio_info(d.file("e.wav")).frames, 0);
  expect_error([&] { mt::audio::read_audio_info(d.file("missing.wav")); }, {"missing.wav", "cannot read audio"});
}

// ---- other formats, written by libsndfile directly ---------------------------------------------------

TEST(AudioIo, FlacRoundTripIsLossless) {
  TempDir d;
  at::Tensor x = at::stack({sine(1000, 44100, 4410, 0.5), sine(250, 44100, 4410, -0.3, 0.5)});
  x = (x * 32768).round() / 32768;  // exactly representable in 16 bits
  const std::string path = d.file("a.flac");
  write_with_sndfile(path, x, 44100, SF_FORMAT_FLAC | SF_FORMAT_PCM_16);
  Audio a = mt::audio::read_audio(path);
  EXPECT_EQ(a.sample_rate, 44100);
  ASSERT_EQ(a.samples.sizes(), (std::vector<int64_t>{2, 4410}));
  EXPECT_EQ(mt::test::max_abs_diff(a.samples, x), 0.0);
}

TEST(AudioIo, OggVorbisRoundTripKeepsTheTone) {
  TempDir d;
  const int64_t rate = 48000, n = 48000;
  at::Tensor x = at::stack({sine(1000, rate, n, 0.5), sine(500, rate, n, 0.25)});
  const std::string path = d.file("a.ogg");
  write_with_sndfile(path, x, int(rate), SF_FORMAT_OGG | SF_FORMAT_VORBIS);
  Audio a = mt::audio::read_audio(path);
  EXPECT_EQ(a.sample_rate, rate);
  ASSERT_EQ(a.channels(), 2);
  EXPECT_NEAR(double(a.frames()), double(n), 2048);  // lossy codec; length within a block
  // Lossy, but each channel keeps its tone's amplitude and phase (9600 = 200 periods of 1 kHz).
  auto [s0, c0] = project(a.samples[0], 1000, rate, 9600, 38400);
  auto [s1, c1] = project(a.samples[1], 500, rate, 9600, 38400);
  EXPECT_NEAR(s0, 0.5, 0.02);
  EXPECT_NEAR(c0, 0.0, 0.02);
  EXPECT_NEAR(s1, 0.25, 0.02);
  EXPECT_NEAR(c1, 0.0, 0.02);
  auto [x01, y01] = project(a.samples[0], 500, rate, 9600, 38400);  // left has no 500 Hz
  EXPECT_LT(std::hypot(x01, y01), 0.02);
}

// ---- errors ------------------------------------------------------------------------------------------

TEST(AudioIo, MissingFileErrorNamesIt) {
  TempDir d;
  const std::string path = d.file("missing.wav");
  expect_error([&] { mt::audio::read_audio(path); }, {path, "cannot read audio"});
  expect_error([&] { mt::audio::read_audio_24k(path); }, {path});
}

TEST(AudioIo, NonAudioFileErrorNamesIt) {
  TempDir d;
  const std::string path = d.file("notes.wav");
  {
    std::ofstream f(path);
    f << "this is a text file, not a RIFF/WAVE file\n";
  }
  expect_error([&] { mt::audio::read_audio(path); }, {path, "cannot read audio"});
}

TEST(AudioIo, EmptyWavErrorNamesIt) {
  TempDir d;
  const std::string path = d.file("empty.wav");
  write_with_sndfile(path, at::zeros({1, 0}), 24000, SF_FORMAT_WAV | SF_FORMAT_PCM_16);
  ASSERT_TRUE(fs::exists(path));
  expect_error([&] { mt::audio::read_audio(path); }, {path, "empty"});
}

// ---- resampling --------------------------------------------------------------------------------------

TEST(AudioResample, Sine48kTo24kKeepsFrequencyAmplitudeAndPhase) {
  const int64_t n = 48000;
  at::Tensor x = at::stack({sine(1000, 48000, n, 0.5), sine(1000, 48000, n, 0.25, kPi / 2)});
  at::Tensor y = mt::audio::resample(x, 48000, 24000);
  ASSERT_EQ(y.dim(), 2);
  EXPECT_EQ(y.size(0), 2);
  EXPECT_NEAR(double(y.size(1)), n / 2.0, 2);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  // Interior of 900 whole periods (24 samples each at 24 kHz), away from the filter's edges.
  auto [s0, c0] = project(y[0], 1000, 24000, 1200, 22800);
  auto [s1, c1] = project(y[1], 1000, 24000, 1200, 22800);
  EXPECT_NEAR(s0, 0.5, 2e-3);
  EXPECT_NEAR(c0, 0.0, 2e-3);  // no delay: soxr compensates its filter's latency
  EXPECT_NEAR(s1, 0.0, 2e-3);
  EXPECT_NEAR(c1, 0.25, 2e-3);  // second channel kept its own phase
  // Sample by sample, the interior is the 24 kHz sine.
  at::Tensor ref = sine(1000, 24000, y.size(1), 0.5);
  EXPECT_LT(mt::test::max_abs_diff(y[0].narrow(0, 1200, 21600), ref.narrow(0, 1200, 21600)), 5e-3);
  // Energy at another frequency stays ~0.
  auto [s2, c2] = project(y[0], 1500, 24000, 1200, 22800);
  EXPECT_LT(std::hypot(s2, c2), 2e-3);
}

TEST(AudioResample, RemovesContentAboveTheNewNyquist) {
  // 15 kHz at 48 kHz cannot be represented at 24 kHz (Nyquist 12 kHz): it must be filtered, not aliased
  // to 9 kHz.
  at::Tensor x = sine(15000, 48000, 48000, 0.5).unsqueeze(0);
  at::Tensor y = mt::audio::resample(x, 48000, 24000);
  at::Tensor mid = y[0].narrow(0, 1200, 21600);
  EXPECT_LT(mid.abs().max().item<float>(), 5e-3);
  auto [s, c] = project(y[0], 9000, 24000, 1200, 22800);
  EXPECT_LT(std::hypot(s, c), 1e-3);
}

TEST(AudioResample, UpsamplesAndKeepsRankAndIdentity) {
  at::Tensor x = sine(440, 16000, 16000, 0.8);  // [N]
  at::Tensor y = mt::audio::resample(x, 16000, 24000);
  ASSERT_EQ(y.dim(), 1);
  EXPECT_NEAR(double(y.size(0)), 24000, 2);
  // 6000 samples at 24 kHz are exactly 110 periods of 440 Hz.
  auto [s, c] = project(y, 440, 24000, 6000, 12000);
  EXPECT_NEAR(s, 0.8, 3e-3);
  EXPECT_NEAR(c, 0.0, 3e-3);
  at::Tensor z = mt::audio::resample(x.unsqueeze(0), 24000, 24000);
  EXPECT_TRUE(at::equal(z, x.unsqueeze(0)));
  EXPECT_EQ(mt::audio::resample(at::zeros({2, 0}), 48000, 24000).sizes(), (std::vector<int64_t>{2, 0}));
}

TEST(AudioResample, RejectsBadArguments) {
  expect_error([] { mt::audio::resample(at::zeros({1, 2, 3}), 48000, 24000); }, {"resample", "[1, 2, 3]"});
  expect_error([] { mt::audio::resample(at::zeros({1, 10}), 0, 24000); }, {"resample", "positive"});
  expect_error([] { mt::audio::resample(at::zeros({1, 10}, at::kLong), 48000, 24000); }, {"floating"});
}

TEST(AudioIo, ReadAudio24kResamples) {
  TempDir d;
  const std::string path = d.file("s48.wav");
  at::Tensor x = at::stack({sine(1000, 48000, 9600, 0.5), sine(2000, 48000, 9600, 0.25)});
  mt::audio::write_wav(path, x, 48000, mt::audio::WavFormat::Float32);
  Audio a = mt::audio::read_audio_24k(path);
  EXPECT_EQ(a.sample_rate, 24000);
  ASSERT_EQ(a.channels(), 2);
  EXPECT_NEAR(double(a.frames()), 4800, 2);
  auto [s0, c0] = project(a.samples[0], 1000, 24000, 960, 3840);
  auto [s1, c1] = project(a.samples[1], 2000, 24000, 960, 3840);
  EXPECT_NEAR(s0, 0.5, 3e-3);
  EXPECT_NEAR(s1, 0.25, 3e-3);
  // Already 24 kHz: returned as read.
  const std::string p24 = d.file("s24.wav");
  mt::audio::write_wav(p24, x, 24000, mt::audio::WavFormat::Float32);
  EXPECT_TRUE(at::equal(mt::audio::read_audio_24k(p24).samples, x));
}
