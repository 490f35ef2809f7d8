#pragma once
// Small PNG charts (loss curves, loss by position, latency per step, benchmark bars) with no
// dependency beyond libpng: a built-in 5x7 pixel font, 1/2/5 x 10^k ticks, log-y with decade
// ticks, a colour-blind-friendly palette, a legend placed where it hides the least data.
// Deliberately free of libtorch so it compiles fast; callers convert tensors to std::vector first.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mt::plot {

struct Series {
  std::string label;         // shown in the legend; empty: not listed
  std::vector<double> x, y;  // x empty: 0, 1, 2, ... ; else x.size() must equal y.size()
  std::string style = "line";  // "line" (2 px, broken at NaN/inf), "points", "bar"
  std::optional<uint32_t> color = std::nullopt;  // 0xRRGGBB; default: the palette colour for its index
};

struct Chart {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  bool logy = false;                 // points with y <= 0 are skipped on a log axis
  std::optional<double> ymin, ymax;  // else from the data (with a 5% margin)
  std::optional<double> xmin, xmax;  // else from the data
  std::vector<std::pair<double, std::string>> hlines;  // dashed, e.g. {7.62, "chance"}
  std::vector<std::pair<double, std::string>> vlines;  // dashed, e.g. {1024, "window"}
  std::vector<std::pair<double, std::string>> xticks;  // replaces the automatic x ticks (categories)
  int width = 900, height = 520;     // pixels, 240x160 .. 8192x8192
  int text_scale = 0;                // pixel-font scale for labels; 0: 1, or 2 for charts >= 1600 wide
};

// The palette (Okabe-Ito, yellow last), cycled by series index.
uint32_t palette(size_t i);

// Compact number text: 0, 0.25, 12, 1.2k, 3.5M, 3.5e-4. step (> 0) is the resolution to keep,
// e.g. the tick spacing; 0 keeps three significant digits.
std::string format_number(double v, double step = 0);

// Renders to tightly packed RGB rows (top row first); *w, *h receive the size.
std::vector<uint8_t> render_rgb(const Chart& c, int* w, int* h);

// Renders and writes a PNG atomically (path + ".tmp", fsync, rename); throws mt::Error naming the path.
void write_png(const Chart& c, const std::string& path);

// Writes RGB pixels (w*h*3 bytes) as a PNG, atomically as above.
void write_png_rgb(const std::vector<uint8_t>& rgb, int w, int h, const std::string& path);

}  // namespace mt::plot
