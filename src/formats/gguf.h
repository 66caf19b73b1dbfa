// formats/gguf.h — the GGUF v3 container (llama.cpp's file format): strict reader, streaming writer.
//
// File layout (GGUF spec, ggml/docs/gguf.md), all little-endian:
//   "GGUF" magic, uint32 version (3), uint64 tensor_count, uint64 metadata_kv_count;
//   kv_count x {string key, uint32 value_type, value}; a string is uint64 length + bytes (no NUL);
//   an array is uint32 element type, uint64 count, elements (arrays of arrays are allowed);
//   tensor_count x {string name, uint32 n_dims, uint64 dims[n_dims] (ne[0] = innermost, i.e. the
//   reverse of a row-major shape), uint32 ggml type, uint64 offset (relative to the data region)};
//   padding to `general.alignment` (a uint32, default 32); the data region; each tensor's offset is
//   a multiple of the alignment.
//
// Contracts:
//  * parse_gguf() validates the whole image [bytes, bytes + size) and throws llmc::Error naming
//    `origin` (and the key or tensor) on the first violation: bad magic, version other than 2 or 3,
//    counts that cannot fit in the file, strings or arrays running past the end, unknown value
//    types, arrays nested deeper than kGgufMaxDepth, duplicate keys or tensor names, general.alignment
//    not a non-zero power of two uint32, n_dims > 4 (GGML_MAX_DIMS) or a zero/overflowing element
//    count, an unknown ggml type (formats/ggml_types.h), ne[0] not a multiple of the type's block,
//    offsets not aligned, past the end, or overlapping. It never reads outside the image.
//  * GgufFile maps the file read-only; tensor data views stay valid while the GgufFile lives.
//  * GgufWriter takes every key/value and every tensor's (name, type, dims) up front, writes the
//    header at construction, then data() must be called once per tensor in the declared order
//    with exactly that tensor's byte size; finish() checks all tensors were written and closes.
//    A writer destroyed unfinished removes `path` (the caller owns it; atomicity via core/fs.h).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/fs.h"

namespace llmc {

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);
inline constexpr int kGgufMaxDepth = 4;
inline constexpr uint32_t kGgufDefaultAlignment = 32;

// One metadata value. Scalars: integers and bools in `i` (unsigned 64-bit values in `u` too),
// floats in `f`, strings in `s`. Arrays: `elem` and `items` (one GgufValue per element).
struct GgufValue {
  GgufType type = GgufType::U32;
  GgufType elem = GgufType::U8;  // arrays only
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;
  std::vector<GgufValue> items;

  static GgufValue str(std::string v);
  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue str_array(const std::vector<std::string>& v);
  static GgufValue i32_array(const std::vector<int32_t>& v);
  static GgufValue f32_array(const std::vector<float>& v);
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;              // ggml type id
  std::vector<uint64_t> ne;       // ne[0] innermost
  uint64_t offset = 0;            // relative to the data region
  uint64_t nbytes = 0;
  uint64_t numel() const;
};

struct GgufHeader {
  uint32_t version = 3;
  std::vector<std::pair<std::string, GgufValue>> kv;  // file order
  std::vector<GgufTensorInfo> tensors;                // file order
  uint32_t alignment = kGgufDefaultAlignment;
  uint64_t data_start = 0;
  const GgufValue* find(const std::string& key) const;
};

GgufHeader parse_gguf(const uint8_t* bytes, size_t size, const std::string& origin);

class GgufFile {
 public:
  explicit GgufFile(const std::filesystem::path& path);
  const GgufHeader& header() const { return header_; }
  const std::string& origin() const { return origin_; }
  const GgufTensorInfo* tensor(const std::string& name) const;
  const uint8_t* data(const GgufTensorInfo& t) const { return map_->data() + header_.data_start + t.offset; }
  // Typed metadata access; throw llmc::Error naming the file and key when absent (no default)
  // or of another type. Integer getters accept any integer type whose value fits (and bool, as 0/1).
  std::string get_str(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t dflt) const;
  double get_float(const std::string& key, double dflt) const;
  std::shared_ptr<const MappedFile> mapping() const { return map_; }

 private:
  std::shared_ptr<MappedFile> map_;
  std::string origin_;
  GgufHeader header_;
  std::map<std::string, size_t> index_;
};

struct GgufTensorDecl {
  std::string name;
  uint32_t type = 0;
  std::vector<uint64_t> ne;
};

// The size of the file a GgufWriter with these arguments writes (header + padded tensor data).
uint64_t gguf_file_bytes(const std::vector<std::pair<std::string, GgufValue>>& kv,
                         const std::vector<GgufTensorDecl>& tensors, uint32_t alignment = kGgufDefaultAlignment);

class GgufWriter {
 public:
  GgufWriter(const std::filesystem::path& path, const std::vector<std::pair<std::string, GgufValue>>& kv,
             const std::vector<GgufTensorDecl>& tensors, uint32_t alignment = kGgufDefaultAlignment);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;
  // Writes the next declared tensor's bytes (name must match the declaration order).
  void data(const std::string& name, const void* bytes, uint64_t nbytes);
  void finish();
  uint64_t bytes_written() const { return pos_; }

 private:
  void put(const void* p, size_t n);
  std::filesystem::path path_;
  std::vector<GgufTensorInfo> infos_;
  uint32_t alignment_;
  size_t next_ = 0;
  int fd_ = -1;
  uint64_t pos_ = 0;
  bool finished_ = false;
};

}  // namespace llmc
