#include "core/fs.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/progress.h"
#include "core/utf8.h"

namespace llmc {

int open_regular_file(const fs::path& path) {
  // O_NONBLOCK: opening a FIFO without a writer must not block; S_ISREG is checked on the fd
  // itself (no window between a stat and the open).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(path.string(), ": cannot stat: ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const char* what = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "an unknown file type";
    fail(path.string(), ": not a regular file (", what, "); expected a regular file");
  }
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

namespace {
// The live read-only mappings of MappedFile: release_mapped_pages touches nothing else (on
// anonymous memory MADV_DONTNEED would zero it).
std::mutex g_maps_mu;
std::map<uintptr_t, size_t>& live_maps() {
  static auto* m = new std::map<uintptr_t, size_t>;
  return *m;
}
void register_map(const uint8_t* p, size_t n, bool add) {
  if (!p) return;
  std::lock_guard<std::mutex> g(g_maps_mu);
  if (add) live_maps()[uintptr_t(p)] = n;
  else live_maps().erase(uintptr_t(p));
}
}  // namespace

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  const int fd = open_regular_file(path);
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(path.string(), ": cannot stat: ", std::strerror(e));
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
    register_map(data_, size_, true);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  register_map(data_, size_, false);
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }
MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    register_map(data_, size_, false);
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    path_ = std::move(o.path_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}


void advise_huge_pages(void* p, size_t n) {
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!p || n < kHuge) return;
  const uintptr_t lo = uintptr_t(p), hi = lo + n;
  const uintptr_t a = (lo + kHuge - 1) / kHuge * kHuge, b = hi / kHuge * kHuge;
  if (b > a) ::madvise(reinterpret_cast<void*>(a), size_t(b - a), MADV_HUGEPAGE);
}

void release_mapped_pages(const void* p, size_t n) {
  if (!p || n == 0) return;
  static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = uintptr_t(p), hi = lo + n;
  {
    std::lock_guard<std::mutex> g(g_maps_mu);
    auto it = live_maps().upper_bound(lo);
    if (it == live_maps().begin()) return;
    --it;
    if (hi > it->first + it->second) return;  // not inside one mapping
  }
  const uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page;
  if (b > a) ::madvise(reinterpret_cast<void*>(a), size_t(b - a), MADV_DONTNEED);
}

std::string read_text_file(const fs::path& path) {
  const int fd = open_regular_file(path);
  struct stat st{};
  std::string out;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      fail(path.string(), ": read error: ", std::strerror(e));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

namespace {

std::string gunzip(const std::string& in, const fs::path& path) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) fail(path.string(), ": cannot initialise zlib");
  std::string out;
  size_t off = 0;  // bytes of `in` handed to zlib so far
  char buf[1 << 16];
  auto done = [&](const std::string& err) {
    inflateEnd(&zs);
    if (!err.empty()) fail(path.string(), ": ", err);
  };
  for (;;) {
    if (zs.avail_in == 0 && off < in.size()) {
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + off));
      zs.avail_in = uInt(std::min<size_t>(in.size() - off, 1u << 30));
      off += zs.avail_in;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const size_t produced = sizeof buf - zs.avail_out;
    out.append(buf, produced);
    if (out.size() > kMaxTextInputBytes)
      done(cat("decompresses to more than ", human_bytes(double(kMaxTextInputBytes))));
    const bool input_left = zs.avail_in > 0 || off < in.size();
    if (rc == Z_STREAM_END) {
      if (!input_left) break;
      inflateReset(&zs);  // concatenated gzip members (cat a.gz b.gz)
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && produced == 0) done(input_left ? "corrupt gzip data" : "truncated gzip data");
    if (rc != Z_BUF_ERROR) done(cat("corrupt gzip data (", zs.msg ? zs.msg : "inflate error", ")"));
  }
  done("");
  return out;
}

}  // namespace

size_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    size_t bad = 0;
    const size_t len = p[i] == 0 ? 0 : utf8_seq_len(p + i, n - i, &bad);  // NUL is not text
    if (!len) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string read_text_input(const fs::path& path) {
  std::string text = read_text_file(path);
  const bool gz = text.size() >= 2 && static_cast<unsigned char>(text[0]) == 0x1f &&
                  static_cast<unsigned char>(text[1]) == 0x8b;
  if (gz) text = gunzip(text, path);
  const size_t bad = first_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned char>(text[bad]));
    fail(path.string(), ": not UTF-8 text", gz ? " (after gzip decompression)" : "", ": byte ", hex,
         " at offset ", bad, text[bad] == 0 ? " is NUL" : " is not valid UTF-8",
         "; give a UTF-8 text file (.txt / .jsonl, optionally gzip-compressed)");
  }
  return text;
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

