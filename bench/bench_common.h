// bench/bench_common.h — what every benchmark records about the machine it ran on.
#pragma once
#include <sys/utsname.h>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

namespace llmc::bench {

// "model name" of the first CPU in /proc/cpuinfo, or "unknown".
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  }
  return "unknown";
}

// 1-minute load average (-1 when unavailable): benchmarks on a busy machine say so.
inline double load_average_1m() {
  double load[3] = {0, 0, 0};
  return getloadavg(load, 3) < 1 ? -1.0 : load[0];
}

// Current UTC time as 2026-12-01T08:00:00Z.
inline std::string utc_now() {
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return date;
}

// "Linux 6.1.0-..." (uname).
inline std::string kernel_release() {
  struct utsname u {};
  uname(&u);
  return std::string(u.sysname) + " " + u.release;
}

// {"cpu", "hardware_concurrency", "threads", "kernel", "load_average_1m", "date"}.
inline nlohmann::json machine_info(int threads) {
  return {{"cpu", cpu_model()},
          {"hardware_concurrency", std::thread::hardware_concurrency()},
          {"threads", threads},
          {"kernel", kernel_release()},
          {"load_average_1m", load_average_1m()},
          {"date", utc_now()}};
}

}  // namespace llmc::bench
