// Charts drawn pixel by pixel into an RGB buffer, then written with libpng. See plot.h.
#include "report/plot.h"

#include <fcntl.h>
#include <png.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "util/error.h"

namespace mt::plot {
namespace {

// ---------------------------------------------------------------------------------------------
// Font: our own 5-wide glyphs for ASCII 32..126, one byte per row (bit 4 = left column).
// Rows 0-6 stand on the baseline (capitals are 7 rows tall, lower case 5), rows 7-8 are descenders.
constexpr int kGlyphW = 5, kCap = 7, kRows = 9, kAdvance = 6;
constexpr uint8_t kFont[95][kRows] = {
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // space
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00, 0x00},  // !
    {0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // "
    {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A, 0x00, 0x00},  // #
    {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04, 0x00, 0x00},  // $
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00, 0x00},  // %
    {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D, 0x00, 0x00},  // &
    {0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // '
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00, 0x00},  // (
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00, 0x00},  // )
    {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00, 0x00, 0x00},  // *
    {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0x00, 0x00},  // +
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08, 0x00},  // ,
    {0x00, 0x00, 0x00, 0x0F, 0x00, 0x00, 0x00, 0x00, 0x00},  // -
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C, 0x00, 0x00},  // .
    {0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10, 0x00, 0x00},  // /
    {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0x00, 0x00},  // 0
    {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00, 0x00},  // 1
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0x00, 0x00},  // 2
    {0x0E, 0x11, 0x01, 0x06, 0x01, 0x11, 0x0E, 0x00, 0x00},  // 3
    {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0x00, 0x00},  // 4
    {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0x00, 0x00},  // 5
    {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0x00, 0x00},  // 6
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00, 0x00},  // 7
    {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0x00, 0x00},  // 8
    {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0x00, 0x00},  // 9
    {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00, 0x00, 0x00},  // :
    {0x00, 0x0C, 0x0C, 0x00, 0x00, 0x0C, 0x04, 0x08, 0x00},  // ;
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00, 0x00},  // <
    {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00},  // =
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00, 0x00},  // >
    {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00, 0x00},  // ?
    {0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E, 0x00, 0x00},  // @
    {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00, 0x00},  // A
    {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E, 0x00, 0x00},  // B
    {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E, 0x00, 0x00},  // C
    {0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E, 0x00, 0x00},  // D
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F, 0x00, 0x00},  // E
    {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10, 0x00, 0x00},  // F
    {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F, 0x00, 0x00},  // G
    {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00, 0x00},  // H
    {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00, 0x00},  // I
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C, 0x00, 0x00},  // J
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00, 0x00},  // K
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F, 0x00, 0x00},  // L
    {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00, 0x00},  // M
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00, 0x00},  // N
    {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00, 0x00},  // O
    {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10, 0x00, 0x00},  // P
    {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D, 0x00, 0x00},  // Q
    {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11, 0x00, 0x00},  // R
    {0x0E, 0x11, 0x10, 0x0E, 0x01, 0x11, 0x0E, 0x00, 0x00},  // S
    {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00},  // T
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00, 0x00},  // U
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00, 0x00},  // V
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A, 0x00, 0x00},  // W
    {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11, 0x00, 0x00},  // X
    {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04, 0x00, 0x00},  // Y
    {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F, 0x00, 0x00},  // Z
    {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E, 0x00, 0x00},  // [
    {0x10, 0x10, 0x08, 0x04, 0x02, 0x01, 0x01, 0x00, 0x00},  // backslash
    {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E, 0x00, 0x00},  // ]
    {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // ^
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00},  // _
    {0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // `
    {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0x00, 0x00},  // a
    {0x10, 0x10, 0x1E, 0x11, 0x11, 0x11, 0x1E, 0x00, 0x00},  // b
    {0x00, 0x00, 0x0E, 0x10, 0x10, 0x10, 0x0E, 0x00, 0x00},  // c
    {0x01, 0x01, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x00, 0x00},  // d
    {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0x00, 0x00},  // e
    {0x06, 0x08, 0x08, 0x1C, 0x08, 0x08, 0x08, 0x00, 0x00},  // f
    {0x00, 0x00, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // g
    {0x10, 0x10, 0x1E, 0x11, 0x11, 0x11, 0x11, 0x00, 0x00},  // h
    {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0x00, 0x00},  // i
    {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},  // j
    {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00, 0x00},  // k
    {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00, 0x00},  // l
    {0x00, 0x00, 0x1A, 0x15, 0x15, 0x15, 0x15, 0x00, 0x00},  // m
    {0x00, 0x00, 0x1E, 0x11, 0x11, 0x11, 0x11, 0x00, 0x00},  // n
    {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0x00, 0x00},  // o
    {0x00, 0x00, 0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10},  // p
    {0x00, 0x00, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x01},  // q
    {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00, 0x00},  // r
    {0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E, 0x00, 0x00},  // s
    {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0x00, 0x00},  // t
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x11, 0x0F, 0x00, 0x00},  // u
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00, 0x00},  // v
    {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A, 0x00, 0x00},  // w
    {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00, 0x00},  // x
    {0x00, 0x00, 0x11, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // y
    {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F, 0x00, 0x00},  // z
    {0x03, 0x04, 0x04, 0x08, 0x04, 0x04, 0x03, 0x00, 0x00},  // {
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},  // |
    {0x18, 0x04, 0x04, 0x02, 0x04, 0x04, 0x18, 0x00, 0x00},  // }
    {0x00, 0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00},  // ~
};

