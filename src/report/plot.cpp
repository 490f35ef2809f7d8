// Charts drawn by PLplot's cairo PNG device into memory, then written atomically. See plot.h.
//
// The layout (margins, ticks, labels, the legend's corner) is decided here, in pixels of the page, and
// PLplot draws. One PLplot stream per chart uses two coordinate systems: "page" (world = pixels of the
// whole image, y up) for text, frame and ticks, and "plot" (the plot area, world = 0..1 across each
// axis) for what PLplot must clip to the plot area: grid, bands, bars, lines, points. Data reach PLplot
// already mapped to 0..1 (log10 first on a log axis), so it never sees 1e300 or a span of 1e-300.
#include "report/plot.h"

#include <plplot.h>
#include <stdio.h>  // open_memstream (POSIX)

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

#include "util/atomic_file.h"
#include "util/error.h"

namespace mt::plot {
namespace {

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
  if (!(i1 - i0 <= 1000)) return t;
  for (double i = i0; i <= i1; ++i) t.push_back(std::fabs(i) < 0.5 ? 0.0 : i * step);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Text and colour.

// The cairo device maps 72 pixels to the inch; pango reads PLplot's character height as points at 96 dpi.
constexpr double kMmPerPx = 25.4 / 72, kMmPerFontPx = 25.4 / 96;

bool one_of(const char* set, unsigned char ch) { return ch && std::strchr(set, ch); }

// Width in pixels of s at font size font_px, from the advance widths of DejaVu Sans (fontconfig's sans
// on Debian) in a few classes, rounded up. PLplot does not export its own measure (plstrl), and spacing
// labels apart only needs an estimate that errs wide.
double text_width(const std::string& s, double font_px) {
  double em = 0;
  for (unsigned char ch : s) {
    if (ch >= 0x80)
      em += ch >= 0xC0 ? 0.8 : 0.0;  // one per UTF-8 character
    else if (one_of("ijlI.,:;'!|", ch))
      em += 0.3;
    else if (one_of(" ftr()[]/-", ch))
      em += 0.42;
    else if (one_of("mwMW%", ch))
      em += 0.98;
    else if (std::isupper(ch) || one_of("+=<>~#&@", ch))
      em += 0.8;
    else
      em += 0.64;
  }
  return em * font_px;
}

// PLplot reads '#' as the start of an escape ("#u": superscript...), "##" as a literal '#'; the cairo
// device drops strings of 500 characters or more.
std::string escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (o.size() >= 400 && (static_cast<unsigned char>(ch) & 0xC0) != 0x80) return o + "...";
    o += ch;
    if (ch == '#') o += '#';
  }
  return o;
}

// PLplot draws with indexed colours (cmap0). kScratch is rewritten before each use; each series owns two
// slots (solid, translucent) because pllegend needs all of them at once.
constexpr PLINT kBackground = 0, kScratch = 1, kLegendBg = 2, kLegendEdge = 3, kLegendText = 4, kFirstSeries = 6;
constexpr uint32_t kWhite = 0xFFFFFF, kText = 0x222222, kTickText = 0x4A4A4A, kFrame = 0x9A9A9A, kGrid = 0xE3E3E3,
                   kGridMinor = 0xF1F1F1, kRef = 0x666666, kErrorBar = 0x333333;
constexpr double kBandAlpha = 0.2;

void set_slot(PLINT slot, uint32_t rgb, double alpha = 1) {
  plscol0a(slot, PLINT(rgb >> 16 & 255), PLINT(rgb >> 8 & 255), PLINT(rgb & 255), alpha);
}
void use_color(uint32_t rgb, double alpha = 1) {
  set_slot(kScratch, rgb, alpha);
  plcol0(kScratch);
}

// Text centred vertically on y (PLplot's reference point); just: 0 left, 0.5 centre, 1 right of x.
void text(double x, double y, const std::string& s, double font_px, double just, uint32_t rgb, bool up = false,
          bool bold = false) {
  plschr(font_px * kMmPerFontPx, 1.0);
  plsfont(PL_FCI_SANS, PL_FCI_UPRIGHT, bold ? PL_FCI_BOLD : PL_FCI_MEDIUM);
  use_color(rgb);
  plptex(x, y, up ? 0 : 1, up ? 1 : 0, just, escape(s).c_str());
}

void fill_rect(double x0, double y0, double x1, double y1) {
  PLFLT xs[4] = {x0, x1, x1, x0}, ys[4] = {y0, y0, y1, y1};
  plfill(4, xs, ys);
}

// ---------------------------------------------------------------------------------------------
// The chart, validated, with its axes.

bool is_bar(const Series& s) { return s.style == "bar"; }
bool is_points(const Series& s) { return s.style == "points"; }

struct Prep {
  const Series* s;
  std::vector<double> x;  // x filled in: 0, 1, 2, ... where the series gave none
  uint32_t color;
  PLINT slot;             // cmap0 slot of its colour; slot + 1: translucent
  bool interval = false;  // has lower/upper
  int bar_index = 0;      // among the bar series
  size_t drawn = 0;       // values it can draw
};

struct Axis {
  double lo = 0, hi = 1;  // log10 units on a log axis
  bool log = false;
  double p0 = 0, p1 = 1;             // page pixels of lo and hi
  std::vector<double> ticks, minor;  // data units
  std::vector<std::string> labels;
  // 0..1 across the axis; bounded so that PLplot's integer device coordinates cannot overflow.
  double norm(double v) const { return std::clamp(((log ? std::log10(v) : v) - lo) / (hi - lo), -1e3, 1e3); }
  double px(double v) const { return p0 + norm(v) * (p1 - p0); }
};

struct Scene {
  std::vector<Prep> prep;
  Axis X, Y;
  bool any_data = false, any_bar = false;
  double bar_gap = 1;  // smallest distance between two bars' x
  int n_bar_series = 0;
  bool ok(double x, double y) const { return std::isfinite(x) && std::isfinite(y) && (!Y.log || y > 0); }
  // The interval of series p at j, when it can be drawn.
  bool interval(const Prep& p, size_t j, double* lo, double* hi) const {
    if (!p.interval || !ok(p.x[j], p.s->lower[j]) || !ok(p.x[j], p.s->upper[j])) return false;
    *lo = std::min(p.s->lower[j], p.s->upper[j]), *hi = std::max(p.s->lower[j], p.s->upper[j]);
    return true;
  }
};

