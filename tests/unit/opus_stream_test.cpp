// Tests of the Ogg/Opus streaming codec (src/audio/opus_stream.{h,cpp}) that the Moshi websocket
// protocol uses both ways: the writer's page layout (OpusHead / OpusTags / one 40 ms packet per page,
// granule positions) read back from the raw bytes, a tone round trip with its SNR after aligning for
// the codec delay, byte-piece independence of the reader, garbage skipping, rejected Opus packets,
// the pending-bytes limit, and a second logical stream.
#include "audio/opus_stream.h"

#include <gtest/gtest.h>
#include <ogg/ogg.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"
#include "util/error.h"

using mt::audio::OpusReader;
using mt::audio::OpusWriter;
using mt::test::expect_error;

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kRate = 24000;
constexpr size_t kPacket = 960;  // 40 ms at 24 kHz
constexpr size_t kCall = 1920;   // one 80 ms model frame per append_pcm call, as the server sends

// One Ogg page parsed straight from the bytes (RFC 3533 layout), independently of libogg.
struct Page {
  std::string bytes;  // the whole page
  std::string body;
  uint8_t flags = 0;  // 1 continued, 2 BOS, 4 EOS
  int64_t granule = 0;
  uint32_t serial = 0;
  uint32_t pageno = 0;
  std::vector<uint8_t> lacing;
};

uint64_t le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | uint8_t(s[at + size_t(i)]);
  return v;
}

// Splits bytes that must be whole pages back to back; a malformed layout fails the test.
std::vector<Page> split_pages(const std::string& s) {
  std::vector<Page> pages;
  size_t at = 0;
  while (at < s.size()) {
    if (s.size() - at < 27 || s.compare(at, 4, "OggS") != 0 || s[at + 4] != 0) {
      ADD_FAILURE() << "no Ogg page header at byte " << at;
      return pages;
    }
    Page p;
    p.flags = uint8_t(s[at + 5]);
    p.granule = int64_t(le(s, at + 6, 8));
    p.serial = uint32_t(le(s, at + 14, 4));
    p.pageno = uint32_t(le(s, at + 18, 4));
    const size_t nseg = uint8_t(s[at + 26]);
    size_t body = 0;
    for (size_t i = 0; i < nseg; ++i) {
      p.lacing.push_back(uint8_t(s[at + 27 + i]));
      body += p.lacing.back();
    }
    const size_t len = 27 + nseg + body;
    if (at + len > s.size()) {
      ADD_FAILURE() << "page at byte " << at << " runs past the end";
      return pages;
    }
    p.bytes = s.substr(at, len);
    p.body = s.substr(at + 27 + nseg, body);
    pages.push_back(p);
    at += len;
  }
  return pages;
}

// Packets that end in a page: lacing values below 255 (each closes one packet).
int packets_ending(const Page& p) {
  int n = 0;
  for (uint8_t v : p.lacing) n += v < 255;
  return n;
}

std::vector<float> tones(size_t n, std::initializer_list<double> freqs, double amp = 0.3) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    double v = 0;
    for (double f : freqs) v += amp * std::sin(2 * kPi * f * double(i) / kRate);
    x[i] = float(v);
  }
  return x;
}

// The writer's output, one string per append_pcm call of `call` samples.
std::vector<std::string> encode(OpusWriter& w, const std::vector<float>& x, size_t call = kCall) {
  std::vector<std::string> out;
  for (size_t at = 0; at < x.size(); at += call)
    out.push_back(w.append_pcm(x.data() + at, std::min(call, x.size() - at)));
  return out;
}

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (const auto& p : parts) s += p;
  return s;
}

