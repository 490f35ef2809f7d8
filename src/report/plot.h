#pragma once
// PNG charts (loss curves, loss by position, latency per step, benchmark bars with intervals), drawn by
// PLplot's cairo PNG device ("pngcairo", Debian: libplplot-dev plplot-driver-cairo fonts-dejavu-core):
// anti-aliased lines and text in fontconfig's sans font, 1/2/5 x 10^k ticks, log-y with decade ticks,
// shaded intervals and error bars, a colour-blind-friendly palette, a legend in the corner where it
// hides the least data. Free of libtorch so it compiles fast; callers convert tensors to std::vector
// first. Safe to call from several threads (PLplot's global state is used under one lock).
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mt::plot {

struct Series {
  std::string label;                   // shown in the legend (when the series has something to draw); empty: not listed
  std::vector<double> x = {}, y = {};  // x empty: 0, 1, 2, ... ; else x.size() must equal y.size()
  std::string style = "line";          // "line" (broken at NaN/inf), "points", "bar"
  std::optional<uint32_t> color = std::nullopt;  // 0xRRGGBB; default: the palette colour for its index
  // An interval per point, e.g. a bootstrap 95% CI: both empty, or both of y.size() (NaN: none at that
  // point). Drawn as a shaded band around a line, as error bars on bars and points.
  std::vector<double> lower = {}, upper = {};
};

struct Chart {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  bool logy = false;                 // values (and interval ends) <= 0 are skipped on a log axis: a line breaks there
  std::optional<double> ymin, ymax;  // else from the data (with a 5% margin); on a log axis both must be > 0
  std::optional<double> xmin, xmax;  // else from the data
  std::vector<std::pair<double, std::string>> hlines;  // dashed, e.g. {7.62, "chance"}
  std::vector<std::pair<double, std::string>> vlines;  // dashed, e.g. {1024, "window"}
  std::vector<std::pair<double, std::string>> xticks;  // replaces the automatic x ticks (categories)
  int width = 1000, height = 600;                      // pixels, 240x160 .. 8192x8192
  int text_scale = 0;                                  // text and line size factor; 0: from the size (1 at 1000x600)
};

// The palette (Okabe-Ito, yellow last), cycled by series index.
uint32_t palette(size_t i);

// Compact number text: 0, 0.25, 12, 1.2k, 3.5M, 3.5e-4. step (> 0) is the resolution to keep,
// e.g. the tick spacing; 0 keeps three significant digits.
std::string format_number(double v, double step = 0);

// Renders the chart and writes it as a PNG of width x height pixels, atomically (a temporary file in the
// same folder, fsync, rename: readers see the old chart or the new one). Throws mt::Error naming the path
// for an invalid chart (mismatched lengths, unknown style, a size out of range, a non-positive log
// limit), a missing PLplot cairo driver or a failed write; no file is left behind then.
void write_png(const Chart& c, const std::string& path);

}  // namespace mt::plot