std::optional<double> finite_or_none(std::optional<double> v) { return v && std::isfinite(*v) ? v : std::nullopt; }

void check_series(const Series& s, const std::string& path) {
  MT_CHECK(s.style == "line" || s.style == "points" || is_bar(s), "plot: ", path, ": series '", s.label,
           "' has style '", s.style, "'; expected line, points or bar");
  MT_CHECK(s.x.empty() || s.x.size() == s.y.size(), "plot: ", path, ": series '", s.label, "' has ", s.x.size(),
           " x values but ", s.y.size(), " y values");
  MT_CHECK(s.lower.size() == s.upper.size() && (s.lower.empty() || s.lower.size() == s.y.size()), "plot: ", path,
           ": series '", s.label, "' has ", s.lower.size(), " lower and ", s.upper.size(), " upper interval ends for ",
           s.y.size(), " values");
}

// The series with their colours, bar slots and counts of drawable values.
void prepare_series(const Chart& c, Scene& sc, const std::string& path) {
  for (size_t i = 0; i < c.series.size(); ++i) {
    const Series& s = c.series[i];
    check_series(s, path);
    Prep p{&s, s.x, s.color.value_or(palette(i)), PLINT(kFirstSeries + 2 * i)};
    p.interval = !s.lower.empty();
    if (p.x.empty())
      for (size_t j = 0; j < s.y.size(); ++j) p.x.push_back(double(j));
    if (is_bar(s)) p.bar_index = sc.n_bar_series++;
    for (size_t j = 0; j < s.y.size(); ++j) p.drawn += sc.ok(p.x[j], s.y[j]);
    sc.any_data = sc.any_data || p.drawn > 0;
    sc.any_bar = sc.any_bar || (is_bar(s) && p.drawn > 0);
    sc.prep.push_back(std::move(p));
  }
}

// What the axes must show: the data, intervals, reference lines and category ticks.
struct Extent {
  double xlo = std::numeric_limits<double>::infinity(), xhi = -xlo, ylo = xlo, yhi = -xlo;
  bool only_lines = true;
  void x(double v) { xlo = std::min(xlo, v), xhi = std::max(xhi, v); }
  void y(double v) { ylo = std::min(ylo, v), yhi = std::max(yhi, v); }
};

// The extent, and the smallest distance between two bars' x (sets the bar width).
Extent data_extent(const Chart& c, Scene& sc) {
  Extent e;
  std::vector<double> bar_xs;
  for (const Prep& p : sc.prep)
    for (size_t j = 0; j < p.x.size(); ++j) {
      double x = p.x[j], y = p.s->y[j], lo, hi;
      if (sc.interval(p, j, &lo, &hi)) e.y(lo), e.y(hi), e.x(x);
      if (!sc.ok(x, y)) continue;
      e.x(x), e.y(y);
      if (is_bar(*p.s)) bar_xs.push_back(x);
      e.only_lines = e.only_lines && !is_bar(*p.s) && !is_points(*p.s);
    }
  for (const auto& [y, label] : c.hlines)
    if (sc.ok(0, y)) e.y(y);
  for (const auto& [x, label] : c.vlines)
    if (std::isfinite(x)) e.x(x);
  for (const auto& [x, label] : c.xticks)
    if (std::isfinite(x)) e.x(x);
  std::sort(bar_xs.begin(), bar_xs.end());
  bar_xs.erase(std::unique(bar_xs.begin(), bar_xs.end()), bar_xs.end());
  if (bar_xs.size() >= 2) {
    sc.bar_gap = std::numeric_limits<double>::infinity();
    for (size_t i = 1; i < bar_xs.size(); ++i) sc.bar_gap = std::min(sc.bar_gap, bar_xs[i] - bar_xs[i - 1]);
  }
  if (sc.any_bar && !sc.Y.log) e.y(0);  // bars stand on zero
  if (!(e.xlo <= e.xhi)) e.xlo = 0, e.xhi = 1;
  if (!(e.ylo <= e.yhi)) e.ylo = sc.Y.log ? 1 : 0, e.yhi = sc.Y.log ? 10 : 1;
  return e;
}

// x: tight for lines, a margin for points, half a bar slot for bars; then the caller's limits.
void fit_x(const Chart& c, Scene& sc, Extent e) {
  if (sc.any_bar) e.xlo -= sc.bar_gap / 2, e.xhi += sc.bar_gap / 2;
  if (e.xlo == e.xhi) {
    double d = 0.5 * std::max(1.0, std::fabs(e.xlo) * 0.1);
    e.xlo -= d, e.xhi += d;
  } else if (!e.only_lines && !sc.any_bar) {
    double m = 0.03 * (e.xhi - e.xlo);
    e.xlo -= m, e.xhi += m;
  }
  const auto xmin = finite_or_none(c.xmin), xmax = finite_or_none(c.xmax);
  sc.X.lo = xmin.value_or(e.xlo), sc.X.hi = xmax.value_or(e.xhi);
  if (!(sc.X.lo < sc.X.hi)) sc.X.hi = sc.X.lo + std::max(1.0, std::fabs(sc.X.lo));
}

// y: 5% margins, except at a bar chart's zero baseline; then the caller's limits.
void fit_y(const Chart& c, Scene& sc, const Extent& e) {
  const bool log = sc.Y.log, bars_from_zero = sc.any_bar && !log;
  double lo = log ? std::log10(e.ylo) : e.ylo, hi = log ? std::log10(e.yhi) : e.yhi;
  if (lo == hi) {
    double d = log ? 0.5 : (lo == 0 ? 1 : std::fabs(lo) * 0.1);
    lo -= d, hi += d;
  } else {
    double m = 0.05 * (hi - lo);
    if (!(bars_from_zero && lo == 0)) lo -= m;
    if (!(bars_from_zero && hi == 0)) hi += m;
  }
  const auto ymin = finite_or_none(c.ymin), ymax = finite_or_none(c.ymax);
  sc.Y.lo = ymin ? (log ? std::log10(*ymin) : *ymin) : lo;
  sc.Y.hi = ymax ? (log ? std::log10(*ymax) : *ymax) : hi;
  if (!(sc.Y.lo < sc.Y.hi)) {
    double d = log ? 1 : std::max(1.0, std::fabs(ymin && !ymax ? sc.Y.lo : sc.Y.hi));
    if (ymin && !ymax)
      sc.Y.hi = sc.Y.lo + d;
    else
      sc.Y.lo = sc.Y.hi - d;
  }
}

