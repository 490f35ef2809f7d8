#include "report/plot.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <thread>

#include "test_util.h"
#include "util/error.h"

namespace {

using mt::plot::Chart;
using mt::plot::Series;
namespace fs = std::filesystem;
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// A decoded PNG, RGB rows top first.
struct Image {
  int w = 0, h = 0;
  bool opaque = true;  // every alpha byte 255
  std::vector<uint8_t> rgb;
  uint32_t at(int x, int y) const {
    const uint8_t* p = &rgb[(size_t(y) * w + x) * 3];
    return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
  }
  // Anti-aliased edges blend with the background: "near" allows a few levels per channel.
  static bool near(uint32_t a, uint32_t b, int tol) {
    for (int s : {16, 8, 0})
      if (std::abs(int(a >> s & 255) - int(b >> s & 255)) > tol) return false;
    return true;
  }
  long count(uint32_t c, int tol = 10) const {
    long n = 0;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) n += near(at(x, y), c, tol);
    return n;
  }
  // Rows (top = 0) in column x holding colour c.
  std::vector<int> rows_with(int x, uint32_t c, int tol = 10) const {
    std::vector<int> r;
    for (int y = 0; y < h; ++y)
      if (near(at(x, y), c, tol)) r.push_back(y);
    return r;
  }
  // First and last columns holding colour c.
  std::pair<int, int> columns_with(uint32_t c) const {
    int first = -1, last = -1;
    for (int x = 0; x < w; ++x)
      if (!rows_with(x, c).empty()) first = first < 0 ? x : first, last = x;
    return {first, last};
  }
};

uint32_t be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(s[at + i]);
  return v;
}

