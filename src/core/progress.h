// core/progress.h — progress reporting and logging.
//
// Contract: on a TTY (stderr), Progress draws a single updating bar with rate and ETA; otherwise
// it prints one plain log line per step() call that passes a message (or every 10 % when not).
// set_quiet(true) silences both Progress and log_info (warnings still print).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace llmc {

void set_quiet(bool q);
bool quiet();
void log_info(const std::string& msg);
void log_warn(const std::string& msg);

class Progress {
 public:
  Progress(std::string label, uint64_t total, std::string unit = "it");
  ~Progress();
  // Advances by n units; `msg` is shown in the bar or logged as a plain line.
  void step(uint64_t n = 1, const std::string& msg = "");
  void finish();
  double elapsed_s() const;

 private:
  void draw(const std::string& msg);
  std::string label_, unit_;
  uint64_t total_, done_ = 0;
  int last_decile_ = -1;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace llmc