Scene make_scene(const Chart& c, const std::string& path) {
  MT_CHECK(c.width >= 240 && c.height >= 160 && c.width <= 8192 && c.height <= 8192, "plot: ", path, ": chart size ",
           c.width, "x", c.height, " is outside 240x160 .. 8192x8192");
  if (c.logy) {
    MT_CHECK(!c.ymin || !(*c.ymin <= 0), "plot: ", path, ": ymin ", *c.ymin, " must be > 0 on a log axis");
    MT_CHECK(!c.ymax || !(*c.ymax <= 0), "plot: ", path, ": ymax ", *c.ymax, " must be > 0 on a log axis");
  }
  Scene sc;
  sc.Y.log = c.logy;
  prepare_series(c, sc, path);
  const Extent e = data_extent(c, sc);
  fit_x(c, sc, e);
  fit_y(c, sc, e);
  return sc;
}

// ---------------------------------------------------------------------------------------------
// Layout.

struct Layout {
  double W, H;                // the page, pixels
  double L, R, B, T;          // the plot area in page pixels, y up
  double u;                   // size factor: 1 at 1000x600
  double font, small, title;  // text sizes in pixels: axis labels, tick labels and legend, title
  double pad, tick;
};

// Whether every drawn x (or y) is a whole number: ticks then step by 1 or more.
bool whole_numbers(const Scene& sc, bool x_axis) {
  bool whole = sc.any_data;
  for (const Prep& p : sc.prep)
    for (size_t j = 0; j < p.x.size(); ++j) {
      const double v = x_axis ? p.x[j] : p.s->y[j];
      whole = whole && (!sc.ok(p.x[j], p.s->y[j]) || v == std::round(v));
    }
  return whole;
}

// Linear ticks at least min_px apart whose labels (plus a gap) fit between them.
void linear_ticks(Axis& ax, double length_px, double min_px, bool integers, bool horizontal, double font) {
  double range = ax.hi - ax.lo;
  double step = nice_step(range / std::max(1.0, length_px / min_px));
  if (integers) step = std::max(step, 1.0);
  for (int iter = 0; iter < 40; ++iter) {
    ax.ticks = ticks_in(ax.lo, ax.hi, step);
    double maxabs = 0, widest = 0;
    for (double t : ax.ticks) maxabs = std::max(maxabs, std::fabs(t));
    ax.labels.clear();
    for (double t : ax.ticks) {
      ax.labels.push_back(format_at(t, step, maxabs));
      widest = std::max(widest, text_width(ax.labels.back(), font));
    }
    double need = horizontal ? widest + 1.2 * font : 1.8 * font;
    if (ax.ticks.size() <= 2 || step / range * length_px >= need) break;
    step = next_step(step);
  }
}

// 1, 2, 5 x 10^k where decades are tall, else decades where two or more are in view (thinned to fit),
// else 1, 2, 5 (or 1..9) x 10^k; a light grid at 2..9 x 10^k where a decade is tall enough for it.
void log_ticks(Axis& ax, double length_px, double font) {
  int d0 = int(std::ceil(ax.lo - 1e-9)), d1 = int(std::floor(ax.hi + 1e-9));
  double per_decade = length_px / (ax.hi - ax.lo);
  auto inside = [&](double v) {
    double l = std::log10(v);
    return l >= ax.lo - 1e-9 && l <= ax.hi + 1e-9;
  };
  ax.ticks.clear(), ax.minor.clear();
  if (d1 - d0 + 1 >= 2 && per_decade >= 7 * font) {  // room to label 2 and 5 x 10^k too: easier to read off
    for (int d = int(std::floor(ax.lo)); d <= int(std::ceil(ax.hi)); ++d)
      for (int m : {1, 2, 5})
        if (inside(m * std::pow(10.0, d))) ax.ticks.push_back(m * std::pow(10.0, d));
  } else if (d1 - d0 + 1 >= 2) {
    int every = std::max(1, int(std::ceil(1.8 * font / per_decade)));
    for (int d = d0; d <= d1; ++d)
      (((d % every) + every) % every == 0 ? ax.ticks : ax.minor).push_back(std::pow(10.0, d));
  } else {
    for (bool all : {false, true}) {
      if (ax.ticks.size() >= 2) break;
      ax.ticks.clear();
      for (int d = int(std::floor(ax.lo)); d <= int(std::ceil(ax.hi)); ++d)
        for (int m = 1; m <= 9; ++m)
          if ((all || m == 1 || m == 2 || m == 5) && inside(m * std::pow(10.0, d)))
            ax.ticks.push_back(m * std::pow(10.0, d));
    }
  }
  if (per_decade >= 100)
    for (int d = int(std::floor(ax.lo)); d <= int(std::ceil(ax.hi)); ++d)
      for (int m = 2; m <= 9; ++m)
        if (inside(m * std::pow(10.0, d))) ax.minor.push_back(m * std::pow(10.0, d));
  ax.labels.clear();
  for (double t : ax.ticks) ax.labels.push_back(format_number(t));
}

void x_ticks(const Chart& c, Scene& sc, const Layout& lay) {
  Axis& X = sc.X;
  X.p0 = lay.L, X.p1 = lay.R;
  if (c.xticks.empty()) {
    linear_ticks(X, lay.R - lay.L, 90 * lay.u, whole_numbers(sc, true), true, lay.small);
    return;
  }
  X.ticks.clear(), X.labels.clear();
  for (const auto& [x, label] : c.xticks)
    if (x >= X.lo && x <= X.hi) X.ticks.push_back(x), X.labels.push_back(label);
}