// ---------------------------------------------------------------------------------------------
struct Rgb {
  uint8_t r, g, b;
  bool operator==(const Rgb&) const = default;
};
Rgb rgb(uint32_t c) { return {uint8_t(c >> 16), uint8_t(c >> 8), uint8_t(c)}; }

const Rgb kWhite{255, 255, 255};
const Rgb kGrid{0xE4, 0xE4, 0xE4};
const Rgb kGridMinor{0xF2, 0xF2, 0xF2};
const Rgb kFrame{0x8C, 0x8C, 0x8C};
const Rgb kText{0x22, 0x22, 0x22};
const Rgb kTickText{0x44, 0x44, 0x44};
const Rgb kRef{0x70, 0x70, 0x70};

struct Rect {
  int x0, y0, x1, y1;  // [x0, x1) x [y0, y1)
};

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Rect clip;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_) * h_ * 3, 255), clip{0, 0, w_, h_} {}
  void set(int x, int y, Rgb c) {
    if (x < clip.x0 || y < clip.y0 || x >= clip.x1 || y >= clip.y1) return;
    uint8_t* p = &px[(size_t(y) * w + x) * 3];
    p[0] = c.r, p[1] = c.g, p[2] = c.b;
  }
  Rgb get(int x, int y) const {
    const uint8_t* p = &px[(size_t(y) * w + x) * 3];
    return {p[0], p[1], p[2]};
  }
  void fill(int x0, int y0, int x1, int y1, Rgb c) {  // [x0, x1) x [y0, y1)
    x0 = std::max(x0, clip.x0), y0 = std::max(y0, clip.y0);
    x1 = std::min(x1, clip.x1), y1 = std::min(y1, clip.y1);
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) set(x, y, c);
  }
  void outline(int x0, int y0, int x1, int y1, Rgb c) {  // 1 px border of [x0, x1) x [y0, y1)
    fill(x0, y0, x1, y0 + 1, c), fill(x0, y1 - 1, x1, y1, c);
    fill(x0, y0, x0 + 1, y1, c), fill(x1 - 1, y0, x1, y1, c);
  }
  void disk(double cx, double cy, double r, Rgb c) {
    int x0 = int(std::floor(cx - r)), x1 = int(std::ceil(cx + r));
    int y0 = int(std::floor(cy - r)), y1 = int(std::ceil(cy + r));
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) {
        double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
        if (dx * dx + dy * dy <= r * r) set(x, y, c);
      }
  }
};

// Liang-Barsky: clips segment a-b to the box; false if nothing is left.
bool clip_segment(double& ax, double& ay, double& bx, double& by, double x0, double y0, double x1,
                  double y1) {
  double t0 = 0, t1 = 1, dx = bx - ax, dy = by - ay;
  const double p[4] = {-dx, dx, -dy, dy}, q[4] = {ax - x0, x1 - ax, ay - y0, y1 - ay};
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0) {
      if (q[i] < 0) return false;
      continue;
    }
    double t = q[i] / p[i];
    if (p[i] < 0) t0 = std::max(t0, t);
    else t1 = std::min(t1, t);
    if (t0 > t1) return false;
  }
  double nax = ax + t0 * dx, nay = ay + t0 * dy;
  bx = ax + t1 * dx, by = ay + t1 * dy, ax = nax, ay = nay;
  return true;
}

