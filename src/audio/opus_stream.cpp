// Ogg/Opus streaming (see opus_stream.h). Every libopus / libogg return code is checked: a failure in
// our own encoding path is a bug or an out-of-memory and throws; a failure caused by the peer's bytes
// either skips them (framing) or throws with the packet's number (decoding).
#include "audio/opus_stream.h"

#include <ogg/ogg.h>
#include <opus.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>

#include "util/error.h"

namespace mt::audio {
namespace {

bool opus_rate_ok(int rate) { return rate == 8000 || rate == 12000 || rate == 16000 || rate == 24000 || rate == 48000; }

void put_le16(std::string& s, uint16_t v) {
  s.push_back(char(v & 0xff));
  s.push_back(char(v >> 8));
}
void put_le32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
}

// RFC 7845 section 5.1: identification header of a mono stream, channel mapping family 0.
std::string opus_head() {
  std::string h = "OpusHead";
  h.push_back(char(1));  // version
  h.push_back(char(1));  // channels
  put_le16(h, uint16_t(kOpusHeadPreSkip));
  put_le32(h, uint32_t(kOpusHeadInputRate));
  put_le16(h, 0);        // output gain (Q7.8 dB)
  h.push_back(char(0));  // mapping family 0: mono or stereo, no mapping table
  return h;
}

// RFC 7845 section 5.2: comment header with our vendor string and no user comments.
std::string opus_tags() {
  std::string t = "OpusTags";
  const std::string vendor = kOpusVendor;
  put_le32(t, uint32_t(vendor.size()));
  t += vendor;
  put_le32(t, 0);  // user comment list length
  return t;
}

// A stream serial that differs between writers (random_device may be unavailable in some sandboxes:
// fall back on the clock; either way nothing depends on the value beyond telling streams apart).
uint32_t draw_serial() {
  uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  try {
    std::random_device rd;
    seed ^= (uint64_t(rd()) << 32) ^ rd();
  } catch (const std::exception&) {}
  std::mt19937_64 g(seed);
  return uint32_t(g());
}

bool starts_with(const ogg_packet& op, const char* magic) {
  const size_t m = std::strlen(magic);
  return op.bytes >= long(m) && std::memcmp(op.packet, magic, m) == 0;
}

// Most bytes one Opus packet may carry as payload and still be encoded by us: libopus's recommended
// encode buffer (a 40 ms packet is at most 2 * 1275 bytes plus framing).
constexpr int kMaxEncodedPacket = 4000;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// OpusWriter

struct OpusWriter::State {
  int rate = 0;
  int packet = 0;  // samples per 40 ms packet
  uint32_t serial = 0;
  OpusEncoder* enc = nullptr;
  ogg_stream_state os{};
  bool os_ready = false;
  bool headers_done = false;
  int64_t granule = 0;       // 48 kHz samples written so far (RFC 7845 granule position)
  std::vector<float> pcm;    // samples waiting for a complete packet (< packet of them between calls)
  std::vector<float> frame;  // one clipped packet of input
  std::vector<unsigned char> bytes;

  ~State() {
    if (enc) opus_encoder_destroy(enc);
    if (os_ready) ogg_stream_clear(&os);
  }