// Margins from the text they hold: ticks first on y (its length is known), then its labels' width sets
// the left margin and so the x axis's length.
Layout make_layout(const Chart& c, Scene& sc, const std::string& path) {
  Layout lay{};
  lay.W = c.width, lay.H = c.height;
  const double u = c.text_scale > 0 ? c.text_scale : std::clamp(std::min(lay.W / 1000, lay.H / 600), 0.8, 4.0);
  lay.u = u, lay.font = 14 * u, lay.small = 13 * u, lay.title = 17 * u, lay.pad = 12 * u, lay.tick = 5 * u;
  const double gap = 6 * u;
  lay.T = lay.H - lay.pad - (c.title.empty() ? 4 * u : 1.3 * lay.title + 6 * u);
  lay.B = lay.pad + (c.xlabel.empty() ? 0 : 1.2 * lay.font + 4 * u) + 1.1 * lay.small + gap + lay.tick;
  sc.Y.p0 = lay.B, sc.Y.p1 = lay.T;
  if (sc.Y.log)
    log_ticks(sc.Y, lay.T - lay.B, lay.small);
  else
    linear_ticks(sc.Y, lay.T - lay.B, 44 * u, whole_numbers(sc, false), false, lay.small);
  double widest = 0;
  for (const auto& l : sc.Y.labels) widest = std::max(widest, text_width(l, lay.small));
  lay.L = lay.pad + (c.ylabel.empty() ? 0 : 1.2 * lay.font + 6 * u) + widest + gap + lay.tick;
  lay.R = lay.W - lay.pad - 8 * u;
  x_ticks(c, sc, lay);
  if (!sc.X.ticks.empty()) {  // the last x label may hang over the right edge
    double over = sc.X.px(sc.X.ticks.back()) + text_width(sc.X.labels.back(), lay.small) / 2 - (lay.W - lay.pad);
    if (over > 0) lay.R -= over, x_ticks(c, sc, lay);
  }
  MT_CHECK(lay.R - lay.L >= 40 && lay.T - lay.B >= 40, "plot: ", path, ": chart ", c.width, "x", c.height,
           " is too small for its labels");
  return lay;
}

// ---------------------------------------------------------------------------------------------
// Drawing. "Page": world = page pixels; "plot": world = 0..1 over the plot area, clipped to it.

void page_mode(const Layout& lay) {
  plvpor(0, 1, 0, 1);
  plwind(0, lay.W, 0, lay.H);
}
void plot_mode(const Layout& lay) {
  plsvpa(lay.L * kMmPerPx, lay.R * kMmPerPx, lay.B * kMmPerPx, lay.T * kMmPerPx);
  plwind(0, 1, 0, 1);
}

// Liang-Barsky: clips segment a-b to the box; false if nothing is left.
bool clip_segment(double& ax, double& ay, double& bx, double& by, double x0, double y0, double x1, double y1) {
  double t0 = 0, t1 = 1, dx = bx - ax, dy = by - ay;
  const double p[4] = {-dx, dx, -dy, dy}, q[4] = {ax - x0, x1 - ax, ay - y0, y1 - ay};
  for (int i = 0; i < 4; ++i) {
    if (p[i] == 0) {
      if (q[i] < 0) return false;
      continue;
    }
    double t = q[i] / p[i];
    if (p[i] < 0)
      t0 = std::max(t0, t);
    else
      t1 = std::min(t1, t);
    if (t0 > t1) return false;
  }
  double nax = ax + t0 * dx, nay = ay + t0 * dy;
  bx = ax + t1 * dx, by = ay + t1 * dy, ax = nax, ay = nay;
  return true;
}

// A filled disk of radius r pixels at (x, y) in plot coordinates, with a white rim that keeps points
// apart from the lines under them.
void disk(const Layout& lay, double x, double y, double r, PLINT slot, bool rim) {
  if (x < -0.05 || x > 1.05 || y < -0.05 || y > 1.05) return;
  const double sx = 1 / (lay.R - lay.L), sy = 1 / (lay.T - lay.B);
  if (rim) {
    use_color(kWhite);
    plarc(x, y, (r + 1.2 * lay.u) * sx, (r + 1.2 * lay.u) * sy, 0, 360, 0, true);
  }
  plcol0(slot);
  plarc(x, y, r * sx, r * sy, 0, 360, 0, true);
}

void grid(const Scene& sc, const Layout& lay) {
  plwidth(lay.u);
  use_color(kGridMinor);
  for (double v : sc.Y.minor) pljoin(0, sc.Y.norm(v), 1, sc.Y.norm(v));
  use_color(kGrid);
  for (double v : sc.Y.ticks) pljoin(0, sc.Y.norm(v), 1, sc.Y.norm(v));
  if (!sc.any_bar)
    for (double v : sc.X.ticks) pljoin(sc.X.norm(v), 0, sc.X.norm(v), 1);
}

void reference_lines(const Chart& c, const Scene& sc, const Layout& lay) {
  const PLINT mark = PLINT(6 * lay.u * kMmPerPx * 1000), space = PLINT(4 * lay.u * kMmPerPx * 1000);  // micrometres
  plstyl(1, &mark, &space);
  plwidth(1.3 * lay.u);
  use_color(kRef);
  for (const auto& [y, label] : c.hlines)
    if (sc.ok(0, y)) pljoin(0, sc.Y.norm(y), 1, sc.Y.norm(y));
  for (const auto& [x, label] : c.vlines)
    if (std::isfinite(x)) pljoin(sc.X.norm(x), 0, sc.X.norm(x), 1);
  plstyl(0, nullptr, nullptr);
}

// Translucent bands between lower and upper, one polygon per unbroken run.
void band(const Scene& sc, const Prep& p) {
  std::vector<PLFLT> xs, lo, hi;
  auto flush = [&] {
    if (xs.size() >= 2) {
      std::vector<PLFLT> px(xs), py(lo);
      px.insert(px.end(), xs.rbegin(), xs.rend());
      py.insert(py.end(), hi.rbegin(), hi.rend());
      plfill(PLINT(px.size()), px.data(), py.data());
    }
    xs.clear(), lo.clear(), hi.clear();
  };
  plcol0(p.slot + 1);
  for (size_t j = 0; j < p.x.size(); ++j) {
    double l, h;
    if (!sc.interval(p, j, &l, &h)) {
      flush();
      continue;
    }
    xs.push_back(sc.X.norm(p.x[j])), lo.push_back(sc.Y.norm(l)), hi.push_back(sc.Y.norm(h));
  }
  flush();
}

// Dense series (more than a value per 2 px) get thinner lines, or their noise merges into a band.
double line_width(const Prep& p, const Layout& lay) {
  return double(p.drawn) > 0.5 * (lay.R - lay.L) ? 1.3 * lay.u : 2 * lay.u;
}

