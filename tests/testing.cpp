#include "testing.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "core/error.h"

namespace llmc::test {

namespace fs = std::filesystem;

fs::path repo_root() { return fs::path(LLMC_SOURCE_DIR); }
fs::path model_dir(const std::string& name) { return repo_root() / "models" / name; }
fs::path data_path(const std::string& rel) { return repo_root() / "tests" / "data" / rel; }

fs::path shared_path(const std::string& rel) {
  for (fs::path base : {repo_root().parent_path() / "shared", repo_root() / "shared"}) {
    if (fs::exists(base / rel)) return base / rel;
  }
  return {};
}

namespace {
std::vector<fs::path>& temps() {
  static std::vector<fs::path> v;
  static bool registered = false;
  if (!registered) {
    registered = true;
    std::atexit([] {
      for (auto& p : temps()) {
        std::error_code ec;
        fs::remove_all(p, ec);
      }
    });
  }
  return v;
}
}  // namespace

fs::path temp_dir(const std::string& tag) {
  static int counter = 0;
  fs::path p = fs::temp_directory_path() /
               ("llmc-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(p);
  fs::create_directories(p);
  temps().push_back(p);
  return p;
}

int run_cli(const std::string& args, std::string* output) {
  const std::string cmd = std::string(LLMC_CLI_PATH) + " " + args + " 2>&1";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  const int st = ::pclose(f);
  if (output) *output = out;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace llmc::test