std::vector<float> feed(OpusReader& r, const std::string& bytes) {
  return r.append_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

std::vector<float> feed_all(OpusReader& r, const std::vector<std::string>& msgs) {
  std::vector<float> y;
  for (const auto& m : msgs) {
    auto part = feed(r, m);
    y.insert(y.end(), part.begin(), part.end());
  }
  return y;
}

// Lag (0..max_lag) of y against x by plain cross-correlation, then SNR of y[i + lag] against x[i],
// skipping the first packet (the encoder's start-up).
struct Aligned {
  size_t lag = 0;
  double snr_db = 0;
};
Aligned align_snr(const std::vector<float>& x, const std::vector<float>& y, size_t max_lag) {
  Aligned a;
  double best = -1e300;
  for (size_t lag = 0; lag <= max_lag && lag < y.size(); ++lag) {
    double c = 0;
    for (size_t i = 0; i + lag < y.size() && i < x.size(); ++i) c += double(x[i]) * y[i + lag];
    if (c > best) best = c, a.lag = lag;
  }
  double sig = 0, err = 0;
  for (size_t i = kPacket; i + a.lag < y.size() && i < x.size(); ++i) {
    sig += double(x[i]) * x[i];
    const double d = double(y[i + a.lag]) - x[i];
    err += d * d;
  }
  a.snr_db = 10 * std::log10(sig / std::max(err, 1e-30));
  return a;
}

// A page of `serial` holding one packet, made with libogg as a sender would; not BOS.
std::string make_page(uint32_t serial, uint32_t pageno, int64_t granule, const std::vector<uint8_t>& packet) {
  ogg_stream_state os;
  EXPECT_EQ(ogg_stream_init(&os, int(serial)), 0);
  os.pageno = long(pageno);
  os.b_o_s = 1;  // the BOS flag goes on a stream's first page only: this one continues a stream
  ogg_packet op{};
  op.packet = const_cast<unsigned char*>(packet.data());
  op.bytes = long(packet.size());
  op.granulepos = granule;
  op.packetno = 2;
  EXPECT_EQ(ogg_stream_packetin(&os, &op), 0);
  std::string out;
  ogg_page og;
  while (ogg_stream_flush(&os, &og) != 0) {
    out.append(reinterpret_cast<const char*>(og.header), size_t(og.header_len));
    out.append(reinterpret_cast<const char*>(og.body), size_t(og.body_len));
  }
  ogg_stream_clear(&os);
  return out;
}

}  // namespace

// 2 s of 440 Hz + 1 kHz at 24 kHz in 80 ms calls: header pages from the bytes, 2 one-packet pages per
// call with granules advancing by 1920, and the decoded audio matches the input after the codec delay.
TEST(OpusStream, WriterPagesAndToneRoundTrip) {
  const auto x = tones(2 * kRate, {440.0, 1000.0});
  OpusWriter w;
  EXPECT_EQ(w.packet_samples(), int(kPacket));
  const auto msgs = encode(w, x);
  ASSERT_EQ(msgs.size(), x.size() / kCall);

  const auto first = split_pages(msgs[0]);
  ASSERT_EQ(first.size(), 4u);  // OpusHead, OpusTags, 2 audio pages
  const Page& head = first[0];
  EXPECT_EQ(msgs[0].compare(0, 4, "OggS"), 0);
  EXPECT_EQ(head.flags, 2);  // BOS
  EXPECT_EQ(head.granule, 0);
  ASSERT_EQ(head.body.size(), 19u);
  EXPECT_EQ(head.body.compare(0, 8, "OpusHead"), 0);
  EXPECT_EQ(uint8_t(head.body[8]), 1);      // version
  EXPECT_EQ(uint8_t(head.body[9]), 1);      // channels
  EXPECT_EQ(le(head.body, 10, 2), 3840u);   // pre-skip
  EXPECT_EQ(le(head.body, 12, 4), 48000u);  // input rate
  EXPECT_EQ(le(head.body, 16, 2), 0u);      // gain
  EXPECT_EQ(uint8_t(head.body[18]), 0);     // mapping family
  const Page& tags = first[1];
  EXPECT_EQ(tags.flags, 0);
  EXPECT_EQ(tags.granule, 0);
  ASSERT_GE(tags.body.size(), 16u);
  EXPECT_EQ(tags.body.compare(0, 8, "OpusTags"), 0);
  const size_t vlen = le(tags.body, 8, 4);
  ASSERT_EQ(tags.body.size(), 8 + 4 + vlen + 4);
  EXPECT_EQ(tags.body.substr(12, vlen), "moshi-ttt");
  EXPECT_EQ(le(tags.body, 12 + vlen, 4), 0u);

  int64_t granule = 0;
  uint32_t pageno = 1;
  for (size_t c = 0; c < msgs.size(); ++c) {
    auto pages = split_pages(msgs[c]);
    if (c == 0) pages.erase(pages.begin(), pages.begin() + 2);
    ASSERT_EQ(pages.size(), 2u) << "call " << c;
    for (const Page& p : pages) {
      granule += 1920;
      EXPECT_EQ(p.granule, granule) << "call " << c;
      EXPECT_EQ(p.serial, head.serial);
      EXPECT_EQ(p.pageno, ++pageno);
      EXPECT_EQ(p.flags, 0);
      EXPECT_EQ(packets_ending(p), 1) << "one packet per page";
      EXPECT_LT(p.lacing.back(), 255);  // the packet ends in this page
    }
  }

  OpusReader r;
  const auto y = feed_all(r, msgs);
  EXPECT_EQ(r.packets(), int64_t(x.size() / kPacket));
  EXPECT_EQ(r.skipped_bytes(), 0u);
  EXPECT_LE(std::abs(int64_t(y.size()) - int64_t(x.size())), int64_t(kPacket));
  const Aligned a = align_snr(x, y, 2000);
  std::printf("[opus] 440 Hz + 1 kHz round trip: lag %zu samples, SNR %.2f dB\n", a.lag, a.snr_db);
  EXPECT_GT(a.snr_db, 10.0) << "lag " << a.lag;
}