// A line `thick` px wide (Bresenham with a square brush), in pixel coordinates.
void line(Canvas& cv, double ax, double ay, double bx, double by, Rgb c, int thick) {
  const Rect& r = cv.clip;
  if (!clip_segment(ax, ay, bx, by, r.x0 - 4, r.y0 - 4, r.x1 + 4, r.y1 + 4)) return;
  int x0 = int(std::lround(ax)), y0 = int(std::lround(ay));
  int x1 = int(std::lround(bx)), y1 = int(std::lround(by));
  int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1, dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
  int err = dx + dy, lo = -(thick / 2), hi = lo + thick;
  for (;;) {
    for (int oy = lo; oy < hi; ++oy)
      for (int ox = lo; ox < hi; ++ox) cv.set(x0 + ox, y0 + oy, c);
    if (x0 == x1 && y0 == y1) break;
    int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

// Dashed horizontal or vertical reference line.
void dashed(Canvas& cv, int x0, int y0, int x1, int y1, Rgb c, int thick, int on, int off) {
  bool horiz = y0 == y1;
  int n = horiz ? x1 - x0 : y1 - y0;
  for (int i = 0; i <= n; ++i) {
    if (i % (on + off) >= on) continue;
    for (int t = 0; t < thick; ++t) horiz ? cv.set(x0 + i, y0 + t, c) : cv.set(x0 + t, y0 + i, c);
  }
}

// ---------------------------------------------------------------------------------------------
// Text. Bytes outside ASCII print as '?', one per UTF-8 character.
std::vector<int> glyphs(const std::string& s) {
  std::vector<int> g;
  for (unsigned char ch : s) {
    if (ch >= 0x80 && ch < 0xC0) continue;  // UTF-8 continuation byte
    g.push_back(ch >= 32 && ch <= 126 ? ch - 32 : '?' - 32);
  }
  return g;
}
int text_width(const std::string& s, int scale) {
  size_t n = glyphs(s).size();
  return n ? int(n * kAdvance - 1) * scale : 0;
}
// (x, y): top-left corner of the first capital.
void text(Canvas& cv, int x, int y, const std::string& s, int scale, Rgb c) {
  for (int g : glyphs(s)) {
    for (int r = 0; r < kRows; ++r)
      for (int col = 0; col < kGlyphW; ++col)
        if (kFont[g][r] >> (kGlyphW - 1 - col) & 1)
          for (int a = 0; a < scale; ++a)
            for (int b = 0; b < scale; ++b) cv.set(x + col * scale + b, y + r * scale + a, c);
    x += kAdvance * scale;
  }
}
// Reads bottom to top: (x, y) is where the tops of the capitals start (left) at the text's start (bottom).
void text_up(Canvas& cv, int x, int y, const std::string& s, int scale, Rgb c) {
  for (int g : glyphs(s)) {
    for (int r = 0; r < kRows; ++r)
      for (int col = 0; col < kGlyphW; ++col)
        if (kFont[g][r] >> (kGlyphW - 1 - col) & 1)
          for (int a = 0; a < scale; ++a)
            for (int b = 0; b < scale; ++b) cv.set(x + r * scale + a, y - col * scale - b, c);
    y -= kAdvance * scale;
  }
}
// Text with a white 1 px halo, readable over grid and data.
void text_halo(Canvas& cv, int x, int y, const std::string& s, int scale, Rgb c) {
  for (int dy = -1; dy <= 1; ++dy)
    for (int dx = -1; dx <= 1; ++dx)
      if (dx || dy) text(cv, x + dx, y + dy, s, scale, kWhite);
  text(cv, x, y, s, scale, c);
}

// ---------------------------------------------------------------------------------------------
// Numbers and ticks.
std::string trim_zeros(std::string s) {
  if (s.find('.') == std::string::npos) return s;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}
std::string fixed(double v, int dec) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", dec, v);
  std::string s = trim_zeros(buf);
  return s == "-0" ? "0" : s;
}

// v at resolution `step`; `maxabs` is the largest magnitude on the same axis (picks e-notation).
std::string format_at(double v, double step, double maxabs) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::fabs(v) < step * 1e-6) return "0";
  int k = int(std::floor(std::log10(step) + 1e-9));
  double a = std::fabs(v), ar = std::round(a / step) * step;  // what will print (999.99 -> 1k)
  if (ar >= 1000 && a < 1000) a = ar;
  if (maxabs < 0.01 || a >= 1e15) {
    int e = int(std::floor(std::log10(a) + 1e-12));
    int dec = std::clamp(e - k, 0, 3);
    std::string m = fixed(v / std::pow(10.0, e), dec);
    if (std::fabs(std::atof(m.c_str())) >= 10) ++e, m = fixed(v / std::pow(10.0, e), dec);
    return m + "e" + std::to_string(e);
  }
  if (a >= 1000) {
    static const char* kSuffix[] = {"", "k", "M", "G", "T"};
    int u = std::min(4, int(std::floor(std::log10(a) / 3 + 1e-12)));
    int dec = std::clamp(3 * u - k, 0, 3);
    std::string m = fixed(v / std::pow(10.0, 3 * u), dec);
    if (u < 4 && std::fabs(std::atof(m.c_str())) >= 1000) ++u, m = fixed(v / std::pow(10.0, 3 * u), dec);
    return m + kSuffix[u];
  }
  return fixed(v, std::clamp(-k, 0, 6));
}

double nice_step(double raw) {  // smallest 1, 2 or 5 x 10^k >= raw
  if (!(raw > 0) || !std::isfinite(raw)) return 1;
  double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw * (1 - 1e-9)) return m * p;
  return 10 * p;
}
double next_step(double step) { return nice_step(step * 1.5); }

std::vector<double> ticks_in(double lo, double hi, double step) {
  std::vector<double> t;
  double i0 = std::ceil(lo / step - 1e-9), i1 = std::floor(hi / step + 1e-9);
  if (i1 - i0 > 1000) return t;
  for (double i = i0; i <= i1; ++i) t.push_back(std::fabs(i) < 0.5 ? 0.0 : i * step);
  return t;
}