// A line broken at values it cannot draw; a value alone between two gaps becomes a dot.
void polyline(const Scene& sc, const Layout& lay, const Prep& p) {
  std::vector<PLFLT> xs, ys;
  auto flush = [&] {
    if (xs.size() >= 2) plline(PLINT(xs.size()), xs.data(), ys.data());
    xs.clear(), ys.clear();
  };
  plcol0(p.slot);
  plwidth(line_width(p, lay));
  const size_t n = p.x.size();
  for (size_t j = 0; j < n; ++j) {
    const bool here = sc.ok(p.x[j], p.s->y[j]);
    const bool next = j + 1 < n && sc.ok(p.x[j + 1], p.s->y[j + 1]);
    const bool prev = j > 0 && sc.ok(p.x[j - 1], p.s->y[j - 1]);
    if (here && !prev && !next) disk(lay, sc.X.norm(p.x[j]), sc.Y.norm(p.s->y[j]), 3 * lay.u, p.slot, false);
    if (!here || !next) {
      flush();
      continue;
    }
    double ax = sc.X.norm(p.x[j]), ay = sc.Y.norm(p.s->y[j]);
    double bx = sc.X.norm(p.x[j + 1]), by = sc.Y.norm(p.s->y[j + 1]);
    const double a0x = ax, a0y = ay;
    if (!clip_segment(ax, ay, bx, by, -1, -1, 2, 2)) {
      flush();
      continue;
    }
    if (xs.empty() || ax != a0x || ay != a0y) flush(), xs.push_back(ax), ys.push_back(ay);
    xs.push_back(bx), ys.push_back(by);
  }
  flush();
}

// The extent of bar j of series p, in plot coordinates: slots side by side within 70% of the spacing.
std::pair<double, double> bar_extent(const Scene& sc, const Prep& p, size_t j) {
  const double slot = 0.7 * sc.bar_gap / sc.n_bar_series;
  const double xc = p.x[j] - 0.35 * sc.bar_gap + (p.bar_index + 0.5) * slot;
  return {sc.X.norm(xc - 0.44 * slot), sc.X.norm(xc + 0.44 * slot)};
}
double bar_base(const Scene& sc) { return sc.Y.log ? 0.0 : std::clamp(sc.Y.norm(0.0), -0.01, 1.01); }

void error_bar(double x, double lo, double hi, double half_cap) {
  pljoin(x, lo, x, hi);
  if (half_cap <= 0) return;
  pljoin(x - half_cap, lo, x + half_cap, lo);
  pljoin(x - half_cap, hi, x + half_cap, hi);
}

void bars(const Scene& sc, const Layout& lay, const Prep& p) {
  plcol0(p.slot);
  for (size_t j = 0; j < p.x.size(); ++j)
    if (sc.ok(p.x[j], p.s->y[j])) {
      auto [x0, x1] = bar_extent(sc, p, j);
      fill_rect(x0, bar_base(sc), x1, std::clamp(sc.Y.norm(p.s->y[j]), -0.01, 1.01));
    }
  use_color(kErrorBar);
  plwidth(1.5 * lay.u);
  for (size_t j = 0; j < p.x.size(); ++j) {
    double lo, hi;
    if (!sc.interval(p, j, &lo, &hi)) continue;
    auto [x0, x1] = bar_extent(sc, p, j);
    double half_cap = std::min(0.25 * (x1 - x0), 12 * lay.u / (lay.R - lay.L));
    error_bar((x0 + x1) / 2, std::clamp(sc.Y.norm(lo), -1.0, 2.0), std::clamp(sc.Y.norm(hi), -1.0, 2.0), half_cap);
  }
}

void points(const Scene& sc, const Layout& lay, const Prep& p) {
  plcol0(p.slot);
  plwidth(1.5 * lay.u);
  for (size_t j = 0; j < p.x.size(); ++j) {
    double lo, hi;
    if (sc.interval(p, j, &lo, &hi))
      error_bar(sc.X.norm(p.x[j]), std::clamp(sc.Y.norm(lo), -1.0, 2.0), std::clamp(sc.Y.norm(hi), -1.0, 2.0),
                4 * lay.u / (lay.R - lay.L));
  }
  for (size_t j = 0; j < p.x.size(); ++j)
    if (sc.ok(p.x[j], p.s->y[j])) disk(lay, sc.X.norm(p.x[j]), sc.Y.norm(p.s->y[j]), 3.5 * lay.u, p.slot, true);
}

// Everything clipped to the plot area: grid, bands, bars, reference lines, lines, points.
void draw_data(const Chart& c, const Scene& sc, const Layout& lay) {
  plot_mode(lay);
  grid(sc, lay);
  for (const Prep& p : sc.prep)
    if (!is_bar(*p.s) && p.interval) band(sc, p);
  for (const Prep& p : sc.prep)
    if (is_bar(*p.s)) bars(sc, lay, p);
  reference_lines(c, sc, lay);  // over bars (a chance line must show), under lines and points
  for (const Prep& p : sc.prep)
    if (!is_bar(*p.s) && !is_points(*p.s)) polyline(sc, lay, p);
  for (const Prep& p : sc.prep)
    if (is_points(*p.s)) points(sc, lay, p);
}

// Frame, ticks and tick labels, in page coordinates.
void axes(const Scene& sc, const Layout& lay) {
  plwidth(lay.u);
  use_color(kFrame);
  PLFLT fx[5] = {lay.L, lay.R, lay.R, lay.L, lay.L}, fy[5] = {lay.B, lay.B, lay.T, lay.T, lay.B};
  plline(5, fx, fy);
  for (size_t i = 0; i < sc.Y.ticks.size(); ++i) {
    const double y = sc.Y.px(sc.Y.ticks[i]);
    if (y < lay.B - 0.5 || y > lay.T + 0.5) continue;
    use_color(kFrame);
    pljoin(lay.L - lay.tick, y, lay.L, y);
    text(lay.L - lay.tick - 4 * lay.u, y, sc.Y.labels[i], lay.small, 1, kTickText);
  }
  double last_end = -1e9;
  for (size_t i = 0; i < sc.X.ticks.size(); ++i) {
    const double x = sc.X.px(sc.X.ticks[i]), w = text_width(sc.X.labels[i], lay.small);
    if (x < lay.L - 0.5 || x > lay.R + 0.5) continue;
    use_color(kFrame);
    pljoin(x, lay.B - lay.tick, x, lay.B);
    if (x - w / 2 < last_end + 6 * lay.u) continue;  // category labels that would collide
    text(x, lay.B - lay.tick - 4 * lay.u - 0.55 * lay.small, sc.X.labels[i], lay.small, 0.5, kTickText);
    last_end = x + w / 2;
  }
}

