// fuzz/fuzz_common.h — helpers shared by the libFuzzer targets (fuzz/*.cpp, built with
// -DLLMC_FUZZ=ON and clang; run by scripts/fuzz.sh).
//
// Every target feeds its bytes to one parser of outside data and accepts exactly two outcomes:
// success, or an llmc::Error. Anything else (a crash, a sanitizer report, another exception,
// a leak, a timeout) is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/progress.h"

namespace llmc::fuzz {

// A per-process scratch directory (in /dev/shm when writable: rewriting a file per input is
// then cheap), created on first use and removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::error_code ec;
    std::filesystem::path base = "/dev/shm";
    if (!std::filesystem::is_directory(base, ec) || ::access(base.c_str(), W_OK) != 0)
      base = std::filesystem::temp_directory_path();
    std::filesystem::path d = base / ("llmc-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    static const std::string keep = d.string();
    std::atexit([] {
      std::error_code e;
      std::filesystem::remove_all(keep, e);
    });
    llmc::set_quiet(true);
    return d;
  }();
  return dir;
}

// Writes data[0, size) to scratch_dir()/name and returns the path.
inline std::filesystem::path scratch_file(const std::string& name, const uint8_t* data, size_t size) {
  const std::filesystem::path p = scratch_dir() / name;
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return p;
}

}  // namespace llmc::fuzz