struct Axis {
  double lo = 0, hi = 1;  // log10 units on a log axis
  bool log = false;
  double p0 = 0, p1 = 1;  // pixels of lo and hi
  std::vector<double> ticks, minor;  // data units
  std::vector<std::string> labels;
  double px(double v) const {
    double t = ((log ? std::log10(v) : v) - lo) / (hi - lo);
    return p0 + t * (p1 - p0);
  }
};

// Linear ticks at least min_px apart whose labels (plus a gap) fit between them.
void linear_ticks(Axis& ax, double length_px, double min_px, bool integers, bool horizontal, int scale) {
  double range = ax.hi - ax.lo;
  double step = nice_step(range / std::max(1.0, length_px / min_px));
  if (integers) step = std::max(step, 1.0);
  for (int iter = 0; iter < 40; ++iter) {
    ax.ticks = ticks_in(ax.lo, ax.hi, step);
    double maxabs = 0;
    for (double t : ax.ticks) maxabs = std::max(maxabs, std::fabs(t));
    ax.labels.clear();
    int widest = 0;
    for (double t : ax.ticks) {
      ax.labels.push_back(format_at(t, step, maxabs));
      widest = std::max(widest, text_width(ax.labels.back(), scale));
    }
    double need = horizontal ? widest + 14 * scale : (kCap + 10) * scale;
    if (ax.ticks.size() <= 2 || step / range * length_px >= need) break;
    step = next_step(step);
  }
}

void log_ticks(Axis& ax, double length_px, int scale) {
  int d0 = int(std::ceil(ax.lo - 1e-9)), d1 = int(std::floor(ax.hi + 1e-9));
  double per_decade = length_px / (ax.hi - ax.lo);
  auto inside = [&](double v) { double l = std::log10(v); return l >= ax.lo - 1e-9 && l <= ax.hi + 1e-9; };
  ax.ticks.clear();
  ax.minor.clear();
  if (d1 - d0 + 1 >= 2) {
    int every = std::max(1, int(std::ceil((kCap + 12) * scale / per_decade)));
    for (int d = d0; d <= d1; ++d)
      (((d % every) + every) % every == 0 ? ax.ticks : ax.minor).push_back(std::pow(10.0, d));
  } else {
    for (double mults : {0.0, 1.0})
      if (ax.ticks.size() < 2) {
        ax.ticks.clear();
        for (int d = int(std::floor(ax.lo)); d <= int(std::ceil(ax.hi)); ++d)
          for (int m = 1; m <= 9; ++m)
            if ((mults > 0 || m == 1 || m == 2 || m == 5) && inside(m * std::pow(10.0, d)))
              ax.ticks.push_back(m * std::pow(10.0, d));
      }
  }
  if (per_decade >= 100)  // light 2..9 x 10^k grid, where there is room for it
    for (int d = int(std::floor(ax.lo)); d <= int(std::ceil(ax.hi)); ++d)
      for (int m = 2; m <= 9; ++m)
        if (inside(m * std::pow(10.0, d))) ax.minor.push_back(m * std::pow(10.0, d));
  ax.labels.clear();
  for (double t : ax.ticks) ax.labels.push_back(format_number(t));
}

// A pixel coordinate, clamped far outside any canvas so that rounding cannot overflow.
int ipx(double v) { return int(std::lround(std::clamp(v, -1e6, 1e6))); }

std::optional<double> finite_or_none(std::optional<double> v) {
  return v && std::isfinite(*v) ? v : std::nullopt;
}

bool is_bar(const Series& s) { return s.style == "bar"; }
bool is_points(const Series& s) { return s.style == "points"; }

}  // namespace

uint32_t palette(size_t i) {
  // Okabe & Ito (2008), a palette that stays distinct under the common colour-vision deficiencies.
  static const uint32_t kColors[] = {0x0072B2, 0xE69F00, 0x009E73, 0xD55E00,
                                     0xCC79A7, 0x56B4E9, 0x000000, 0xF0E442};
  return kColors[i % (sizeof kColors / sizeof kColors[0])];
}

std::string format_number(double v, double step) {
  double a = std::fabs(v);
  if (!(step > 0)) step = a > 0 && std::isfinite(a) ? std::pow(10.0, std::floor(std::log10(a)) - 2) : 1;
  return format_at(v, step, a);
}