// ---------------------------------------------------------------------------------------------
// Labels inside the plot area and the legend go where they hide the least: a map of the cells (6 px)
// that hold drawn data, to which each placed label is added.

struct Box {
  double x0, y0, x1, y1;  // page pixels
};

struct Coverage {
  double L, B, cell;
  int nx, ny;
  std::vector<uint8_t> on;
  Coverage(const Layout& lay, double c)
      : L(lay.L),
        B(lay.B),
        cell(c),
        nx(int((lay.R - lay.L) / c) + 1),
        ny(int((lay.T - lay.B) / c) + 1),
        on(size_t(nx) * ny, 0) {}
  void mark(double x, double y) {
    int i = int((x - L) / cell), j = int((y - B) / cell);
    if (x >= L && y >= B && i < nx && j < ny) on[size_t(j) * nx + i] = 1;
  }
  void segment(double ax, double ay, double bx, double by) {
    if (!clip_segment(ax, ay, bx, by, L, B, L + nx * cell, B + ny * cell)) return;
    int steps = int(std::hypot(bx - ax, by - ay) / (cell / 2)) + 1;
    for (int k = 0; k <= steps; ++k) mark(ax + (bx - ax) * k / steps, ay + (by - ay) * k / steps);
  }
  // Cells of the box: counted, or (fill) marked.
  long count(const Box& b, bool fill = false) {
    long n = 0;
    for (int j = std::max(0, int((b.y0 - B) / cell)); j <= std::min(ny - 1, int((b.y1 - B) / cell)); ++j)
      for (int i = std::max(0, int((b.x0 - L) / cell)); i <= std::min(nx - 1, int((b.x1 - L) / cell)); ++i) {
        n += on[size_t(j) * nx + i];
        if (fill) on[size_t(j) * nx + i] = 1;
      }
    return n;
  }
  // The candidate that hides the fewest cells (the first on a tie), marked as taken.
  size_t place(const std::vector<Box>& cands) {
    size_t best = 0;
    long least = -1;
    for (size_t i = 0; i < cands.size(); ++i)
      if (long n = count(cands[i]); least < 0 || n < least) least = n, best = i;
    count(cands[best], true);
    return best;
  }
};

Coverage coverage(const Scene& sc, const Layout& lay) {
  Coverage cv(lay, 6 * lay.u);
  for (const Prep& p : sc.prep)
    for (size_t j = 0; j < p.x.size(); ++j) {
      if (!sc.ok(p.x[j], p.s->y[j])) continue;
      const double x = sc.X.px(p.x[j]), y = sc.Y.px(p.s->y[j]);
      if (is_bar(*p.s)) {
        auto [x0, x1] = bar_extent(sc, p, j);
        const double y0 = lay.B + bar_base(sc) * (lay.T - lay.B);
        for (double xx = lay.L + x0 * (lay.R - lay.L); xx <= lay.L + x1 * (lay.R - lay.L); xx += cv.cell / 2)
          cv.segment(xx, y0, xx, y);
      } else if (is_points(*p.s) || j + 1 == p.x.size() || !sc.ok(p.x[j + 1], p.s->y[j + 1])) {
        cv.mark(x, y);
      } else {
        cv.segment(x, y, sc.X.px(p.x[j + 1]), sc.Y.px(p.s->y[j + 1]));
      }
    }
  return cv;
}

// The box of a label centred on y at x (just: 0 left, 0.5 centre, 1 right of x), with a margin.
Box label_box(double x, double y, const std::string& s, double font, double just, const Layout& lay) {
  const double w = text_width(s, font), x0 = x - just * w;
  return {x0 - 3 * lay.u, y - 0.65 * font, x0 + w + 3 * lay.u, y + 0.65 * font};
}

// Text on a translucent white box, readable over grid and data.
void boxed_text(double x, double y, const std::string& s, double font, double just, uint32_t rgb, const Layout& lay) {
  const Box b = label_box(x, y, s, font, just, lay);
  use_color(kWhite, 0.85);
  fill_rect(b.x0, b.y0, b.x1, b.y1);
  text(x, y, s, font, just, rgb);
}

// Values above the bars (above the interval where there is one), when there are few enough to read.
void bar_labels(const Scene& sc, const Layout& lay, Coverage& cv) {
  size_t n = 0;
  for (const Prep& p : sc.prep) n += is_bar(*p.s) ? p.drawn : 0;
  if (n == 0 || n > 40) return;
  for (const Prep& p : sc.prep) {
    if (!is_bar(*p.s)) continue;
    for (size_t j = 0; j < p.x.size(); ++j) {
      double y = p.s->y[j], lo, hi;
      if (!sc.ok(p.x[j], y)) continue;
      auto [x0, x1] = bar_extent(sc, p, j);
      const std::string s = format_number(y);
      const double width_px = (x1 - x0) * (lay.R - lay.L), cx = lay.L + (x0 + x1) / 2 * (lay.R - lay.L);
      if (text_width(s, lay.small) > width_px + 8 * lay.u || cx < lay.L || cx > lay.R) continue;
      const bool has = sc.interval(p, j, &lo, &hi), down = y < 0 && !sc.Y.log;
      const double end = down ? (has ? std::min(y, lo) : y) : (has ? std::max(y, hi) : y);
      double py = sc.Y.px(end) + (down ? -0.8 : 0.8) * lay.small;
      py = std::clamp(py, lay.B + 0.7 * lay.small, lay.T - 0.7 * lay.small);
      boxed_text(cx, py, s, lay.small, 0.5, kText, lay);
      cv.count(label_box(cx, py, s, lay.small, 0.5, lay), true);
    }
  }
}

