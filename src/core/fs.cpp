#include "core/fs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "core/error.h"

namespace llmc {

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(path.string(), ": cannot stat: ", std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(path.string(), ": is a directory, expected a file");
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      fail(path.string(), ": cannot mmap: ", std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }
MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    path_ = std::move(o.path_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(path.string(), ": read error");
  return ss.str();
}

void write_text_file(const fs::path& path, std::string_view text) {
  AtomicPath ap(path);
  {
    std::ofstream out(ap.temp(), std::ios::binary);
    if (!out) fail(path.string(), ": cannot open for writing");
    out.write(text.data(), std::streamsize(text.size()));
    out.flush();
    if (!out) fail(path.string(), ": write error");
  }
  ap.commit();
}

namespace {
std::mutex g_tmp_mu;
std::set<std::string>& live_temps() {
  static std::set<std::string> s;
  return s;
}
std::atomic<uint64_t> g_tmp_counter{0};

void on_signal(int sig) {
  // Best effort: remove live temporaries, then die with the default action.
  for (const auto& p : live_temps()) {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

void install_signal_cleanup() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

AtomicPath::AtomicPath(fs::path final_path) : final_(std::move(final_path)) {
  if (final_.empty()) fail("output path is empty");
  fs::path parent = final_.parent_path();
  if (parent.empty()) parent = ".";
  std::error_code ec;
  if (!fs::exists(parent, ec)) fs::create_directories(parent, ec);
  if (ec || !fs::is_directory(parent)) fail(final_.string(), ": cannot create parent directory ", parent.string());
  if (::access(parent.c_str(), W_OK) != 0)
    fail(final_.string(), ": output directory ", parent.string(), " is not writable");
  temp_ = parent / (final_.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                    std::to_string(g_tmp_counter.fetch_add(1)));
  std::lock_guard<std::mutex> g(g_tmp_mu);
  live_temps().insert(temp_.string());
}

AtomicPath::~AtomicPath() {
  {
    std::lock_guard<std::mutex> g(g_tmp_mu);
    live_temps().erase(temp_.string());
  }
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(temp_, ec);
  }
}

void AtomicPath::commit() {
  std::error_code ec;
  if (!fs::exists(temp_, ec)) fail(final_.string(), ": nothing was written");
  if (fs::is_directory(final_, ec) && fs::is_directory(temp_, ec)) {
    // Replace a directory: move the old one aside, move the new one in, delete the old one.
    fs::path old = final_.string() + ".old-" + std::to_string(::getpid());
    fs::rename(final_, old, ec);
    if (ec) fail(final_.string(), ": cannot replace existing directory: ", ec.message());
    fs::rename(temp_, final_, ec);
    if (ec) {
      fs::rename(old, final_);
      fail(final_.string(), ": cannot rename output into place: ", ec.message());
    }
    fs::remove_all(old, ec);
  } else {
    if (fs::is_directory(final_, ec)) fail(final_.string(), ": exists and is a directory");
    fs::rename(temp_, final_, ec);
    if (ec) fail(final_.string(), ": cannot rename output into place: ", ec.message());
  }
  committed_ = true;
}

uint64_t parse_size(std::string_view s) {
  std::string t(s);
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(t, &pos);
  } catch (...) {
    fail("bad size '", t, "' (expected e.g. 5GB, 500MB, 4096)");
  }
  std::string unit = t.substr(pos);
  for (auto& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  double mul = 1;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KB") mul = 1e3;
  else if (unit == "M" || unit == "MB") mul = 1e6;
  else if (unit == "G" || unit == "GB") mul = 1e9;
  else if (unit == "KIB") mul = 1024.0;
  else if (unit == "MIB") mul = 1024.0 * 1024;
  else if (unit == "GIB") mul = 1024.0 * 1024 * 1024;
  else fail("bad size unit in '", t, "' (use B, KB, MB, GB, KiB, MiB, GiB)");
  if (!(v > 0)) fail("size must be positive: '", t, "'");
  return uint64_t(v * mul);
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) { b /= 1024; ++u; }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

uint64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace llmc