int paeth(int a, int b, int c) {
  int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

// Undoes the per-row filters of 8-bit, non-interlaced PNG data (PNG specification, section 9).
void unfilter(std::vector<uint8_t>& raw, size_t rows, size_t stride, size_t bpp) {
  for (size_t y = 0; y < rows; ++y) {
    uint8_t* cur = &raw[y * (stride + 1) + 1];
    const uint8_t* prev = y ? &raw[(y - 1) * (stride + 1) + 1] : nullptr;
    const int filter = cur[-1];
    if (filter > 4) throw std::runtime_error("PNG: bad filter " + std::to_string(filter));
    for (size_t i = 0; i < stride; ++i) {
      const int a = i >= bpp ? cur[i - bpp] : 0, b = prev ? prev[i] : 0, c = prev && i >= bpp ? prev[i - bpp] : 0;
      const int add[5] = {0, a, b, (a + b) / 2, paeth(a, b, c)};
      cur[i] = uint8_t(cur[i] + add[filter]);
    }
  }
}

// Reads the PNGs the plot module writes (8-bit RGB or RGBA), checking the layout on the way.
Image read_png(const std::string& path) {
  const std::string f = mt::test::slurp(path);
  if (f.size() < 8 || f.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw std::runtime_error(path + ": not a PNG");
  Image im;
  int depth = 0, type = -1, interlace = -1;
  std::string idat;
  for (size_t at = 8; at + 12 <= f.size();) {
    const size_t len = be32(f, at);
    const std::string kind = f.substr(at + 4, 4);
    if (at + 12 + len > f.size()) throw std::runtime_error(path + ": truncated " + kind + " chunk");
    if (kind == "IHDR")
      im.w = int(be32(f, at + 8)), im.h = int(be32(f, at + 12)), depth = f[at + 16], type = f[at + 17],
      interlace = f[at + 20];
    if (kind == "IDAT") idat.append(f, at + 8, len);
    if (kind == "IEND") break;
    at += 12 + len;
  }
  if (depth != 8 || (type != 2 && type != 6) || interlace != 0 || im.w <= 0 || im.h <= 0)
    throw std::runtime_error(path + ": not an 8-bit RGB(A) PNG");
  const size_t bpp = type == 6 ? 4 : 3, stride = size_t(im.w) * bpp;
  std::vector<uint8_t> raw(size_t(im.h) * (stride + 1));
  uLongf n = raw.size();
  if (uncompress(raw.data(), &n, reinterpret_cast<const Bytef*>(idat.data()), idat.size()) != Z_OK || n != raw.size())
    throw std::runtime_error(path + ": bad image data");
  unfilter(raw, size_t(im.h), stride, bpp);
  for (int y = 0; y < im.h; ++y)
    for (int x = 0; x < im.w; ++x) {
      const uint8_t* p = &raw[size_t(y) * (stride + 1) + 1 + size_t(x) * bpp];
      im.rgb.insert(im.rgb.end(), p, p + 3);
      im.opaque = im.opaque && (bpp == 3 || p[3] == 255);
    }
  return im;
}

// Writes the chart into a fresh folder and reads it back.
Image draw(const Chart& c) {
  mt::test::TempDir dir;
  mt::plot::write_png(c, dir.file("chart.png"));
  return read_png(dir.file("chart.png"));
}

Chart two_curves() {
  Chart c;
  c.title = "Training loss";
  c.xlabel = "step";
  c.ylabel = "loss";
  Series a{"baseline"}, b{"ttt"};
  for (int i = 0; i <= 100; ++i) {
    a.x.push_back(i * 10), a.y.push_back(3 + 5 * std::exp(-i / 20.0));
    b.x.push_back(i * 10), b.y.push_back(2.5 + 5.5 * std::exp(-i / 15.0));
  }
  c.series = {a, b};
  c.hlines = {{7.62, "chance"}};
  c.vlines = {{500, "window"}};
  return c;
}

size_t files_in(const fs::path& dir) {
  return size_t(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

TEST(Plot, WritesPngOfTheRequestedSizeAtomically) {
  mt::test::TempDir dir;
  const std::string path = dir.file("loss.png");
  Chart c = two_curves();
  c.width = 700, c.height = 400;
  mt::plot::write_png(c, path);
  Image im = read_png(path);
  EXPECT_EQ(im.w, 700);
  EXPECT_EQ(im.h, 400);
  EXPECT_TRUE(im.opaque);
  EXPECT_EQ(files_in(dir.path), 1u);  // no temporary file left beside it
  // Rewriting replaces the file in place.
  c.width = 500;
  mt::plot::write_png(c, path);
  EXPECT_EQ(read_png(path).w, 500);
  EXPECT_EQ(files_in(dir.path), 1u);
}

TEST(Plot, DefaultSizeIs1000x600) {
  Image im = draw(two_curves());
  EXPECT_EQ(im.w, 1000);
  EXPECT_EQ(im.h, 600);
}

TEST(Plot, WhiteBackgroundAndEachSeriesColour) {
  Chart c = two_curves();
  c.series.push_back({"custom", {0, 1000}, {4, 4}, "line", 0x123456});
  Image im = draw(c);
  for (auto [x, y] : {std::pair{0, 0}, {im.w - 1, 0}, {0, im.h - 1}, {im.w - 1, im.h - 1}})
    EXPECT_EQ(im.at(x, y), 0xFFFFFFu) << x << "," << y;
  EXPECT_GT(im.count(0xFFFFFF, 0), long(im.w) * im.h / 2);  // not blank, not filled either
  EXPECT_GT(im.count(mt::plot::palette(0)), 200);
  EXPECT_GT(im.count(mt::plot::palette(1)), 200);
  EXPECT_GT(im.count(0x123456), 200);
  EXPECT_EQ(im.count(mt::plot::palette(2)), 0);  // the third series took its own colour
}

TEST(Plot, PaletteColoursAreDistinct) {
  for (size_t i = 0; i < 8; ++i)
    for (size_t j = i + 1; j < 8; ++j) EXPECT_NE(mt::plot::palette(i), mt::plot::palette(j));
  EXPECT_EQ(mt::plot::palette(8), mt::plot::palette(0));
}

TEST(Plot, DrawsTitleAndLabelsAsText) {
  // Text is dark grey (0x222222); only labels are drawn in it. A missing font would show as no text.
  Chart bare = two_curves();
  bare.title = bare.xlabel = bare.ylabel = "";
  bare.hlines.clear(), bare.vlines.clear();
  bare.series[0].label = bare.series[1].label = "";
  Chart labelled = bare;
  labelled.title = "A title that takes some room at the top";
  const long before = draw(bare).count(0x222222, 40);
  Image im = draw(labelled);
  long top = 0;
  for (int y = 0; y < 45; ++y)
    for (int x = 0; x < im.w; ++x) top += Image::near(im.at(x, y), 0x222222, 40);
  EXPECT_GT(top, 300);
  EXPECT_GT(im.count(0x222222, 40), before + 300);
}

TEST(Plot, EscapesAndUnicodeInText) {
  Chart c = two_curves();
  c.title = "#u not a superscript, <b>not bold</b> & \xce\xb1 \xe2\x80\x96W\xe2\x80\x96";  // α ‖W‖
  c.series[0].label = "#params & <tags>";
  EXPECT_NO_THROW(draw(c));
  c.title = std::string(2000, 'x');  // the cairo device drops strings of 500 characters or more
  EXPECT_NO_THROW(draw(c));
}

TEST(Plot, DegenerateInputsDoNotCrash) {
  std::vector<Chart> charts(9);
  charts[1].series = {{"nan only", {}, {kNaN, kNaN, kNaN}}};
  charts[2].series = {{"empty", {}, {}}, {"", {}, {}, "points"}, {"bars", {}, {}, "bar"}};
  charts[3].series = {{"", {}, {3.5}}};
  charts[4].series = {{"infs", {0, kInf, 2, 3}, {kInf, 1, -kInf, kNaN}}};
  charts[5].series = {{"constant", {}, {2, 2, 2, 2}}};
  charts[5].hlines = {{kNaN, "nan line"}};
  charts[6].series = {{"nan only", {}, {kNaN}}};
  charts[6].logy = true;
  charts[6].vlines = {{kInf, "inf"}};
  charts[7].series = {{"bars out of view", {0, 1, 2}, {1, 2, 3}, "bar"}, {"line", {}, {1e300, -1e300, 5}}};
  charts[7].xmin = 100, charts[7].xmax = 200, charts[7].ymin = kNaN;
  charts[8].series = {{"tiny range", {1e15, 1e15 + 1}, {1e-300, 2e-300}}};
  charts[8].xmax = 1e300;
  for (size_t i = 0; i < charts.size(); ++i) {
    charts[i].title = "degenerate " + std::to_string(i);
    Image im;
    ASSERT_NO_THROW(im = draw(charts[i])) << i;
    EXPECT_EQ(im.w, 1000);
    EXPECT_EQ(im.h, 600);
  }
  // The lone point still shows up (as a dot).
  EXPECT_GT(draw(charts[3]).count(mt::plot::palette(0)), 20);
}

TEST(Plot, EmptySeriesIsLeftOutOfTheLegend) {
  Chart c = two_curves();
  c.series.push_back({"never logged", {}, {}, "points", 0xFF00FF});
  c.series.push_back({"all NaN", {}, {kNaN, kNaN}, "line", 0x00FFFF});
  Image im = draw(c);
  EXPECT_EQ(im.count(0xFF00FF, 40), 0);
  EXPECT_EQ(im.count(0x00FFFF, 40), 0);
  EXPECT_GT(im.count(mt::plot::palette(0)), 200);
}

TEST(Plot, NaNBreaksTheLine) {
  Chart c;
  Series s;  // unlabelled: no legend sample in the way
  for (int i = 0; i <= 10; ++i) s.x.push_back(i), s.y.push_back(1);
  s.y[5] = kNaN;
  c.series = {s};
  c.ymin = 0, c.ymax = 2;
  Image im = draw(c);
  const uint32_t col = mt::plot::palette(0);
  auto [first, last] = im.columns_with(col);
  ASSERT_GT(last, first + 100);
  EXPECT_TRUE(im.rows_with(first + (last - first) / 2, col).empty());        // x = 5
  EXPECT_FALSE(im.rows_with(first + (last - first) * 2 / 10, col).empty());  // x = 2
  EXPECT_FALSE(im.rows_with(first + (last - first) * 8 / 10, col).empty());  // x = 8
}

TEST(Plot, LogAxisSpanningDecades) {
  Chart c;
  c.logy = true;
  c.title = "loss by position";
  // One value per decade from 1e-3 to 1e2: a straight line on a log axis.
  Series s;  // unlabelled: no legend sample in the way
  for (int i = 0; i <= 5; ++i) s.x.push_back(i), s.y.push_back(std::pow(10.0, i - 3));
  c.series = {s};
  c.hlines = {{1, "one"}};
  Image im = draw(c);
  const uint32_t col = mt::plot::palette(0);
  auto [first, last] = im.columns_with(col);
  ASSERT_GT(last, first + 100);
  auto mean_row = [&](int x) {
    auto r = im.rows_with(x, col);
    double m = 0;
    for (int y : r) m += y;
    return r.empty() ? -1.0 : m / double(r.size());
  };
  double y0 = mean_row(first + 3), y1 = mean_row(last - 3), ym = mean_row((first + last) / 2);
  EXPECT_GT(y0, y1 + 200);                           // 1e-3 sits far below 1e2
  EXPECT_NEAR(ym, (y0 + y1) / 2, 0.05 * (y0 - y1));  // straight in log space
}

TEST(Plot, LogAxisSkipsNonPositiveValuesAndRefusesNonPositiveLimits) {
  Chart c;
  c.logy = true;
  Series s;
  for (int i = 0; i <= 10; ++i) s.x.push_back(i), s.y.push_back(i == 5 ? 0.0 : i == 6 ? -1.0 : std::pow(2.0, i));
  c.series = {s};
  Image im = draw(c);  // values <= 0 are skipped: the line breaks there
  const uint32_t col = mt::plot::palette(0);
  auto [first, last] = im.columns_with(col);
  ASSERT_GT(last, first + 100);
  EXPECT_TRUE(im.rows_with(first + (last - first) * 55 / 100, col).empty());  // x = 5.5
  EXPECT_FALSE(im.rows_with(first + (last - first) * 2 / 10, col).empty());   // x = 2
  mt::test::TempDir dir;
  for (double limit : {0.0, -1.0}) {
    Chart bad = c;
    bad.ymin = limit;
    mt::test::expect_error([&] { mt::plot::write_png(bad, dir.file("bad.png")); }, {dir.file("bad.png"), "ymin"});
    bad.ymin.reset(), bad.ymax = limit;
    mt::test::expect_error([&] { mt::plot::write_png(bad, dir.file("bad.png")); }, {dir.file("bad.png"), "ymax"});
  }
  EXPECT_EQ(files_in(dir.path), 0u);
}

TEST(Plot, BandsShadeIntervalsAroundLines) {
  Chart c;
  Series s{"ttt"};
  for (int i = 0; i <= 50; ++i) {
    s.x.push_back(i), s.y.push_back(5 - i * 0.05);
    s.lower.push_back(s.y.back() - 0.5), s.upper.push_back(s.y.back() + 0.5);
  }
  s.lower[25] = s.upper[25] = kNaN;  // no interval there: the band breaks
  c.series = {s};
  Image with = draw(c);
  c.series[0].lower.clear(), c.series[0].upper.clear();
  Image without = draw(c);
  // The band: the series colour at 20% over white.
  const uint32_t p = mt::plot::palette(0);
  uint32_t band = 0;
  for (int sh : {16, 8, 0}) band |= uint32_t(std::lround(0.2 * (p >> sh & 255) + 0.8 * 255)) << sh;
  EXPECT_GT(with.count(band, 6), 20000);
  EXPECT_LT(without.count(band, 6), 500);
}

TEST(Plot, BarsWithErrorBarsAndPoints) {
  Chart c;
  c.title = "latency";
  c.series = {{"cpu", {0, 1, 2}, {12.5, 30.1, 61}, "bar", std::nullopt, {10, 25, 55}, {15, 35, 70}},
              {"cuda", {0, 1, 2}, {1.1, 1.9, 3.5}, "bar"},
              {"target", {0, 1, 2}, {20, 20, 20}, "points"}};
  c.xticks = {{0, "T=128"}, {1, "T=256"}, {2, "T=512"}};
  Image im = draw(c);
  EXPECT_GT(im.count(mt::plot::palette(0)), 5000);
  EXPECT_GT(im.count(mt::plot::palette(1)), 500);
  EXPECT_GT(im.count(mt::plot::palette(2)), 50);
  // The error bars: dark vertical strokes above the tallest bar's top (61 -> 70).
  auto [first, last] = im.columns_with(mt::plot::palette(0));
  long dark = 0;
  for (int x = first; x <= last; ++x)
    for (int y = 0; y < im.h; ++y) dark += Image::near(im.at(x, y), 0x333333, 30);
  EXPECT_GT(dark, 30);
}

TEST(Plot, RejectsBadInputNamingTheFile) {
  mt::test::TempDir dir;
  const std::string path = dir.file("bad.png");
  auto expect_bad = [&](const Chart& c, const std::string& what) {
    mt::test::expect_error([&] { mt::plot::write_png(c, path); }, {path, what});
  };
  Chart c;
  c.series = {{"bad", {0, 1, 2}, {1, 2}}};
  expect_bad(c, "2 y values");
  c.series = {{"bad", {}, {1, 2}, "area"}};
  expect_bad(c, "area");
  c.series = {{"bad", {}, {1, 2}, "line", std::nullopt, {0, 1}, {}}};
  expect_bad(c, "interval");
  c.series = {{"bad", {}, {1, 2}, "line", std::nullopt, {0}, {3}}};
  expect_bad(c, "interval");
  c.series.clear();
  c.width = 10;
  expect_bad(c, "10x600");
  EXPECT_EQ(files_in(dir.path), 0u);
}

TEST(Plot, WriteIntoMissingFolderThrowsAndLeavesNothing) {
  mt::test::TempDir dir;
  std::string path = dir.file("missing/sub/chart.png");
  mt::test::expect_error([&] { mt::plot::write_png(two_curves(), path); }, {path});
  EXPECT_FALSE(fs::exists(dir.path / "missing"));
  EXPECT_TRUE(fs::is_empty(dir.path));
}

TEST(Plot, FailedRenameRemovesTheTempFile) {
  mt::test::TempDir dir;
  std::string path = dir.file("taken");
  fs::create_directory(path);
  fs::create_directory(path + "/inner");  // a non-empty folder cannot be replaced by a file
  EXPECT_THROW(mt::plot::write_png(two_curves(), path), mt::Error);
  EXPECT_EQ(files_in(dir.path), 1u);  // only the folder: no temporary file
  EXPECT_TRUE(fs::is_directory(path));
}

TEST(Plot, ManyChartsAndThreadsShareNoState) {
  // PLplot has 100 stream slots: a stream left open per chart would run out well before 120 charts.
  mt::test::TempDir dir;
  Chart small;
  small.width = 240, small.height = 160;
  small.series = {{"", {}, {1, 3, 2}}};
  for (int i = 0; i < 120; ++i) ASSERT_NO_THROW(mt::plot::write_png(small, dir.file("small.png"))) << i;
  // Concurrent callers get their own, complete charts.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      Chart c = two_curves();
      c.width = 400 + 100 * t;
      for (int i = 0; i < 3; ++i) mt::plot::write_png(c, dir.file("t" + std::to_string(t) + ".png"));
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    Image im = read_png(dir.file("t" + std::to_string(t) + ".png"));
    EXPECT_EQ(im.w, 400 + 100 * t);
    EXPECT_GT(im.count(mt::plot::palette(0)), 100);
  }
}

TEST(Plot, FormatsNumbersCompactly) {
  using mt::plot::format_number;
  EXPECT_EQ(format_number(0), "0");
  EXPECT_EQ(format_number(12), "12");
  EXPECT_EQ(format_number(0.25), "0.25");
  EXPECT_EQ(format_number(7.6246), "7.62");
  EXPECT_EQ(format_number(1200), "1.2k");
  EXPECT_EQ(format_number(-1500), "-1.5k");
  EXPECT_EQ(format_number(2.5e6), "2.5M");
  EXPECT_EQ(format_number(3.5e-4), "3.5e-4");
  EXPECT_EQ(format_number(1e-3), "1e-3");
  EXPECT_EQ(format_number(0.01), "0.01");
  EXPECT_EQ(format_number(100), "100");
  EXPECT_EQ(format_number(999.99), "1k");
  EXPECT_EQ(format_number(kNaN), "nan");
  // At a tick resolution.
  EXPECT_EQ(format_number(1.5, 0.5), "1.5");
  EXPECT_EQ(format_number(2000, 500), "2k");
  EXPECT_EQ(format_number(1050, 50), "1.05k");
  EXPECT_EQ(format_number(0.30000000000000004, 0.1), "0.3");
}

}  // namespace
