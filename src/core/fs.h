// core/fs.h — read-only memory maps and atomic (temp + rename) outputs.
//
// Contracts:
//  * MappedFile maps a whole file read-only; data()/size() stay valid for the object's life.
//    Opening a missing or unreadable file throws llmc::Error naming the path.
//  * AtomicPath reserves "<final>.tmp-<pid>-<n>" next to the final path. commit() renames it onto
//    the final path (replacing an existing file or directory); if the object is destroyed
//    without commit() the temporary file or directory is removed, so a failed or interrupted
//    run never leaves a half-written output under the final name. SIGINT/SIGTERM remove live
//    temporaries too (install_signal_cleanup()).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

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

std::string read_text_file(const fs::path& path);
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

// Parses "5GB", "500MB", "1.5GiB", "4096" into bytes. Throws on bad input.
uint64_t parse_size(std::string_view s);
std::string human_bytes(double bytes);
// Peak resident set size of this process in bytes (VmHWM), 0 if unknown.
uint64_t peak_rss_bytes();

}  // namespace llmc
