#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

namespace llmc {

namespace {
bool g_quiet = false;
}

void set_quiet(bool q) { g_quiet = q; }
bool quiet() { return g_quiet; }

void log_info(const std::string& msg) {
  if (!g_quiet) std::fprintf(stderr, "%s\n", msg.c_str());
}
void log_warn(const std::string& msg) { std::fprintf(stderr, "llmc: warning: %s\n", msg.c_str()); }

Progress::Progress(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total),
      tty_(::isatty(2) != 0), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() { finish(); }

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::step(uint64_t n, const std::string& msg) {
  done_ += n;
  if (g_quiet) return;
  if (tty_) {
    const auto now = std::chrono::steady_clock::now();
    if (done_ < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    draw(msg);
  } else {
    const int decile = total_ ? int(done_ * 10 / total_) : 10;
    if (!msg.empty() || decile != last_decile_) {
      last_decile_ = decile;
      const double t = elapsed_s();
      std::fprintf(stderr, "%s: %llu/%llu %s%s%s (%.1fs)\n", label_.c_str(),
                   (unsigned long long)done_, (unsigned long long)total_, unit_.c_str(),
                   msg.empty() ? "" : " ", msg.c_str(), t);
    }
  }
}

void Progress::draw(const std::string& msg) {
  const double t = elapsed_s();
  const double frac = total_ ? double(done_) / double(total_) : 1.0;
  const double rate = t > 0 ? double(done_) / t : 0;
  const double eta = rate > 0 && total_ > done_ ? double(total_ - done_) / rate : 0;
  constexpr int W = 28;
  char bar[W + 1];
  const int fill = int(frac * W + 0.5);
  for (int i = 0; i < W; ++i) bar[i] = i < fill ? '#' : '.';
  bar[W] = 0;
  std::fprintf(stderr, "\r\033[K%s [%s] %3.0f%% %llu/%llu %s  %.1f %s/s  ETA %.0fs %s",
               label_.c_str(), bar, frac * 100, (unsigned long long)done_,
               (unsigned long long)total_, unit_.c_str(), rate, unit_.c_str(), eta, msg.c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (g_quiet) return;
  if (tty_) {
    draw("");
    std::fprintf(stderr, "\n");
  }
}

}  // namespace llmc