// The reader's output does not depend on how the bytes are cut.
TEST(OpusStream, RandomPiecesDecodeLikeWholeMessages) {
  OpusWriter w;
  const auto msgs = encode(w, tones(kRate, {440.0, 1000.0}));
  OpusReader whole;
  const auto ref = feed_all(whole, msgs);
  ASSERT_EQ(ref.size(), size_t(kRate));

  const std::string all = join(msgs);
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> len(1, 97);
  OpusReader pieces;
  std::vector<float> y;
  size_t calls = 0;
  for (size_t at = 0; at < all.size(); ++calls) {
    const size_t n = std::min(len(rng), all.size() - at);
    auto part = pieces.append_bytes(reinterpret_cast<const uint8_t*>(all.data()) + at, n);
    y.insert(y.end(), part.begin(), part.end());
    at += n;
  }
  EXPECT_GT(calls, split_pages(all).size());  // pieces smaller than pages on average
  EXPECT_EQ(pieces.packets(), whole.packets());
  EXPECT_EQ(pieces.skipped_bytes(), 0u);
  ASSERT_EQ(y.size(), ref.size());
  EXPECT_EQ(std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)), 0);
}

// Garbage before and between the pages (random bytes, and a fake page header whose CRC fails) is
// skipped and counted exactly; the audio decodes as without it.
TEST(OpusStream, GarbageBetweenPagesIsSkipped) {
  OpusWriter w;
  const auto msgs = encode(w, tones(kRate, {440.0, 1000.0}));
  OpusReader clean;
  const auto ref = feed_all(clean, msgs);

  std::mt19937 rng(11);
  std::uniform_int_distribution<int> byte(0, 255), len(1, 200);
  std::string dirty;
  size_t garbage = 0;
  const auto pages = split_pages(join(msgs));
  for (size_t i = 0; i < pages.size(); ++i) {
    std::string g;
    const int n = len(rng);
    for (int k = 0; k < n; ++k) g.push_back(char(byte(rng)));
    if (i == 5) {  // a page header that looks right but whose CRC (all zero here) does not match
      std::string fake("OggS\0\0", 6);
      fake.append(20, '\0');
      fake.push_back(char(1));   // one segment
      fake.push_back(char(10));  // of 10 bytes
      fake.append(10, 'x');
      g += fake;
    }
    garbage += g.size();
    dirty += g + pages[i].bytes;
  }
  OpusReader r;
  std::vector<float> y;
  for (size_t at = 0; at < dirty.size(); at += 500) {
    auto part =
        r.append_bytes(reinterpret_cast<const uint8_t*>(dirty.data()) + at, std::min<size_t>(500, dirty.size() - at));
    y.insert(y.end(), part.begin(), part.end());
  }
  EXPECT_GT(r.skipped_bytes(), 0u);
  EXPECT_EQ(r.skipped_bytes(), garbage);
  EXPECT_EQ(r.packets(), clean.packets());
  ASSERT_EQ(y.size(), ref.size());
  EXPECT_EQ(std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)), 0);
}

// A well-framed page whose Opus packet is malformed throws mt::Error naming libopus and the packet;
// the reader then goes on decoding the pages that follow (the documented behaviour).
TEST(OpusStream, CorruptPacketThrowsAndReaderGoesOn) {
  OpusWriter w;
  const auto pages = split_pages(join(encode(w, tones(kRate, {440.0, 1000.0}))));
  ASSERT_EQ(pages.size(), 2 + 25u);
  constexpr size_t kBad = 2 + 4;  // the 5th audio page: audio packet 4 counting from 0
  const Page& victim = pages[kBad];

  const std::vector<std::vector<uint8_t>> corrupt = {
      {0x83, 0x00},        // code 3 (arbitrary frame count) announcing 0 frames
      {0x83},              // code 3 cut to its TOC byte: the frame count byte is missing
      {0x1b, 0x03, 0, 0},  // code 3 with three 60 ms frames: 180 ms, over Opus's 120 ms
      {0x81, 1, 2, 3},     // code 1 (two equal frames) with an odd payload length
  };
  for (size_t v = 0; v < corrupt.size(); ++v) {
    SCOPED_TRACE("variant " + std::to_string(v));
    const std::string bad = make_page(victim.serial, victim.pageno, victim.granule, corrupt[v]);
    ASSERT_EQ(split_pages(bad).size(), 1u);
    OpusReader r;
    std::vector<float> y;
    for (size_t i = 0; i < kBad; ++i) {
      auto part = feed(r, pages[i].bytes);
      y.insert(y.end(), part.begin(), part.end());
    }
    EXPECT_EQ(r.packets(), 4);
    expect_error([&] { feed(r, bad); }, {"opus", "packet 4"});
    EXPECT_EQ(r.packets(), 4);
    for (size_t i = kBad + 1; i < pages.size(); ++i) {
      auto part = feed(r, pages[i].bytes);
      y.insert(y.end(), part.begin(), part.end());
    }
    EXPECT_EQ(r.packets(), 24);
    EXPECT_EQ(y.size(), 24 * kPacket);
    EXPECT_EQ(r.skipped_bytes(), 0u);
  }
}

