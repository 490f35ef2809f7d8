#pragma once
// Ogg/Opus streaming both ways, as Kyutai's Moshi `/api/chat` websocket protocol carries audio: 24 kHz
// mono Opus packets in Ogg pages (RFC 7845). OpusWriter turns the model's PCM into the bytes the server
// sends (one 40 ms packet per page, as Kyutai's Python server does with sphn); OpusReader turns whatever
// bytes a client sends (whole pages, several pages, or pieces of pages) back into PCM. The reader faces
// untrusted clients, so it skips garbage, bounds its memory and reports bad packets as mt::Error.
//
// libopus / libogg state lives behind a pointer (pimpl): the objects are movable without copying
// self-describing C structs, and this header does not pull in <opus.h> / <ogg/ogg.h>.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mt::audio {

// What the writer puts in its OpusHead page (RFC 7845 section 5.1). The values copy Kyutai's Python
// server (sphn 0.2.1's OpusStreamWriter), so clients see the header they were written against.
constexpr int kOpusHeadPreSkip = 3840;       // 48 kHz samples
constexpr int kOpusHeadInputRate = 48000;    // Hz, informational only
constexpr int kOpusGranulePerPacket = 1920;  // one 40 ms packet in 48 kHz units (RFC 7845 granule rate)
constexpr const char* kOpusVendor = "moshi-ttt";

// Encodes float PCM into an Ogg/Opus byte stream, one 40 ms Opus packet per Ogg page.
class OpusWriter {
 public:
  // sample_rate: one of the rates libopus encodes (8000, 12000, 16000, 24000, 48000); throws otherwise.
  // The Ogg stream serial is drawn at random here, so two writers make distinguishable logical streams.
  explicit OpusWriter(int sample_rate = 24000);
  ~OpusWriter();
  OpusWriter(OpusWriter&&) noexcept;
  OpusWriter& operator=(OpusWriter&&) noexcept;
  OpusWriter(const OpusWriter&) = delete;
  OpusWriter& operator=(const OpusWriter&) = delete;

  // Buffers n mono samples (clipped to [-1, 1]; NaN becomes 0), encodes every complete 40 ms packet
  // (960 samples at 24 kHz) and returns the bytes of the pages made by this call: the OpusHead and
  // OpusTags pages come first in the first call that returns audio. Returns "" while less than one
  // packet is buffered. Samples left over wait for the next call (there is no final flush: Kyutai's
  // streams never end with a partial packet or an EOS page either).
  std::string append_pcm(const float* pcm, size_t n);

  int sample_rate() const;
  int packet_samples() const;  // samples per Opus packet (40 ms) at sample_rate()
  uint32_t serial() const;     // Ogg stream serial number of this writer's logical stream

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Decodes an Ogg/Opus byte stream that arrives in arbitrary pieces into mono float PCM.
//
// Errors (all mt::Error): an Opus packet the decoder rejects (message names the packet and libopus's
// reason, and contains "opus"), a packet claiming more than 120 ms, and more than max_buffered_bytes
// pending in libogg without a complete packet. After a throw the reader stays usable: the bad packet
// (or, for the buffer limit, every pending byte) is dropped, and the next append_bytes continues with
// the packets and pages still buffered. What the throwing call lost: the PCM it had decoded before
// the error, and its bytes after the 64 KiB chunk that was being read (a websocket message holds one
// or two pages, far below that, so in practice only the bad packet goes).
class OpusReader {
 public:
  // sample_rate: the decoder's output rate (8000, 12000, 16000, 24000 or 48000): libopus decodes any
  // sender's rate to it. max_buffered_bytes bounds the bytes held without a complete packet: the
  // unparsed tail in the sync layer plus a packet continued across pages. libogg itself never keeps
  // more than one page (<= 65307 bytes) unparsed, so the default 1 MiB limit mainly stops a packet
  // that a client continues over page after page forever; a limit below 65307 also rejects legal
  // pages, and is for tests.
  explicit OpusReader(int sample_rate = 24000, size_t max_buffered_bytes = size_t(1) << 20);
  ~OpusReader();
  OpusReader(OpusReader&&) noexcept;
  OpusReader& operator=(OpusReader&&) noexcept;
  OpusReader(const OpusReader&) = delete;
  OpusReader& operator=(const OpusReader&) = delete;

  // Feeds n bytes and returns the PCM of every packet completed by them (often empty). Bytes that are
  // not part of a valid page (bad capture pattern or CRC) are skipped and counted; OpusHead/OpusTags
  // packets are skipped; a BOS page (a new logical stream) restarts the stream and the decoder; pages
  // of another serial that are not BOS are skipped and counted. The first page seen starts a stream
  // even without the BOS flag (a client that lost its first page still gets decoded). The pre-skip of
  // the OpusHead is not applied, as in Kyutai's servers: the output is continuous from the first packet.
  std::vector<float> append_bytes(const uint8_t* data, size_t n);

  size_t skipped_bytes() const;  // garbage bytes skipped by the sync layer + bytes of foreign pages
  int64_t packets() const;       // audio packets decoded (header and rejected packets not counted)
  int sample_rate() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace mt::audio
