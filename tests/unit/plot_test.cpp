#include "report/plot.h"

#include <gtest/gtest.h>
#include <png.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "test_util.h"
#include "util/error.h"

namespace {

using mt::plot::Chart;
using mt::plot::Series;
namespace fs = std::filesystem;
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

struct Image {
  int w = 0, h = 0;
  std::vector<uint8_t> rgb;
  uint32_t at(int x, int y) const {
    const uint8_t* p = &rgb[(size_t(y) * w + x) * 3];
    return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
  }
  long count(uint32_t c) const {
    long n = 0;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) n += at(x, y) == c;
    return n;
  }
  // Rows (top = 0) in column x holding colour c.
  std::vector<int> rows_with(int x, uint32_t c) const {
    std::vector<int> r;
    for (int y = 0; y < h; ++y)
      if (at(x, y) == c) r.push_back(y);
    return r;
  }
};

Image render(const Chart& c) {
  Image im;
  im.rgb = mt::plot::render_rgb(c, &im.w, &im.h);
  return im;
}

Image read_png(const std::string& path) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&img, path.c_str())) throw std::runtime_error(img.message);
  img.format = PNG_FORMAT_RGB;
  Image im;
  im.w = int(img.width), im.h = int(img.height);
  im.rgb.resize(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, im.rgb.data(), 0, nullptr)) throw std::runtime_error(img.message);
  return im;
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

TEST(Plot, RendersRequestedSize) {
  Chart c = two_curves();
  c.width = 640, c.height = 360;
  Image im = render(c);
  EXPECT_EQ(im.w, 640);
  EXPECT_EQ(im.h, 360);
  EXPECT_EQ(im.rgb.size(), size_t(640) * 360 * 3);
}

TEST(Plot, WhiteBackgroundAndEachSeriesColour) {
  Chart c = two_curves();
  c.series.push_back({"custom", {0, 1000}, {4, 4}, "line", 0x123456});
  Image im = render(c);
  for (auto [x, y] : {std::pair{0, 0}, {im.w - 1, 0}, {0, im.h - 1}, {im.w - 1, im.h - 1}})
    EXPECT_EQ(im.at(x, y), 0xFFFFFFu) << x << "," << y;
  EXPECT_GT(im.count(0xFFFFFF), long(im.w) * im.h / 2);
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

TEST(Plot, WritesPngThatReadsBack) {
  mt::test::TempDir dir;
  std::string path = dir.file("loss.png");
  Chart c = two_curves();
  c.width = 700, c.height = 400;
  mt::plot::write_png(c, path);
  std::ifstream f(path, std::ios::binary);
  unsigned char sig[8] = {};
  f.read(reinterpret_cast<char*>(sig), 8);
  const unsigned char kSig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  EXPECT_EQ(std::memcmp(sig, kSig, 8), 0);
  Image back = read_png(path);
  EXPECT_EQ(back.w, 700);
  EXPECT_EQ(back.h, 400);
  EXPECT_EQ(back.rgb, render(c).rgb);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  // Rewriting replaces the file in place.
  c.width = 500;
  mt::plot::write_png(c, path);
  EXPECT_EQ(read_png(path).w, 500);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()), 1);
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
    ASSERT_NO_THROW(im = render(charts[i])) << i;
    EXPECT_EQ(im.w, 900);
    EXPECT_EQ(im.h, 520);
  }
  // The lone point still shows up (as a dot).
  EXPECT_GT(render(charts[3]).count(mt::plot::palette(0)), 20);
  // Write the empty chart too.
  mt::test::TempDir dir;
  EXPECT_NO_THROW(mt::plot::write_png(charts[0], dir.file("empty.png")));
}

TEST(Plot, NaNBreaksTheLine) {
  Chart c;
  Series s;  // unlabelled: no legend sample in the way
  for (int i = 0; i <= 10; ++i) s.x.push_back(i), s.y.push_back(1);
  s.y[5] = kNaN;
  c.series = {s};
  c.ymin = 0, c.ymax = 2;
  Image im = render(c);
  const uint32_t col = mt::plot::palette(0);
  // Find the plotted line's columns: first and last columns holding the colour.
  int first = -1, last = -1;
  for (int x = 0; x < im.w; ++x)
    if (!im.rows_with(x, col).empty()) {
      if (first < 0) first = x;
      last = x;
    }
  ASSERT_GT(last, first);
  int mid = first + (last - first) / 2;  // x = 5
  EXPECT_TRUE(im.rows_with(mid, col).empty());
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
  s.y.push_back(0), s.x.push_back(6);  // not drawable on a log axis: skipped
  c.series = {s};
  c.hlines = {{1, "one"}};
  Image im;
  ASSERT_NO_THROW(im = render(c));
  const uint32_t col = mt::plot::palette(0);
  int first = -1, last = -1;
  for (int x = 0; x < im.w; ++x)
    if (!im.rows_with(x, col).empty()) {
      if (first < 0) first = x;
      last = x;
    }
  ASSERT_GT(last, first + 100);
  auto mean_row = [&](int x) {
    auto r = im.rows_with(x, col);
    double m = 0;
    for (int y : r) m += y;
    return r.empty() ? -1.0 : m / double(r.size());
  };
  double y0 = mean_row(first + 2), y1 = mean_row(last - 2), ym = mean_row((first + last) / 2);
  EXPECT_GT(y0, y1 + 200);                     // 1e-3 sits far below 1e2
  EXPECT_NEAR(ym, (y0 + y1) / 2, 0.05 * (y0 - y1));  // straight in log space
  // Non-positive limits are refused on a log axis.
  c.ymin = 0;
  EXPECT_THROW(render(c), mt::Error);
}

TEST(Plot, BarsAndPoints) {
  Chart c;
  c.title = "latency";
  c.series = {{"cpu", {0, 1, 2}, {12.5, 30.1, 61}, "bar"},
              {"cuda", {0, 1, 2}, {1.1, 1.9, 3.5}, "bar"},
              {"target", {0, 1, 2}, {20, 20, 20}, "points"}};
  c.xticks = {{0, "T=128"}, {1, "T=256"}, {2, "T=512"}};
  Image im = render(c);
  EXPECT_GT(im.count(mt::plot::palette(0)), 5000);
  EXPECT_GT(im.count(mt::plot::palette(1)), 500);
  EXPECT_GT(im.count(mt::plot::palette(2)), 50);
}

TEST(Plot, RejectsBadInput) {
  Chart c;
  c.series = {{"bad", {0, 1, 2}, {1, 2}}};
  EXPECT_THROW(render(c), mt::Error);
  c.series = {{"bad", {}, {1, 2}, "area"}};
  EXPECT_THROW(render(c), mt::Error);
  c.series.clear();
  c.width = 10;
  EXPECT_THROW(render(c), mt::Error);
}

TEST(Plot, WriteIntoMissingFolderThrowsAndLeavesNothing) {
  mt::test::TempDir dir;
  std::string path = dir.file("missing/sub/chart.png");
  try {
    mt::plot::write_png(two_curves(), path);
    FAIL() << "no exception";
  } catch (const mt::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path / "missing"));
  EXPECT_TRUE(fs::is_empty(dir.path));
}

TEST(Plot, FailedRenameRemovesTheTempFile) {
  mt::test::TempDir dir;
  std::string path = dir.file("taken");
  fs::create_directory(path);
  fs::create_directory(path + "/inner");  // a non-empty folder cannot be replaced by a file
  EXPECT_THROW(mt::plot::write_png(two_curves(), path), mt::Error);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_TRUE(fs::is_directory(path));
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
