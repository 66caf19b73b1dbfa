#include "core/fs.h"

#include <fcntl.h>
#include <signal.h>
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
#include <thread>
#include <vector>

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

// Signal handling must not allocate or take locks (the interrupted thread may hold malloc's or
// g_tmp_mu): the handler only writes the signal number into a pipe; a dedicated thread reads it
// in normal context, removes the live temporaries and then dies by the same signal.
int g_sig_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_sig_pipe[1], &b, 1);
  errno = saved;
}

void cleanup_thread() {
  unsigned char b = 0;
  for (;;) {
    const ssize_t n = ::read(g_sig_pipe[0], &b, 1);
    if (n == 1) break;
    if (n < 0 && errno == EINTR) continue;
    return;  // pipe closed
  }
  std::vector<std::string> temps;
  {
    std::lock_guard<std::mutex> g(g_tmp_mu);
    temps.assign(live_temps().begin(), live_temps().end());
  }
  // Other threads keep running meanwhile and may still add files: retry a few times.
  for (const auto& p : temps) {
    std::error_code ec;
    for (int attempt = 0; attempt < 20 && fs::exists(p, ec); ++attempt) fs::remove_all(p, ec);
  }
  std::signal(int(b), SIG_DFL);
  ::kill(::getpid(), int(b));
  ::_exit(128 + int(b));  // not reached unless the signal is blocked
}
}  // namespace

void install_signal_cleanup() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (::pipe2(g_sig_pipe, O_CLOEXEC) != 0) return;  // no cleanup on signals, still correct
    std::thread(cleanup_thread).detach();
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
  });
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
