// The default download progress display: a redrawn bar on a terminal, else a line per 10 % (logs).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "io/hub.h"

namespace mt::io::hub {

namespace {

using Clock = std::chrono::steady_clock;

struct ProgressState {
  std::string what;
  Clock::time_point start, last_draw;
  int64_t start_bytes = 0, last_done = -1;
  int last_decile = -1;
};

std::string eta_text(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "--:--";
  const long s = static_cast<long>(seconds + 0.5);
  char b[32];
  if (s >= 3600)
    std::snprintf(b, sizeof b, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(b, sizeof b, "%ld:%02ld", s / 60, s % 60);
  return b;
}

// 553 kB, 15.4 GB: three significant digits in the largest unit that keeps the number at least 1.
std::string size_text(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) bytes /= 1000, ++u;
  char b[32];
  std::snprintf(b, sizeof b, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return b;
}

// "12.3 MB / 385.0 MB   3%  45.6 MB/s  ETA 0:08" (without the parts an unknown total leaves out).
std::string progress_text(const ProgressState& st, int64_t done, int64_t total) {
  const double secs = std::chrono::duration<double>(Clock::now() - st.start).count();
  const double rate = secs > 0 ? double(done - st.start_bytes) / secs : 0;
  char b[160];
  if (total > 0)
    std::snprintf(b, sizeof b, "%s / %s %3d%%  %s/s  ETA %s", size_text(double(done)).c_str(),
                  size_text(double(total)).c_str(), int(100.0 * double(done) / double(total)), size_text(rate).c_str(),
                  eta_text(rate > 0 ? double(total - done) / rate : -1).c_str());
  else
    std::snprintf(b, sizeof b, "%s  %s/s", size_text(double(done)).c_str(), size_text(rate).c_str());
  return b;
}

}  // namespace

Progress default_progress() {
  auto st = std::make_shared<ProgressState>();
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  return [st, tty](const std::string& what, int64_t done, int64_t total) {
    const auto now = Clock::now();
    if (what != st->what || done < st->last_done) {  // a new download (or a restart from 0)
      *st = ProgressState{what, now, now - std::chrono::seconds(1), done, -1, -1};
    }
    st->last_done = done;
    const bool end = total >= 0 && done >= total;
    if (tty) {
      // Redrawn at most 5 times a second: a 15 GB file arrives in a hundred thousand pieces.
      if (!end && now - st->last_draw < std::chrono::milliseconds(200)) return;
      st->last_draw = now;
      std::fprintf(stderr, "\r%s: %s\x1b[K%s", what.c_str(), progress_text(*st, done, total).c_str(), end ? "\n" : "");
      std::fflush(stderr);
      return;
    }
    if (total <= 0) return;
    const int decile = int(10 * double(done) / double(total));
    if (decile == st->last_decile) return;
    st->last_decile = decile;
    std::fprintf(stderr, "%s: %s\n", what.c_str(), progress_text(*st, done, total).c_str());
  };
}

}  // namespace mt::io::hub