// A label at either end of each horizontal line (above or below it) and at the bottom or top of each
// vertical line (right or left of it).
void reference_labels(const Chart& c, const Scene& sc, const Layout& lay, Coverage& cv) {
  const double f = lay.small, off = 0.8 * f, in = 6 * lay.u;
  for (const auto& [y, label] : c.hlines) {
    if (label.empty() || !sc.ok(0, y) || sc.Y.norm(y) < 0 || sc.Y.norm(y) > 1) continue;
    const double py = sc.Y.px(y), up = std::min(py + off, lay.T - 0.7 * f), down = std::max(py - off, lay.B + 0.7 * f);
    const double xs[4] = {lay.R - in, lay.R - in, lay.L + in, lay.L + in}, ys[4] = {up, down, up, down};
    std::vector<Box> cands;
    for (int k = 0; k < 4; ++k) cands.push_back(label_box(xs[k], ys[k], label, f, k < 2 ? 1 : 0, lay));
    const size_t k = cv.place(cands);
    boxed_text(xs[k], ys[k], label, f, k < 2 ? 1 : 0, kRef, lay);
  }
  for (const auto& [x, label] : c.vlines) {
    if (label.empty() || !std::isfinite(x) || sc.X.norm(x) < 0 || sc.X.norm(x) > 1) continue;
    const double px = sc.X.px(x), w = text_width(label, f), bottom = lay.B + in + 0.6 * f, top = lay.T - in - 0.6 * f;
    std::vector<std::pair<double, double>> at;  // (just, y): right of the line where it fits, else left
    for (double y : {bottom, top}) {
      if (px + in + w < lay.R - 4 * lay.u) at.push_back({0, y});
      if (px - in - w > lay.L + 4 * lay.u) at.push_back({1, y});
    }
    if (at.empty()) at.push_back({0, bottom});
    std::vector<Box> cands;
    for (auto [just, y] : at) cands.push_back(label_box(just ? px - in : px + in, y, label, f, just, lay));
    const auto [just, y] = at[cv.place(cands)];
    boxed_text(just ? px - in : px + in, y, label, f, just, kRef, lay);
  }
}

// ---------------------------------------------------------------------------------------------
// Legend: pllegend, in the corner of the plot area that hides the least.

struct Entries {
  std::vector<PLINT> opt, text_colors, box_colors, box_patterns, line_colors, line_styles, symbol_colors,
      symbol_numbers;
  std::vector<PLFLT> box_scales, box_widths, line_widths, symbol_scales;
  std::vector<std::string> text;
  void add(const Prep& p, double line_width) {
    const bool bar = is_bar(*p.s), pts = is_points(*p.s);
    opt.push_back(bar   ? PL_LEGEND_COLOR_BOX
                  : pts ? PL_LEGEND_SYMBOL
                        : (p.interval ? PL_LEGEND_COLOR_BOX | PL_LEGEND_LINE : PL_LEGEND_LINE));
    text.push_back(escape(p.s->label)), text_colors.push_back(kLegendText);
    box_colors.push_back(bar ? p.slot : p.slot + 1), box_patterns.push_back(0);
    box_scales.push_back(bar ? 0.7 : 0.55), box_widths.push_back(1);
    line_colors.push_back(p.slot), line_styles.push_back(1), line_widths.push_back(line_width);
    symbol_colors.push_back(p.slot), symbol_scales.push_back(0.9), symbol_numbers.push_back(2);
  }
};

void legend(const Scene& sc, const Layout& lay, Coverage& cv) {
  Entries e;
  double widest = 0;
  for (const Prep& p : sc.prep)
    if (!p.s->label.empty() && p.drawn > 0)
      e.add(p, std::max(line_width(p, lay), 2 * lay.u)), widest = std::max(widest, text_width(p.s->label, lay.small));
  if (e.opt.empty()) return;
  // pllegend's own measures: a character is 0.75 of the font size; rows 2 characters apart.
  const double ch = 0.75 * lay.small, sample = 28 * lay.u, inset = 10 * lay.u;
  const double w = 0.8 * ch + sample + 0.8 * ch + widest, h = 2.0 * ch * double(e.opt.size());
  const PLINT corners[4] = {PL_POSITION_TOP | PL_POSITION_RIGHT, PL_POSITION_TOP | PL_POSITION_LEFT,
                            PL_POSITION_BOTTOM | PL_POSITION_RIGHT, PL_POSITION_BOTTOM | PL_POSITION_LEFT};
  std::vector<Box> cands;
  for (PLINT corner : corners) {
    const double x0 = corner & PL_POSITION_RIGHT ? lay.R - inset - w : lay.L + inset;
    const double y0 = corner & PL_POSITION_TOP ? lay.T - inset - h : lay.B + inset;
    cands.push_back({x0, y0, x0 + w, y0 + h});
  }
  const PLINT pos = corners[cv.place(cands)];
  const char* symbol = "\u25CF";  // BLACK CIRCLE
  std::vector<const char*> text, symbols(e.opt.size(), symbol);
  for (const auto& t : e.text) text.push_back(t.c_str());
  plot_mode(lay);
  plschr(lay.small * kMmPerFontPx, 1.0);
  plsfont(PL_FCI_SANS, PL_FCI_UPRIGHT, PL_FCI_MEDIUM);
  plwidth(lay.u);
  PLFLT lw = 0, lh = 0;
  pllegend(&lw, &lh, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, PL_POSITION_VIEWPORT | PL_POSITION_INSIDE | pos,
           inset / (lay.R - lay.L), inset / (lay.T - lay.B), sample / (lay.R - lay.L), kLegendBg, kLegendEdge, 1,
           PLINT(e.opt.size()), 1, PLINT(e.opt.size()), e.opt.data(), 0.8, 1.0, 2.0, 0, e.text_colors.data(),
           text.data(), e.box_colors.data(), e.box_patterns.data(), e.box_scales.data(), e.box_widths.data(),
           e.line_colors.data(), e.line_styles.data(), e.line_widths.data(), e.symbol_colors.data(),
           e.symbol_scales.data(), e.symbol_numbers.data(), symbols.data());
  page_mode(lay);
}

// Title, axis labels, and a note where there is nothing to draw.
void labels(const Chart& c, const Scene& sc, const Layout& lay) {
  if (!c.title.empty()) {
    const double w = text_width(c.title, lay.title);
    const double x = std::max(lay.pad, std::min(lay.L, lay.W - lay.pad - w));
    text(x, lay.H - lay.pad - 0.6 * lay.title, c.title, lay.title, 0, kText, false, true);
  }
  if (!c.xlabel.empty()) text((lay.L + lay.R) / 2, lay.pad + 0.6 * lay.font, c.xlabel, lay.font, 0.5, kText);
  if (!c.ylabel.empty()) text(lay.pad + 0.6 * lay.font, (lay.B + lay.T) / 2, c.ylabel, lay.font, 0.5, kText, true);
  if (!sc.any_data) text((lay.L + lay.R) / 2, (lay.B + lay.T) / 2, "no data", 1.5 * lay.font, 0.5, kFrame);
}