std::vector<uint8_t> render_rgb(const Chart& c, int* w_out, int* h_out) {
  // Axis limits the caller fixed (NaN/inf count as not fixed).
  const auto xmin = finite_or_none(c.xmin), xmax = finite_or_none(c.xmax);
  const auto ymin = finite_or_none(c.ymin), ymax = finite_or_none(c.ymax);
  const int W = c.width, H = c.height;
  MT_CHECK(W >= 240 && H >= 160 && W <= 8192 && H <= 8192, "plot: chart size ", W, "x", H,
           " is outside 240x160 .. 8192x8192");
  const int s = std::clamp(c.text_scale > 0 ? c.text_scale : (W >= 1600 ? 2 : 1), 1, 4);
  const int cap = kCap * s, desc = 2 * s;
  Canvas cv(W, H);

  // --- The series, validated; x defaults to 0, 1, 2, ...
  struct Prep {
    const Series* s;
    std::vector<double> x;
    Rgb color;
  };
  std::vector<Prep> prep;
  for (size_t i = 0; i < c.series.size(); ++i) {
    const Series& sr = c.series[i];
    MT_CHECK(sr.style == "line" || sr.style == "points" || sr.style == "bar", "plot: series '", sr.label,
             "' has style '", sr.style, "'; expected line, points or bar");
    MT_CHECK(sr.x.empty() || sr.x.size() == sr.y.size(), "plot: series '", sr.label, "' has ", sr.x.size(),
             " x values but ", sr.y.size(), " y values");
    Prep p{&sr, sr.x, rgb(sr.color.value_or(palette(i)))};
    if (p.x.empty())
      for (size_t j = 0; j < sr.y.size(); ++j) p.x.push_back(double(j));
    prep.push_back(std::move(p));
  }
  if (c.logy) {
    MT_CHECK(!ymin || *ymin > 0, "plot: ymin ", *ymin, " must be > 0 on a log axis");
    MT_CHECK(!ymax || *ymax > 0, "plot: ymax ", *ymax, " must be > 0 on a log axis");
  }
  auto valid = [&](double x, double y) { return std::isfinite(x) && std::isfinite(y) && (!c.logy || y > 0); };

  // --- Data ranges.
  const double inf = std::numeric_limits<double>::infinity();
  double xlo = inf, xhi = -inf, ylo = inf, yhi = -inf;
  bool any_data = false, int_x = true, int_y = true, any_bar = false, only_lines = true;
  std::vector<double> bar_xs;
  for (const Prep& p : prep)
    for (size_t j = 0; j < p.x.size(); ++j) {
      double x = p.x[j], y = p.s->y[j];
      if (!valid(x, y)) continue;
      any_data = true;
      xlo = std::min(xlo, x), xhi = std::max(xhi, x), ylo = std::min(ylo, y), yhi = std::max(yhi, y);
      int_x = int_x && x == std::round(x);
      int_y = int_y && y == std::round(y);
      if (is_bar(*p.s)) any_bar = true, bar_xs.push_back(x);
      if (!is_bar(*p.s) && !is_points(*p.s)) continue;
      only_lines = false;
    }
  for (const auto& [y, label] : c.hlines)
    if (std::isfinite(y) && (!c.logy || y > 0)) ylo = std::min(ylo, y), yhi = std::max(yhi, y), int_y = int_y && y == std::round(y);
  for (const auto& [x, label] : c.vlines)
    if (std::isfinite(x)) xlo = std::min(xlo, x), xhi = std::max(xhi, x), int_x = int_x && x == std::round(x);
  for (const auto& [x, label] : c.xticks)
    if (std::isfinite(x)) xlo = std::min(xlo, x), xhi = std::max(xhi, x);
  double bar_gap = 1;
  std::sort(bar_xs.begin(), bar_xs.end());
  bar_xs.erase(std::unique(bar_xs.begin(), bar_xs.end()), bar_xs.end());
  if (bar_xs.size() >= 2) {
    bar_gap = inf;
    for (size_t i = 1; i < bar_xs.size(); ++i) bar_gap = std::min(bar_gap, bar_xs[i] - bar_xs[i - 1]);
  }
  bool bars_from_zero = any_bar && !c.logy;
  if (bars_from_zero) ylo = std::min(ylo, 0.0), yhi = std::max(yhi, 0.0);
  int_x = int_x && any_data, int_y = int_y && any_data;
  if (!(xlo <= xhi)) xlo = 0, xhi = 1;
  if (!(ylo <= yhi)) ylo = c.logy ? 1 : 0, yhi = c.logy ? 10 : 1;

  Axis X, Y;
  Y.log = c.logy;
  // x: tight for lines, a margin for points, half a bar slot for bars.
  if (any_bar) xlo -= bar_gap / 2, xhi += bar_gap / 2;
  if (xlo == xhi) xlo -= 0.5 * std::max(1.0, std::fabs(xlo) * 0.1), xhi += 0.5 * std::max(1.0, std::fabs(xhi) * 0.1);
  else if (!only_lines && !any_bar) {
    double m = 0.03 * (xhi - xlo);
    xlo -= m, xhi += m;
  }
  X.lo = xmin.value_or(xlo), X.hi = xmax.value_or(xhi);
  if (!(X.lo < X.hi)) X.hi = X.lo + 1;
  // y: 5% margins, except at a bar chart's zero baseline.
  {
    double lo = c.logy ? std::log10(ylo) : ylo, hi = c.logy ? std::log10(yhi) : yhi;
    if (lo == hi) {
      double d = c.logy ? 0.5 : (lo == 0 ? 1 : std::fabs(lo) * 0.1);
      lo -= d, hi += d;
    } else {
      double m = 0.05 * (hi - lo);
      if (!(bars_from_zero && lo == 0)) lo -= m;
      if (!(bars_from_zero && hi == 0)) hi += m;
    }
    Y.lo = ymin ? (c.logy ? std::log10(*ymin) : *ymin) : lo;
    Y.hi = ymax ? (c.logy ? std::log10(*ymax) : *ymax) : hi;
    if (!(Y.lo < Y.hi)) {
      if (ymin && !ymax) Y.hi = Y.lo + (c.logy ? 1 : std::max(1.0, std::fabs(Y.lo)));
      else Y.lo = Y.hi - (c.logy ? 1 : std::max(1.0, std::fabs(Y.hi)));
    }
  }

  // --- Layout: margins from the text they hold.
  const int tick = 5 * s;
  const int title_scale = 2 * s;
  const int top = 10 * s + (c.title.empty() ? 4 * s : kCap * title_scale + 12 * s);
  const int bottom = tick + 5 * s + cap + (c.xlabel.empty() ? 0 : 9 * s + cap + desc) + 10 * s;
  const int T = top, B = H - bottom;
  Y.p0 = B - 1, Y.p1 = T;
  if (Y.log) log_ticks(Y, B - T, s);
  else linear_ticks(Y, B - T, 44 * s, int_y, false, s);
  int ylab_w = 0;
  for (const auto& l : Y.labels) ylab_w = std::max(ylab_w, text_width(l, s));
  const int L = 10 * s + (c.ylabel.empty() ? 0 : cap + desc + 8 * s) + ylab_w + 5 * s + tick;
  int right = 20 * s, R = W - right;
  auto make_x_ticks = [&] {
    X.p0 = L, X.p1 = R - 1;
    if (!c.xticks.empty()) {
      X.ticks.clear(), X.labels.clear();
      for (const auto& [x, label] : c.xticks)
        if (x >= X.lo && x <= X.hi) X.ticks.push_back(x), X.labels.push_back(label);
    } else {
      linear_ticks(X, R - L, 90 * s, int_x, true, s);
    }
  };
  make_x_ticks();
  if (!X.ticks.empty()) {
    int overhang = int(X.px(X.ticks.back())) + text_width(X.labels.back(), s) / 2 + 6 * s - (W - 1);
    if (overhang > 0) R -= overhang, make_x_ticks();
  }
  MT_CHECK(R - L >= 40 && B - T >= 40, "plot: chart ", W, "x", H, " is too small for its labels");

  // --- Grid.
  Rect plot{L, T, R, B};
  for (double v : Y.minor) {
    int y = ipx((Y.px(v)));
    if (y > T && y < B - 1) cv.fill(L, y, R, y + 1, kGridMinor);
  }
  for (double v : Y.ticks) {
    int y = ipx((Y.px(v)));
    if (y > T && y < B - 1) cv.fill(L, y, R, y + 1, kGrid);
  }
  if (!any_bar)
    for (double v : X.ticks) {
      int x = ipx((X.px(v)));
      if (x > L && x < R - 1) cv.fill(x, T, x + 1, B, kGrid);
    }

  // --- Reference lines (under the data).
  cv.clip = plot;
  for (const auto& [y, label] : c.hlines)
    if (std::isfinite(y) && (!c.logy || y > 0)) {
      int py = ipx((Y.px(y)));
      dashed(cv, L, py, R - 1, py, kRef, s, 6 * s, 4 * s);
    }
  for (const auto& [x, label] : c.vlines)
    if (std::isfinite(x)) {
      int px = ipx((X.px(x)));
      dashed(cv, px, T, px, B - 1, kRef, s, 6 * s, 4 * s);
    }

  // --- Data: bars, then lines, then points.
  int n_bar_series = 0, n_bars = 0;
  for (const Prep& p : prep)
    if (is_bar(*p.s)) {
      ++n_bar_series;
      for (size_t j = 0; j < p.x.size(); ++j) n_bars += valid(p.x[j], p.s->y[j]);
    }
  struct BarLabel {
    int x, y;
    std::string text;
  };
  std::vector<BarLabel> bar_labels;
  int bar_index = 0;
  const double base_y = c.logy ? double(B - 1) : std::clamp(Y.px(0.0), double(T), double(B - 1));
  for (const Prep& p : prep) {
    if (!is_bar(*p.s)) continue;
    double slot = 0.8 * bar_gap / n_bar_series;
    for (size_t j = 0; j < p.x.size(); ++j) {
      double x = p.x[j], y = p.s->y[j];
      if (!valid(x, y)) continue;
      double xc = x - 0.4 * bar_gap + (bar_index + 0.5) * slot;
      int x0 = ipx((X.px(xc - slot / 2))), x1 = ipx((X.px(xc + slot / 2)));
      if (x1 - x0 >= 6) ++x0, --x1;  // a hairline of white between neighbours
      x1 = std::max(x1, x0 + 1);
      double py = Y.px(y);
      int y0 = ipx(std::min(py, base_y)), y1 = ipx(std::max(py, base_y));
      cv.fill(x0, y0, x1, std::max(y1, y0 + 1), p.color);
      std::string lab = format_number(y);
      if (n_bars <= 40 && text_width(lab, s) <= (x1 - x0) + 8 * s)
        bar_labels.push_back({(x0 + x1) / 2 - text_width(lab, s) / 2, y >= 0 || c.logy ? y0 - 4 * s - cap : y1 + 4 * s, lab});
    }
    ++bar_index;
  }
  for (const Prep& p : prep) {
    if (is_bar(*p.s) || is_points(*p.s)) continue;
    size_t n = p.x.size();
    for (size_t j = 0; j < n; ++j) {
      if (!valid(p.x[j], p.s->y[j])) continue;
      double x = X.px(p.x[j]), y = Y.px(p.s->y[j]);
      bool prev = j > 0 && valid(p.x[j - 1], p.s->y[j - 1]);
      bool next = j + 1 < n && valid(p.x[j + 1], p.s->y[j + 1]);
      if (prev) line(cv, X.px(p.x[j - 1]), Y.px(p.s->y[j - 1]), x, y, p.color, 2 * s);
      else if (!next && std::fabs(x) < 1e7 && std::fabs(y) < 1e7) cv.disk(x, y, 3.0 * s, p.color);  // lone point
    }
  }
  for (const Prep& p : prep) {
    if (!is_points(*p.s)) continue;
    for (size_t j = 0; j < p.x.size(); ++j) {
      if (!valid(p.x[j], p.s->y[j])) continue;
      double x = X.px(p.x[j]), y = Y.px(p.s->y[j]);
      if (std::fabs(x) < 1e7 && std::fabs(y) < 1e7) cv.disk(x, y, 3.0 * s, p.color);
    }
  }
  for (const BarLabel& b : bar_labels) {
    int y = b.y < T + 2 ? T + 2 : b.y;
    text_halo(cv, b.x, y, b.text, s, kText);
  }
  cv.clip = {0, 0, W, H};

  // --- Frame, ticks, tick labels.
  cv.outline(L - 1, T - 1, R + 1, B + 1, kFrame);
  for (size_t i = 0; i < Y.ticks.size(); ++i) {
    int y = ipx((Y.px(Y.ticks[i])));
    if (y < T - 1 || y > B) continue;
    cv.fill(L - 1 - tick, y, L - 1, y + 1, kFrame);
    text(cv, L - 1 - tick - 4 * s - text_width(Y.labels[i], s), y - cap / 2, Y.labels[i], s, kTickText);
  }
  int last_x_label_end = -1 << 30;
  for (size_t i = 0; i < X.ticks.size(); ++i) {
    int x = ipx((X.px(X.ticks[i])));
    if (x < L - 1 || x > R) continue;
    cv.fill(x, B + 1, x + 1, B + 1 + tick, kFrame);
    int tw = text_width(X.labels[i], s), x0 = x - tw / 2;
    if (x0 < last_x_label_end + 6 * s) continue;  // custom labels that would collide
    text(cv, x0, B + 1 + tick + 4 * s, X.labels[i], s, kTickText);
    last_x_label_end = x0 + tw;
  }

  // --- Labels of the reference lines.
  cv.clip = plot;
  for (const auto& [y, label] : c.hlines)
    if (!label.empty() && std::isfinite(y) && (!c.logy || y > 0)) {
      int py = ipx((Y.px(y))), tw = text_width(label, s);
      int ty = py - 4 * s - cap;
      if (ty < T + 3 * s) ty = py + 5 * s;
      text_halo(cv, R - 6 * s - tw, ty, label, s, kRef);
    }
  for (const auto& [x, label] : c.vlines)
    if (!label.empty() && std::isfinite(x)) {
      int px = ipx((X.px(x))), tw = text_width(label, s);
      int tx = px + 5 * s;
      if (tx + tw > R - 4 * s) tx = px - 5 * s - tw;
      text_halo(cv, tx, B - 6 * s - cap - desc, label, s, kRef);
    }
  if (!any_data) {
    std::string msg = "no data";
    text(cv, (L + R) / 2 - text_width(msg, 2 * s) / 2, (T + B) / 2 - kCap * s, msg, 2 * s, kFrame);
  }

  // --- Legend, in the corner where it hides the fewest drawn pixels.
  std::vector<const Prep*> entries;
  for (const Prep& p : prep)
    if (!p.s->label.empty()) entries.push_back(&p);
  if (!entries.empty()) {
    const int row = cap + desc + 5 * s, sample = 20 * s, pad = 7 * s;
    int lw = 0;
    for (const Prep* p : entries) lw = std::max(lw, text_width(p->s->label, s));
    int bw = pad + sample + 6 * s + lw + pad, bh = pad + int(entries.size()) * row - 5 * s + pad - desc;
    int inset = 8 * s;
    const int cand[4][2] = {{R - inset - bw, T + inset}, {L + inset, T + inset},
                            {R - inset - bw, B - inset - bh}, {L + inset, B - inset - bh}};
    long best = -1;
    int bx = cand[0][0], by = cand[0][1];
    for (const auto& cd : cand) {
      long covered = 0;
      for (int y = std::max(cd[1], 0); y < std::min(cd[1] + bh, H); ++y)
        for (int x = std::max(cd[0], 0); x < std::min(cd[0] + bw, W); ++x) {
          Rgb v = cv.get(x, y);
          covered += !(v == kWhite || v == kGrid || v == kGridMinor);
        }
      if (best < 0 || covered < best) best = covered, bx = cd[0], by = cd[1];
    }
    cv.fill(bx, by, bx + bw, by + bh, kWhite);
    cv.outline(bx, by, bx + bw, by + bh, Rgb{0xC8, 0xC8, 0xC8});
    for (size_t i = 0; i < entries.size(); ++i) {
      const Prep& p = *entries[i];
      int ty = by + pad + int(i) * row, mid = ty + cap / 2, sx = bx + pad;
      if (is_bar(*p.s)) cv.fill(sx + sample / 2 - cap / 2, ty, sx + sample / 2 - cap / 2 + cap, ty + cap, p.color);
      else if (is_points(*p.s)) cv.disk(sx + sample / 2.0, mid + 0.5, 3.0 * s, p.color);
      else cv.fill(sx, mid, sx + sample, mid + 2 * s, p.color);
      text(cv, sx + sample + 6 * s, ty, p.s->label, s, kText);
    }
  }
  cv.clip = {0, 0, W, H};

  // --- Title and axis labels.
  if (!c.title.empty()) {
    int tw = text_width(c.title, title_scale);
    int x = std::max(8 * s, std::min((L + R) / 2 - tw / 2, W - 8 * s - tw));
    text(cv, x, 10 * s, c.title, title_scale, kText);
  }
  if (!c.xlabel.empty())
    text(cv, (L + R) / 2 - text_width(c.xlabel, s) / 2, B + 1 + tick + 4 * s + cap + 9 * s, c.xlabel, s, kText);
  if (!c.ylabel.empty())
    text_up(cv, 10 * s, (T + B) / 2 + text_width(c.ylabel, s) / 2, c.ylabel, s, kText);

  *w_out = W, *h_out = H;
  return std::move(cv.px);
}