// Bytes that never complete a page (a header announcing a 65 KB body that never comes) pass the
// limit and throw; the reader is usable afterwards. At the default limit, a packet continued over
// page after page (each page valid) throws too once over 1 MiB is held.
TEST(OpusStream, PendingBytesOverLimitThrow) {
  std::string hdr("OggS\0\x02", 6);
  hdr.append(20, '\0');
  hdr.push_back(char(255));
  hdr.append(255, char(255));  // 255 segments of 255 bytes: a 65025-byte body
  const std::string body(5000, 'z');
  OpusReader r(kRate, 4096);
  EXPECT_TRUE(feed(r, hdr).empty());
  expect_error([&] { feed(r, body); }, {"pending", "4096"});

  OpusWriter w;
  const auto msgs = encode(w, tones(6 * kCall, {440.0}));
  EXPECT_EQ(feed_all(r, msgs).size(), 6 * kCall);

  // One 2 MiB packet spread over ~33 pages by libogg; the page that would end it is never sent.
  ogg_stream_state os;
  ASSERT_EQ(ogg_stream_init(&os, 1234), 0);
  std::vector<uint8_t> huge(2u << 20, 0x55);
  ogg_packet op{};
  op.packet = huge.data();
  op.bytes = long(huge.size());
  op.b_o_s = 1;
  ASSERT_EQ(ogg_stream_packetin(&os, &op), 0);
  std::vector<std::string> parts;
  ogg_page og;
  while (ogg_stream_flush(&os, &og) != 0)
    parts.emplace_back(std::string(reinterpret_cast<const char*>(og.header), size_t(og.header_len)) +
                       std::string(reinterpret_cast<const char*>(og.body), size_t(og.body_len)));
  ogg_stream_clear(&os);
  ASSERT_GT(parts.size(), 20u);
  parts.pop_back();
  OpusReader d;
  size_t fed = 0;
  expect_error(
      [&] {
        for (const auto& p : parts) {
          feed(d, p);
          fed += p.size();
        }
      },
      {"pending", "1048576"});
  EXPECT_GT(fed, size_t(1) << 19);  // it did not throw at once
  EXPECT_LT(fed, size_t(1) << 21);  // nor only at the end
}

// A second logical stream (a new BOS page with another serial) after the first: the decoder restarts,
// so each part decodes exactly as it does alone; a late page of the first stream is skipped.
TEST(OpusStream, SecondLogicalStreamDecodes) {
  OpusWriter a;
  OpusWriter b;
  while (b.serial() == a.serial()) b = OpusWriter();
  const auto ma = encode(a, tones(kRate, {440.0, 1000.0}));
  const auto mb = encode(b, tones(6 * kCall, {660.0}));
  const std::string late = a.append_pcm(tones(kCall, {440.0}).data(), kCall);  // 2 pages of stream a
  ASSERT_EQ(split_pages(late).size(), 2u);

  OpusReader ra, rb;
  const auto ya = feed_all(ra, ma);
  const auto yb = feed_all(rb, mb);
  ASSERT_EQ(ya.size(), size_t(kRate));
  ASSERT_EQ(yb.size(), 6 * kCall);

  OpusReader r;
  auto y = feed_all(r, ma);
  auto y2 = feed_all(r, {mb[0], late});
  EXPECT_EQ(r.skipped_bytes(), late.size());
  const auto rest = feed_all(r, std::vector<std::string>(mb.begin() + 1, mb.end()));
  y.insert(y.end(), y2.begin(), y2.end());
  y.insert(y.end(), rest.begin(), rest.end());
  EXPECT_EQ(r.packets(), ra.packets() + rb.packets());
  ASSERT_EQ(y.size(), ya.size() + yb.size());
  EXPECT_EQ(std::memcmp(y.data(), ya.data(), ya.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(y.data() + ya.size(), yb.data(), yb.size() * sizeof(float)), 0);
  double energy = 0;
  for (float v : yb) energy += double(v) * v;
  EXPECT_GT(energy / double(yb.size()), 0.01);  // the second stream is audio, not silence
}