  // One packet in, its page(s) out: flushing after every packet gives one packet per page, as sphn
  // does, so a client's per-page latency is one packet (40 ms).
  void put_packet(const unsigned char* data, long n, bool bos, int64_t granulepos, std::string& out) {
    ogg_packet op{};
    op.packet = const_cast<unsigned char*>(data);  // libogg copies it; its API is not const-correct
    op.bytes = n;
    op.b_o_s = bos ? 1 : 0;
    op.e_o_s = 0;
    op.granulepos = granulepos;
    op.packetno = os.packetno;
    MT_CHECK(ogg_stream_packetin(&os, &op) == 0, "ogg_stream_packetin failed (", n, " bytes)");
    ogg_page og;
    while (ogg_stream_flush(&os, &og) != 0) {
      out.append(reinterpret_cast<const char*>(og.header), size_t(og.header_len));
      out.append(reinterpret_cast<const char*>(og.body), size_t(og.body_len));
    }
    MT_CHECK(ogg_stream_check(&os) == 0, "libogg stream state broken after writing a page");
  }
};

OpusWriter::OpusWriter(int sample_rate) : s_(std::make_unique<State>()) {
  MT_CHECK(opus_rate_ok(sample_rate), "OpusWriter: sample rate ", sample_rate,
           " Hz is not one libopus encodes (8000, 12000, 16000, 24000, 48000)");
  State& s = *s_;
  s.rate = sample_rate;
  s.packet = sample_rate / 25;  // 40 ms
  s.serial = draw_serial();
  // VOIP, as Kyutai's Rust server encodes: what we send is the model's speech, and VOIP tunes the
  // encoder for intelligible speech at the bitrate libopus picks (the web client's AUDIO mode is for
  // its microphone, where music or noise may be present). The unit test's 440 Hz + 1 kHz round trip gives
  // 16.7 dB SNR with VOIP (20.0 dB with AUDIO), at about 35 kb/s either way.
  int err = OPUS_OK;
  s.enc = opus_encoder_create(sample_rate, 1, OPUS_APPLICATION_VOIP, &err);
  MT_CHECK(err == OPUS_OK && s.enc, "opus_encoder_create(", sample_rate, " Hz, mono): ", opus_strerror(err));
  MT_CHECK(ogg_stream_init(&s.os, int(s.serial)) == 0, "ogg_stream_init failed");
  s.os_ready = true;
  s.frame.resize(size_t(s.packet));
  s.bytes.resize(kMaxEncodedPacket);
}

OpusWriter::~OpusWriter() = default;
OpusWriter::OpusWriter(OpusWriter&&) noexcept = default;
OpusWriter& OpusWriter::operator=(OpusWriter&&) noexcept = default;

std::string OpusWriter::append_pcm(const float* pcm, size_t n) {
  MT_CHECK(s_, "OpusWriter: use after move");
  MT_CHECK(pcm || n == 0, "OpusWriter::append_pcm: null samples");
  State& s = *s_;
  s.pcm.insert(s.pcm.end(), pcm, pcm + n);
  std::string out;
  const size_t packet = size_t(s.packet);
  size_t used = 0;
  for (; s.pcm.size() - used >= packet; used += packet) {
    for (size_t i = 0; i < packet; ++i) {
      const float x = s.pcm[used + i];
      s.frame[i] = std::isnan(x) ? 0.f : std::clamp(x, -1.f, 1.f);
    }
    const int len = opus_encode_float(s.enc, s.frame.data(), s.packet, s.bytes.data(), kMaxEncodedPacket);
    MT_CHECK(len > 0, "opus_encode_float (", s.packet, " samples at ", s.rate, " Hz): ", opus_strerror(len));
    if (!s.headers_done) {
      // RFC 7845: OpusHead alone on the BOS page, OpusTags on its own page(s), granule 0 for both.
      const std::string head = opus_head(), tags = opus_tags();
      s.put_packet(reinterpret_cast<const unsigned char*>(head.data()), long(head.size()), true, 0, out);
      s.put_packet(reinterpret_cast<const unsigned char*>(tags.data()), long(tags.size()), false, 0, out);
      s.headers_done = true;
    }
    s.granule += kOpusGranulePerPacket;
    s.put_packet(s.bytes.data(), len, false, s.granule, out);
  }
  s.pcm.erase(s.pcm.begin(), s.pcm.begin() + ptrdiff_t(used));
  return out;
}

int OpusWriter::sample_rate() const { return s_ ? s_->rate : 0; }
int OpusWriter::packet_samples() const { return s_ ? s_->packet : 0; }
uint32_t OpusWriter::serial() const { return s_ ? s_->serial : 0; }

// ---------------------------------------------------------------------------------------------------
// OpusReader

struct OpusReader::State {
  int rate = 0;
  int max_samples = 0;  // 120 ms at rate: the longest packet Opus allows
  size_t max_buffered = 0;
  OpusDecoder* dec = nullptr;
  ogg_sync_state oy{};
  bool oy_ready = false;
  ogg_stream_state os{};
  bool os_ready = false;
  bool have_stream = false;  // os follows a logical stream (its serial is os.serialno)
  size_t skipped = 0;
  int64_t decoded = 0;  // audio packets decoded
  int64_t seen = 0;     // audio packets taken from the stream (decoded or rejected): names packets in errors
  std::vector<float> scratch;

  ~State() {
    if (dec) opus_decoder_destroy(dec);
    if (os_ready) ogg_stream_clear(&os);
    if (oy_ready) ogg_sync_clear(&oy);
  }

  void decode(const ogg_packet& op, std::vector<float>& out) {
    if (starts_with(op, "OpusHead") || starts_with(op, "OpusTags")) return;
    const int64_t index = seen++;
    MT_CHECK(op.bytes > 0, "opus: audio packet ", index, " is empty");
    MT_CHECK(op.bytes <= INT_MAX, "opus: audio packet ", index, " has ", op.bytes, " bytes");
    const auto len = opus_int32(op.bytes);
    // Asking first bounds the output before decoding (and names a malformed TOC precisely).
    const int ns = opus_packet_get_nb_samples(op.packet, len, rate);
    MT_CHECK(ns >= 0, "opus_packet_get_nb_samples rejected audio packet ", index, " (", len,
             " bytes): ", opus_strerror(ns));
    MT_CHECK(ns <= max_samples, "opus: audio packet ", index, " claims ", ns, " samples at ", rate,
             " Hz, more than 120 ms");
    const int got = opus_decode_float(dec, op.packet, len, scratch.data(), max_samples, 0);
    MT_CHECK(got >= 0, "opus_decode rejected audio packet ", index, " (", len, " bytes): ", opus_strerror(got));
    out.insert(out.end(), scratch.begin(), scratch.begin() + got);
    ++decoded;
  }

