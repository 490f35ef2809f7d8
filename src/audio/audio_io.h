#pragma once
// Audio files and sample-rate conversion: reading any format libsndfile knows (wav, flac, ogg, ...)
// as float32 [channels, frames] (or only its header), resampling with libsoxr (high quality, linear
// phase), and an atomic 16-bit PCM / float wav writer. Every error is an mt::Error that names the file.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mt::audio {

// Mimi's and moshi-finetune's sample rate.
constexpr int64_t kMimiSampleRate = 24000;

struct Audio {
  at::Tensor samples;       // float32 [channels, frames], CPU, contiguous
  int64_t sample_rate = 0;  // Hz
  int64_t channels() const { return samples.defined() ? samples.size(0) : 0; }
  int64_t frames() const { return samples.defined() ? samples.size(1) : 0; }
  double duration_sec() const { return sample_rate > 0 ? double(frames()) / double(sample_rate) : 0.0; }
};

// Reads a whole file; integer formats are scaled to [-1, 1) (16-bit: q / 32768), float formats are
// returned as stored (not clipped). Throws for a missing or unreadable file (with libsndfile's
// reason), an unknown format and a file without frames.
Audio read_audio(const std::string& path);

// What a file's header says, without decoding its samples.
struct AudioFileInfo {
  int64_t sample_rate = 0;  // Hz
  int64_t channels = 0;
  int64_t frames = 0;
  bool wav = false;  // a RIFF/WAVE file (plain or WAVE_FORMAT_EXTENSIBLE)
  int pcm_bits = 0;  // 8, 16, 24 or 32 for integer PCM samples; 0 for float, compressed or other encodings
};

// Reads only the header. Throws, naming the file, for a missing or unreadable file and an unknown
// format (as read_audio does); an empty file is not an error here (frames = 0).
AudioFileInfo read_audio_info(const std::string& path);

// Resamples every channel of x (float [C, N], or [N] treated as one channel) from from_rate to
// to_rate with soxr's high-quality filter. Output: float32 [C, round(N * to_rate / from_rate)] on
// the CPU (same rank as x). Equal rates return x converted to that form, without filtering (it may
// share storage with x).
at::Tensor resample(const at::Tensor& x, int64_t from_rate, int64_t to_rate);

// read_audio then resample to 24 kHz (moshi-finetune's input).
Audio read_audio_24k(const std::string& path);

// True for the file kinds the tools treat as audio: .wav, .flac or .ogg, in any letter case.
bool is_audio_file(const std::string& path);

enum class WavFormat { Pcm16, Float32 };

// Writes samples ([C, N] or [N] = mono; any float dtype or device) as a wav file, clipped to
// [-1, 1]. Pcm16 stores round(x * 32768) clamped to [-32768, 32767], so reading it back differs by
// at most 1/32768. Atomic: writes path + ".tmp", then renames it over path.
void write_wav(const std::string& path, const at::Tensor& samples, int64_t sample_rate,
               WavFormat format = WavFormat::Pcm16);

// Writes 16-bit PCM samples as they are (interleaved frames of `channels`; mono by default) as a wav file,
// atomically like write_wav. For code that works on the 16-bit values themselves; no tensor involved.
void write_wav_pcm16(const std::string& path, const std::vector<int16_t>& samples, int64_t sample_rate,
                     int64_t channels = 1);

}  // namespace mt::audio