// ---------------------------------------------------------------------------------------------
// PNG output. libpng reports errors by longjmp, so the encoder keeps no C++ objects with destructors
// alive across its setjmp.
namespace {
struct PngError {
  char msg[256];
};
void on_png_error(png_structp png, png_const_charp m) {
  auto* e = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(e->msg, sizeof e->msg, "libpng: %s", m);
  longjmp(png_jmpbuf(png), 1);
}
void on_png_warning(png_structp, png_const_charp) {}

const char* encode_png(FILE* f, const uint8_t* rgb, int w, int h, PngError* err) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, err, on_png_error, on_png_warning);
  if (!png) return "libpng: cannot create a write struct";
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    return "libpng: cannot create an info struct";
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return err->msg;
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, png_uint_32(w), png_uint_32(h), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < h; ++y) png_write_row(png, rgb + size_t(y) * size_t(w) * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return nullptr;
}
}  // namespace

void write_png_rgb(const std::vector<uint8_t>& rgb, int w, int h, const std::string& path) {
  MT_CHECK(w > 0 && h > 0 && rgb.size() == size_t(w) * size_t(h) * 3, "plot: cannot write ", path, ": ",
           rgb.size(), " bytes is not ", w, "x", h, " RGB");
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("plot: cannot write ", path, ": ", std::strerror(errno));
  PngError perr{};
  std::string why;
  if (const char* e = encode_png(f, rgb.data(), w, h, &perr)) why = e;
  if (why.empty() && std::fflush(f) != 0) why = std::strerror(errno);
  if (why.empty() && ::fsync(fileno(f)) != 0) why = std::strerror(errno);
  if (std::fclose(f) != 0 && why.empty()) why = std::strerror(errno);
  if (why.empty() && std::rename(tmp.c_str(), path.c_str()) != 0) why = std::strerror(errno);
  if (!why.empty()) {
    std::remove(tmp.c_str());
    fail("plot: cannot write ", path, ": ", why);
  }
  // Make the rename itself durable.
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) ::fsync(fd), ::close(fd);
}

void write_png(const Chart& c, const std::string& path) {
  int w = 0, h = 0;
  std::vector<uint8_t> rgb = render_rgb(c, &w, &h);
  write_png_rgb(rgb, w, h, path);
}

}  // namespace mt::plot