  // Takes every complete packet and page out of libogg. ogg_sync_pageseek (not pageout) so that the
  // number of skipped bytes is known.
  void drain(std::vector<float>& out) {
    for (;;) {
      if (have_stream) {
        ogg_packet op;
        for (int r; (r = ogg_stream_packetout(&os, &op)) != 0;) {
          if (r < 0) continue;  // a hole (lost or skipped page): the next packet still decodes
          decode(op, out);
        }
      }
      ogg_page og;
      const long r = ogg_sync_pageseek(&oy, &og);
      if (r == 0) return;  // need more bytes
      if (r < 0) {         // not a page here (capture pattern or CRC): skipped
        skipped += size_t(-r);
        continue;
      }
      const int serial = ogg_page_serialno(&og);
      if (ogg_page_bos(&og) || !have_stream) {
        // A new logical stream (a chained stream or a client that reconnected its encoder): drop
        // what the old one had pending and start the decoder afresh.
        MT_CHECK(ogg_stream_reset_serialno(&os, serial) == 0, "ogg_stream_reset_serialno failed");
        MT_CHECK(opus_decoder_ctl(dec, OPUS_RESET_STATE) == OPUS_OK, "opus_decoder_ctl(OPUS_RESET_STATE) failed");
        have_stream = true;
      } else if (serial != int(os.serialno)) {
        skipped += size_t(r);  // a page of some other logical stream: not ours to decode
        continue;
      }
      if (ogg_stream_pagein(&os, &og) != 0) skipped += size_t(r);  // e.g. an unknown page version
    }
  }

  size_t pending() const {
    size_t p = size_t(oy.fill - oy.returned);
    if (have_stream) p += size_t(os.body_fill - os.body_returned);
    return p;
  }
};

OpusReader::OpusReader(int sample_rate, size_t max_buffered_bytes) : s_(std::make_unique<State>()) {
  MT_CHECK(opus_rate_ok(sample_rate), "OpusReader: sample rate ", sample_rate,
           " Hz is not one libopus decodes to (8000, 12000, 16000, 24000, 48000)");
  MT_CHECK(max_buffered_bytes > 0, "OpusReader: max_buffered_bytes must be positive");
  State& s = *s_;
  s.rate = sample_rate;
  s.max_samples = sample_rate / 1000 * 120;
  s.max_buffered = max_buffered_bytes;
  int err = OPUS_OK;
  s.dec = opus_decoder_create(sample_rate, 1, &err);
  MT_CHECK(err == OPUS_OK && s.dec, "opus_decoder_create(", sample_rate, " Hz, mono): ", opus_strerror(err));
  MT_CHECK(ogg_sync_init(&s.oy) == 0, "ogg_sync_init failed");
  s.oy_ready = true;
  MT_CHECK(ogg_stream_init(&s.os, 0) == 0, "ogg_stream_init failed");  // serial set by the first page
  s.os_ready = true;
  s.scratch.resize(size_t(s.max_samples));
}

OpusReader::~OpusReader() = default;
OpusReader::OpusReader(OpusReader&&) noexcept = default;
OpusReader& OpusReader::operator=(OpusReader&&) noexcept = default;

std::vector<float> OpusReader::append_bytes(const uint8_t* data, size_t n) {
  MT_CHECK(s_, "OpusReader: use after move");
  MT_CHECK(data || n == 0, "OpusReader::append_bytes: null data");
  State& s = *s_;
  // Bytes go to libogg in chunks with a drain after each, so one huge message never sits in libogg's
  // buffer whole: memory stays bounded by the chunk plus max_buffered_bytes.
  constexpr size_t kChunk = size_t(1) << 16;
  std::vector<float> out;
  size_t off = 0;
  do {
    const size_t chunk = std::min(n - off, kChunk);
    if (chunk > 0) {
      char* buf = ogg_sync_buffer(&s.oy, long(chunk));
      MT_CHECK(buf, "ogg_sync_buffer(", chunk, ") failed");
      std::memcpy(buf, data + off, chunk);
      MT_CHECK(ogg_sync_wrote(&s.oy, long(chunk)) == 0, "ogg_sync_wrote(", chunk, ") failed");
      off += chunk;
    }
    s.drain(out);
    const size_t p = s.pending();
    if (p > s.max_buffered) {
      // Drop everything pending so the reader can go on with fresh bytes.
      ogg_sync_reset(&s.oy);
      ogg_stream_reset(&s.os);
      mt::fail("Ogg/Opus input: ", p, " bytes pending without a complete packet (limit ", s.max_buffered,
               "); not an Ogg/Opus stream, or a packet that never ends");
    }
  } while (off < n);
  return out;
}

size_t OpusReader::skipped_bytes() const { return s_ ? s_->skipped : 0; }
int64_t OpusReader::packets() const { return s_ ? s_->decoded : 0; }
int OpusReader::sample_rate() const { return s_ ? s_->rate : 0; }

}  // namespace mt::audio