// Signals that end the process while it may be writing: their default action is to terminate.
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};

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
  {
    // Holding the lock keeps commit() from renaming half-way while temporaries are removed.
    std::lock_guard<std::mutex> g(g_tmp_mu);
    // Other threads keep running meanwhile and may still add files: retry a few times.
    for (const auto& p : live_temps()) {
      std::error_code ec;
      for (int attempt = 0; attempt < 20 && fs::exists(fs::symlink_status(p, ec)); ++attempt)
        fs::remove_all(p, ec);
    }
    std::signal(int(b), SIG_DFL);
    ::kill(::getpid(), int(b));
  }
  ::_exit(128 + int(b));  // not reached unless the signal is blocked
}

bool pid_alive(long pid) {
  if (pid <= 0) return true;  // not a pid we can judge: leave it alone
  if (pid == long(::getpid())) return true;
  return ::kill(pid_t(pid), 0) == 0 || errno == EPERM;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The pid in "<base>.tmp-<pid>-<n>" or "<base>.old-<pid>-<n>", or -1 when `name` is not one.
long temp_owner(const std::string& name, const std::string& base) {
  for (const char* tag : {".tmp-", ".old-"}) {
    const std::string pre = base + tag;
    if (name.size() <= pre.size() || name.compare(0, pre.size(), pre) != 0) continue;
    const std::string rest = name.substr(pre.size());
    const size_t dash = rest.find('-');
    if (dash == std::string::npos || !all_digits(rest.substr(0, dash)) || !all_digits(rest.substr(dash + 1)) ||
        dash > 9)
      return -1;
    return std::stol(rest.substr(0, dash));
  }
  return -1;
}

fs::path canonical_or_absolute(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::weakly_canonical(fs::absolute(p, ec), ec);
  if (ec) c = fs::absolute(p, ec).lexically_normal();
  // "dir/" and "dir" are the same path.
  if (!c.has_filename() && c.has_parent_path() && c != c.root_path()) c = c.parent_path();
  return c;
}

// Whether `inner` lies strictly inside `outer` (both canonical).
bool strictly_inside(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin(), o = outer.begin();
  for (; o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return i != inner.end();
}

std::vector<std::string> read_manifest(const fs::path& dir) {
  std::error_code ec;
  const fs::path m = dir / kManifestFile;
  if (!fs::is_regular_file(fs::symlink_status(m, ec))) return {};
  const std::string text = read_text_file(m);
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t e = text.find('\n', pos);
    if (e == std::string::npos) e = text.size();
    names.push_back(text.substr(pos, e - pos));
    pos = e + 1;
  }
  return names;
}

constexpr const char* kManifestHeader = "llmc output manifest 1";

void write_manifest(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& de : fs::directory_iterator(dir)) {
    const std::string n = de.path().filename().string();
    if (n != kManifestFile) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  std::string text = std::string(kManifestHeader) + "\n";
  for (const auto& n : names) text += n + "\n";
  const fs::path m = dir / kManifestFile;
  const int fd = ::open(m.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(m.string(), ": cannot create: ", std::strerror(errno));
  const bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size());
  if (::close(fd) != 0 || !ok) fail(m.string(), ": write error");
}

}  // namespace

void install_signal_cleanup() {
  static std::once_flag once;
  std::call_once(once, [] {
    // A file-size limit (ulimit -f) makes the write fail with EFBIG: a clean error whose
    // unwinding removes the temporaries, instead of a core-dumping signal that leaves them.
    std::signal(SIGXFSZ, SIG_IGN);
    if (::pipe2(g_sig_pipe, O_CLOEXEC) != 0) return;  // no cleanup on signals, still correct
    std::thread(cleanup_thread).detach();
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : kCleanupSignals) {
      struct sigaction old {};
      // A signal ignored at startup (nohup, a background job's SIGINT) stays ignored.
      if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
      ::sigaction(sig, &sa, nullptr);
    }
  });
}

int remove_stale_temporaries(const fs::path& out) {
  fs::path parent = out.parent_path();
  if (parent.empty()) parent = ".";
  const std::string base = out.filename().string();
  if (base.empty()) return 0;
  std::error_code ec;
  int removed = 0;
  std::vector<std::pair<fs::path, long>> stale;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const long pid = temp_owner(name, base);
    if (pid >= 0 && !pid_alive(pid)) stale.emplace_back(it->path(), pid);
  }
  for (const auto& [p, pid] : stale) {
    std::error_code rec;
    fs::remove_all(p, rec);
    if (rec) {
      log_warn(cat(p.string(), ": stale temporary of process ", pid, " (no longer running) could not be removed: ",
                   rec.message()));
    } else {
      log_warn(cat("removed ", p.string(), ", a stale temporary left by process ", pid, " (no longer running)"));
      ++removed;
    }
  }
  return removed;
}