// ---------------------------------------------------------------------------------------------
// PLplot sessions.

// PLplot keeps global state (the current stream, the exit handler, the driver table): one chart at a time.
std::mutex& plplot_mutex() {
  static std::mutex m;
  return m;
}

// The chart being written, for on_plexit's message (set under plplot_mutex).
std::string current_path;

// PLplot calls plexit() on errors it cannot recover from, which ends the process unless the handler
// leaves by other means: an mt::Error, caught by write_png's caller (PLplot's C frames have unwind tables).
int on_plexit(const char* msg) { fail("plot: ", current_path, ": PLplot: ", msg ? msg : "fatal error"); }

// Asking first keeps plinit() from exiting the process when the cairo driver is not installed.
void require_pngcairo(const std::string& path) {
  static bool found = false;
  if (found) return;
  const char* menus[256] = {};
  const char* names[256] = {};
  const char** pm = menus;
  const char** pn = names;
  int n = 256;
  plgDevs(&pm, &pn, &n);
  for (int i = 0; i < n && !found; ++i) found = names[i] && std::strcmp(names[i], "pngcairo") == 0;
  MT_CHECK(found, "plot: ", path, ": PLplot has no pngcairo device (Debian: apt-get install plplot-driver-cairo)");
}

// One PLplot stream drawing one page into memory. The constructor makes a new stream current; finish()
// or the destructor ends (and frees) it and makes the previous one current again, so charts share no
// state and an exception leaks nothing.
class Session {
 public:
  Session(const Layout& lay, size_t n_series, const std::string& path) {
    plsexit(on_plexit);
    require_pngcairo(path);
    plgstrm(&prev_);
    PLINT id = -1;
    plmkstrm(&id);
    MT_CHECK(id >= 0, "plot: ", path, ": PLplot has no free stream");
    open_ = true;
    try {
      start(lay, n_series, path);
    } catch (...) {
      end();
      throw;
    }
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    end();
    std::free(buf_);
  }

  // Ends the page (the device encodes the PNG into memory); returns its bytes.
  std::string finish(const std::string& path) {
    end();
    MT_CHECK(err_ == 0, "plot: ", path, ": PLplot: ", msg_);
    return std::string(buf_ ? buf_ : "", len_);
  }

 private:
  void start(const Layout& lay, size_t n_series, const std::string& path) {
    file_ = open_memstream(&buf_, &len_);
    MT_CHECK(file_, "plot: ", path, ": cannot open a memory stream: ", std::strerror(errno));
    plsError(&err_, msg_);  // plabort() reports here instead of on stderr
    plsdev("pngcairo");
    plsfile(file_);
    plspage(0, 0, PLINT(lay.W), PLINT(lay.H), 0, 0);
    plscmap0n(PLINT(kFirstSeries + 2 * n_series));
    set_slot(kBackground, kWhite);
    set_slot(kLegendBg, kWhite, 0.9);
    set_slot(kLegendEdge, 0xC8C8C8);
    set_slot(kLegendText, kText);
    plinit();
    pladv(0);
  }
  void end() {
    if (!open_) return;
    open_ = false;
    PLINT level = 0;
    plglevel(&level);
    plend1();  // once plinit() ran: writes the page into file_ and closes it (plCloseFile)
    if (level == 0 && file_) std::fclose(file_);
    file_ = nullptr;
    plsstrm(prev_);
  }

  PLINT prev_ = 0, err_ = 0;
  char msg_[2048] = {};
  bool open_ = false;
  FILE* file_ = nullptr;
  char* buf_ = nullptr;
  size_t len_ = 0;
};

uint32_t be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(s[at + i]);
  return v;
}

std::string render(const Chart& c, const std::string& path) {
  Scene sc = make_scene(c, path);
  const Layout lay = make_layout(c, sc, path);
  std::lock_guard<std::mutex> lock(plplot_mutex());
  current_path = path;
  Session session(lay, c.series.size(), path);
  for (const Prep& p : sc.prep) set_slot(p.slot, p.color), set_slot(p.slot + 1, p.color, kBandAlpha);
  draw_data(c, sc, lay);
  page_mode(lay);
  axes(sc, lay);
  Coverage cv = coverage(sc, lay);
  bar_labels(sc, lay, cv);
  reference_labels(c, sc, lay, cv);
  legend(sc, lay, cv);
  labels(c, sc, lay);
  std::string png = session.finish(path);
  // Signature, then the IHDR chunk whose first fields are the width and height.
  MT_CHECK(png.size() > 24 && png.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0 && be32(png, 16) == uint32_t(c.width) &&
               be32(png, 20) == uint32_t(c.height),
           "plot: ", path, ": PLplot's pngcairo device wrote no ", c.width, "x", c.height, " PNG (", png.size(),
           " bytes)");
  return png;
}

}  // namespace

uint32_t palette(size_t i) {
  // Okabe & Ito (2008), a palette that stays distinct under the common colour-vision deficiencies.
  static const uint32_t kColors[] = {0x0072B2, 0xE69F00, 0x009E73, 0xD55E00, 0xCC79A7, 0x56B4E9, 0x000000, 0xF0E442};
  return kColors[i % (sizeof kColors / sizeof kColors[0])];
}

std::string format_number(double v, double step) {
  double a = std::fabs(v);
  if (!(step > 0)) step = a > 0 && std::isfinite(a) ? std::pow(10.0, std::floor(std::log10(a)) - 2) : 1;
  return format_at(v, step, a);
}

void write_png(const Chart& c, const std::string& path) {
  const std::string png = render(c, path);
  try {
    atomic_write(path, png);
  } catch (const Error& e) {
    fail("plot: ", e.what());
  }
}

}  // namespace mt::plot

#if defined(__SANITIZE_ADDRESS__)
#define MT_PLOT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MT_PLOT_ASAN 1
#endif
#endif
#ifdef MT_PLOT_ASAN
// LeakSanitizer: fontconfig's caches, filled by pango when the cairo device first sets text on a thread,
// are held through pango's per-thread font map, which LSan cannot see; they do not grow with the number
// of charts (1, 5 and 20 charts on one thread: the same 65 kB).
extern "C" const char* __lsan_default_suppressions() { return "leak:libfontconfig.so\n"; }
#endif
