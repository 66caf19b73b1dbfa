// core/fs.h — safe reads, read-only memory maps, atomic (temp + rename) outputs and the one
// output-safety rule of every command.
//
// Contracts:
//  * open_regular_file(path) opens read-only with O_NONBLOCK and checks S_ISREG on the fd, so a
//    FIFO, device or directory is refused ("not a regular file (a FIFO)") and never blocks. Every reader
//    (MappedFile, read_text_file, read_text_input, the Parquet reader) opens through it.
//  * MappedFile maps a whole file read-only; data()/size() stay valid for the object's life.
//    Opening a missing, unreadable or non-regular file throws llmc::Error naming the path.
//  * read_text_input(path): a user's text (calibration .txt/.jsonl, eval text). gzip data
//    (magic 1f 8b, whatever the name) is decompressed transparently (at most kMaxTextInputBytes);
//    the result must be UTF-8, else "<path>: not UTF-8 text (byte 0xNN at offset K)".
//  * check_output_path(out, kind, rules) — the one output rule (docs/architecture.md "Output
//    safety"): the output may not be, contain, or lie inside any input (canonical paths: symlinks
//    and ".." resolved); an existing output is refused unless rules.overwrite ("pass
//    --overwrite"), except an empty directory; with overwrite, an existing directory is replaced
//    only when llmc wrote it (its .llmc-manifest lists every entry in it), an existing file only
//    when it is a regular file.
//  * AtomicPath reserves "<final>.tmp-<pid>-<n>" next to the final path. Constructing one first
//    removes stale temporaries of that output left by dead processes (same name pattern, pid not
//    alive), with a warning. commit() renames the temporary onto the final path; a directory
//    gets a .llmc-manifest listing its entries first, and an existing directory is replaced only
//    when llmc wrote it (see above). Destroyed without commit() the temporary is removed, so a
//    failed or interrupted run never leaves a half-written output under the final name.
//    SIGINT, SIGTERM, SIGHUP and SIGPIPE remove live temporaries and then end the process by the
//    same signal; SIGXFSZ (file-size limit) is ignored so the write fails with EFBIG and the
//    error path cleans up (install_signal_cleanup()).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace llmc {

namespace fs = std::filesystem;

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Drops the whole pages inside [p, p + n) of a read-only file mapping (MappedFile) from this
// process (madvise MADV_DONTNEED): resident memory falls, a later read faults them in again
// from the file. Partial pages at either end are kept. Anything else is a no-op.
void release_mapped_pages(const void* p, size_t n);

// Asks the kernel to back the whole 2 MiB pages inside [p, p + n) with transparent huge pages
// (madvise MADV_HUGEPAGE): large buffers written once then fault 512x less often. A hint only;
// a no-op for small ranges or where the kernel says no.
void advise_huge_pages(void* p, size_t n);

// v = n value-initialized elements in fresh memory advised for huge pages before it is first
// touched (for buffers of many MB filled once per layer).
template <class T>
void assign_zeroed(std::vector<T>& v, size_t n) {
  std::vector<T>().swap(v);
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(T));
  v.resize(n);
}

// Opens `path` for reading (O_RDONLY | O_CLOEXEC); refuses anything but a regular file without
// blocking. Returns the fd (caller closes).
int open_regular_file(const fs::path& path);
std::string read_text_file(const fs::path& path);
inline constexpr uint64_t kMaxTextInputBytes = 4ull << 30;
// A user's text file: gzip decompressed transparently, then checked to be UTF-8.
std::string read_text_input(const fs::path& path);
// Byte offset of the first invalid UTF-8 sequence in s, or npos when s is valid UTF-8.
size_t first_invalid_utf8(std::string_view s);
// Writes the whole string atomically (temp file + rename).
void write_text_file(const fs::path& path, std::string_view text);

class AtomicPath {
 public:
  explicit AtomicPath(fs::path final_path);
  ~AtomicPath();
  AtomicPath(const AtomicPath&) = delete;
  AtomicPath& operator=(const AtomicPath&) = delete;

  const fs::path& temp() const { return temp_; }
  const fs::path& final_path() const { return final_; }
  void commit();

 private:
  fs::path final_, temp_;
  bool committed_ = false;
};

void install_signal_cleanup();

// The manifest llmc writes into every output directory it commits (one name per line).
inline constexpr const char* kManifestFile = ".llmc-manifest";

enum class OutputKind { File, Directory };
struct OutputRules {
  bool overwrite = false;          // --overwrite given
  std::vector<fs::path> inputs;    // every file or directory the command reads (empty ones skipped)
};
// Throws llmc::Error naming `out` unless the command may write it (see the contract above).
void check_output_path(const fs::path& out, OutputKind kind, const OutputRules& rules);
// Throws unless the existing directory `dir` was written by llmc and holds nothing else.
void check_llmc_wrote_dir(const fs::path& dir);
// Removes "<out name>.tmp-<pid>-<n>" / "<out name>.old-<pid>" next to `out` whose pid is dead;
// returns how many were removed.
int remove_stale_temporaries(const fs::path& out);

// Parses "5GB", "500MB", "1.5GiB", "4096" into bytes. Throws on bad input.
uint64_t parse_size(std::string_view s);
std::string human_bytes(double bytes);
// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
uint64_t peak_rss_bytes();

}  // namespace llmc