void check_llmc_wrote_dir(const fs::path& dir) {
  const std::vector<std::string> names = read_manifest(dir);
  if (names.empty() || names[0] != kManifestHeader)
    fail(dir.string(), ": exists and was not written by llmc (no ", kManifestFile,
         "); refusing to replace it, even with --overwrite: move it away or choose another output path");
  const std::set<std::string> ours(names.begin() + 1, names.end());
  std::error_code ec;
  for (const auto& de : fs::directory_iterator(dir, ec)) {
    const std::string n = de.path().filename().string();
    if (n != kManifestFile && !ours.count(n))
      fail(dir.string(), ": holds ", n, ", which llmc did not write; refusing to replace the directory, even "
           "with --overwrite: move that file away or choose another output path");
  }
  if (ec) fail(dir.string(), ": cannot list: ", ec.message());
}

void check_output_path(const fs::path& out, OutputKind kind, const OutputRules& rules) {
  if (out.empty()) fail("output path is empty");
  const fs::path co = canonical_or_absolute(out);
  for (const auto& in : rules.inputs) {
    if (in.empty()) continue;
    const fs::path ci = canonical_or_absolute(in);
    if (co == ci) fail(out.string(), ": is the input ", in.string(), "; choose another output path");
    if (strictly_inside(co, ci))
      fail(out.string(), ": lies inside the input ", in.string(), "; choose an output path outside it");
    if (strictly_inside(ci, co))
      fail(out.string(), ": contains the input ", in.string(), "; choose an output path that does not");
  }
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (!fs::exists(st)) {
    if (fs::is_symlink(fs::symlink_status(out, ec)))
      fail(out.string(), ": is a dangling symbolic link; refusing to write through it");
    return;
  }
  if (kind == OutputKind::Directory) {
    if (!fs::is_directory(st))
      fail(out.string(), ": exists and is not a directory (this output is a directory)");
    if (fs::is_empty(out, ec) && !ec) return;  // nothing to lose
    if (!rules.overwrite)
      fail(out.string(), ": already exists; refusing to replace it without --overwrite (which replaces only a "
           "directory llmc wrote)");
    check_llmc_wrote_dir(out);
    return;
  }
  if (fs::is_directory(st)) fail(out.string(), ": exists and is a directory (this output is a file)");
  if (!fs::is_regular_file(st)) fail(out.string(), ": exists and is not a regular file; refusing to replace it");
  if (!rules.overwrite) fail(out.string(), ": already exists; refusing to replace it without --overwrite");
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
  remove_stale_temporaries(final_);
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
  if (!fs::exists(fs::symlink_status(temp_, ec))) fail(final_.string(), ": nothing was written");
  const bool temp_is_dir = fs::is_directory(fs::symlink_status(temp_, ec));
  if (temp_is_dir) write_manifest(temp_);
  fs::path old;
  {
    std::lock_guard<std::mutex> g(g_tmp_mu);  // no signal cleanup half-way through the renames
    const bool final_is_dir = fs::is_directory(fs::symlink_status(final_, ec));
    if (final_is_dir && temp_is_dir) {
      // Replace a directory llmc wrote: move it aside, move the new one in, delete the old one.
      if (!fs::is_empty(final_, ec)) check_llmc_wrote_dir(final_);
      old = final_.string() + ".old-" + std::to_string(::getpid()) + "-" +
            std::to_string(g_tmp_counter.fetch_add(1));
      fs::rename(final_, old, ec);
      if (ec) fail(final_.string(), ": cannot replace existing directory: ", ec.message());
      fs::rename(temp_, final_, ec);
      if (ec) {
        std::error_code ec2;
        fs::rename(old, final_, ec2);
        fail(final_.string(), ": cannot rename output into place: ", ec.message());
      }
      live_temps().insert(old.string());
    } else {
      if (final_is_dir) fail(final_.string(), ": exists and is a directory");
      fs::rename(temp_, final_, ec);
      if (ec) fail(final_.string(), ": cannot rename output into place: ", ec.message());
    }
    live_temps().erase(temp_.string());
    committed_ = true;
  }
  if (!old.empty()) {
    fs::remove_all(old, ec);
    std::lock_guard<std::mutex> g(g_tmp_mu);
    live_temps().erase(old.string());
  }
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
