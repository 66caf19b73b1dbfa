// formats/safetensors.h — the safetensors container: strict reader and streaming writer.
//
// File layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length
// N, N bytes of JSON header, then the data region. The header maps tensor name ->
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data region) plus
// an optional "__metadata__" object of string -> string.
//
// Contracts:
//  * parse_safetensors_header() validates strictly and throws llmc::Error naming `origin` (and
//    the tensor) on the first violation: file shorter than 8 bytes; N > kMaxSafetensorsHeader
//    or past the end of the file; JSON not well formed, not an object, nested deeper than a
//    header can be, or with duplicate keys; an entry that is not exactly {dtype, shape,
//    data_offsets}; unknown dtype; shape not a list of non-negative integers or numel
//    overflowing; data_offsets not two integers with begin <= end; (end - begin) !=
//    numel x dtype size; offsets past the data region; entries (sorted by offset) overlapping,
//    leaving gaps or not covering the data region exactly; "__metadata__" not an object of
//    strings. It never reads outside [bytes, bytes + size).
//  * SafetensorsFile maps the file read-only; get() returns zero-copy views that keep the
//    mapping alive. list() is in file (offset) order.
//  * SafetensorsWriter streams: add() appends the tensor's bytes to a side data file
//    ("<path>.data-tmp"), so memory stays bounded by one tensor; finish() writes the header
//    (padded with spaces so the data region starts 8-byte aligned) followed by the data
//    (kernel-side copy) and removes the side file. Tensors keep the order they were added in.
//    Adding a duplicate name, a shape that disagrees with nbytes, or adding after finish()
//    throws. Destroying an unfinished writer removes the side file (the caller owns `path`).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/fs.h"
#include "formats/tensor_store.h"

namespace llmc {

inline constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;  // 100 MiB

struct SafetensorsEntry {
  TensorInfo info;
  uint64_t begin = 0, end = 0;  // relative to the data region
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;         // sorted by offset (= file order)
  std::map<std::string, std::string> metadata;   // "__metadata__"
  uint64_t data_start = 0;                       // 8 + N
};

// Validates the whole file image `bytes[0, size)` (header and offsets against `size`).
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size,
                                           const std::string& origin);

class SafetensorsFile : public TensorReader {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return index_.count(name) != 0; }
  TensorRef get(const std::string& name) const override;
  std::string origin() const override { return map_->path().string(); }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const std::filesystem::path& path() const { return map_->path(); }
  uint64_t file_size() const { return map_->size(); }

 private:
  std::shared_ptr<MappedFile> map_;
  SafetensorsHeader header_;
  std::vector<TensorInfo> infos_;
  std::unordered_map<std::string, size_t> index_;
};

class SafetensorsWriter : public TensorWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path,
                    std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~SafetensorsWriter() override;
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data,
           uint64_t nbytes) override;
  void finish() override;
  uint64_t data_bytes() const { return data_bytes_; }
  size_t count() const { return entries_.size(); }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }

 private:
  std::filesystem::path path_, side_;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsEntry> entries_;
  std::unordered_map<std::string, size_t> names_;
  int fd_ = -1;
  uint64_t data_bytes_ = 0;
  bool finished_ = false;
};

// Writes one complete safetensors file (helper for tests and small outputs).
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace llmc
