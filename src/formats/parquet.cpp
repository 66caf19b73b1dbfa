// formats/parquet.cpp — AI-OS Parquet tensor files: streaming reader and writer.
//
// File layout written by ParquetTensorWriter (parquet-format 2.x, data page v1, PLAIN values,
// RLE levels; see docs/formats.md):
//   "PAR1" | row group 0 | row group 1 | ... | FileMetaData (Thrift compact) | len (u32 LE) | "PAR1"
// Each row group holds the column chunks name, dtype, shape, chunk, data in schema order; the
// data chunk has one page per row (tensor chunk), so a reader can seek to one tensor.
#include "formats/parquet.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"
#include "formats/parquet_encoding.h"
#include "formats/parquet_meta.h"
#include "formats/thrift_compact.h"

namespace llmc {

namespace pq = parquet;
using pq::Codec;
using pq::Encoding;
using pq::PageType;
using pq::Repetition;
using pq::Type;

namespace {

constexpr char kMagic[4] = {'P', 'A', 'R', '1'};
constexpr uint64_t kMaxFooterBytes = 256ull << 20;   // footers of huge models are a few MB
constexpr uint64_t kMaxRows = 1ull << 24;            // tensor chunks per file
constexpr int64_t kMaxPageValues = 1ll << 24;        // level entries per page
constexpr uint64_t kMaxPageBytes = (1ull << 30) + (1ull << 20);  // decoded page body
constexpr uint64_t kMaxChunkBytes = 1ull << 30;      // writer: tensor bytes per row
constexpr uint64_t kDefaultRowGroupBytes = 64ull << 20;
constexpr int kMaxSchemaDepth = 32;

uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(char(uint8_t(v >> (8 * i))));
}

// A buffer of uninitialised bytes (decoded pages may be large; no need to zero them).
struct Bytes {
  std::unique_ptr<uint8_t[]> p;
  size_t n = 0;
  explicit Bytes(size_t size = 0) : p(size ? new uint8_t[size] : nullptr), n(size) {}
  uint8_t* data() { return p.get(); }
  const uint8_t* data() const { return p.get(); }
};

// ---------------- positional file reads ----------------

class File {
 public:
  explicit File(const std::filesystem::path& path) : name_(path.string()) {
    fd_ = open_regular_file(path);  // refuses FIFOs / devices without blocking
    struct stat st{};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(name_, ": not a regular file");
    }
    size_ = uint64_t(st.st_size);
  }
  ~File() { ::close(fd_); }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }

  // Reads exactly n bytes at off; [off, off+n) must lie inside `limit` (defaults to the file).
  void read(uint64_t off, size_t n, uint8_t* dst, const std::string& ctx) const {
    if (off > size_ || n > size_ - off)
      fail(ctx, ": byte range [", off, ", ", off + n, ") lies outside the file (", size_, " bytes)");
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd_, dst + done, n - done, off_t(off + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) fail(ctx, ": read error: ", std::strerror(errno));
      if (r == 0) fail(ctx, ": file ends early (truncated while reading?)");
      done += size_t(r);
    }
  }

 private:
  std::string name_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// ---------------- schema ----------------

struct Leaf {
  std::vector<std::string> path;  // from the first level below the root
  int32_t type = 0;
  int max_def = 0, max_rep = 0;
  int rep_def = 0;   // definition level that includes the (single) repeated node
  int list_def = 0;  // definition level of the repeated node's parent (below it: null list)
  std::string dotted() const {
    std::string s;
    for (const auto& p : path) s += (s.empty() ? "" : ".") + p;
    return s;
  }
};

class SchemaWalker {
 public:
  SchemaWalker(const std::vector<pq::SchemaElement>& s, const std::string& ctx) : s_(s), ctx_(ctx) {}

  std::vector<Leaf> walk() {
    if (s_.empty()) fail(ctx_, ": empty schema");
    const auto& root = s_[0];
    if (root.type) fail(ctx_, ": schema root is not a group");
    const int32_t n = root.num_children.value_or(0);
    if (n < 0 || size_t(n) >= s_.size() + 1) fail(ctx_, ": bad schema root child count ", n);
    size_t i = 1;
    std::vector<std::string> path;
    for (int32_t c = 0; c < n; ++c) visit(&i, &path, 0, 0, 0, 0, 1);
    if (i != s_.size()) fail(ctx_, ": schema has ", s_.size() - i, " elements outside the tree");
    return std::move(leaves_);
  }

 private:
  void visit(size_t* i, std::vector<std::string>* path, int def, int rep, int rep_def,
             int list_def, int depth) {
    if (depth > kMaxSchemaDepth) fail(ctx_, ": schema nested too deeply");
    if (*i >= s_.size()) fail(ctx_, ": schema ends inside a group");
    const pq::SchemaElement& e = s_[(*i)++];
    const int32_t r = e.repetition_type.value_or(int32_t(Repetition::REQUIRED));
    if (r < 0 || r > 2) fail(ctx_, ": schema element '", e.name, "' has bad repetition ", r);
    const int parent_def = def;
    if (r != int32_t(Repetition::REQUIRED)) ++def;
    if (r == int32_t(Repetition::REPEATED)) {
      ++rep;
      rep_def = def;
      list_def = parent_def;
    }
    path->push_back(e.name);
    if (e.type) {
      if (e.num_children.value_or(0) != 0) fail(ctx_, ": schema leaf '", e.name, "' has children");
      Leaf l;
      l.path = *path;
      l.type = *e.type;
      l.max_def = def;
      l.max_rep = rep;
      l.rep_def = rep_def;
      l.list_def = list_def;
      leaves_.push_back(std::move(l));
    } else {
      const int32_t n = e.num_children.value_or(0);
      if (n <= 0 || size_t(n) > s_.size()) fail(ctx_, ": schema group '", e.name, "' has bad child count ", n);
      for (int32_t c = 0; c < n; ++c) visit(i, path, def, rep, rep_def, list_def, depth + 1);
    }
    path->pop_back();
  }

  const std::vector<pq::SchemaElement>& s_;
  const std::string& ctx_;
  std::vector<Leaf> leaves_;
};

// ---------------- pages ----------------

struct PageInfo {
  pq::PageHeader h;
  uint64_t body_off = 0;  // absolute file offset of the page body
};

// Walks the pages of one column chunk.
class PageCursor {
 public:
  PageCursor(const File& f, uint64_t start, uint64_t end, const std::string& ctx)
      : f_(f), pos_(start), end_(end), ctx_(ctx) {}

  bool done() const { return pos_ >= end_; }

  PageInfo next() {
    PageInfo pi;
    // Page headers are small but may carry statistics: grow the window until one parses.
    size_t window = size_t(std::min<uint64_t>(end_ - pos_, 1024));
    for (;;) {
      Bytes b(window);
      f_.read(pos_, window, b.data(), ctx_);
      thrift::ThriftReader r(b.data(), window, ctx_ + ": page header at offset " + std::to_string(pos_));
      try {
        pi.h = pq::decode_page_header(r);
        pi.body_off = pos_ + r.pos();
        break;
      } catch (const Error&) {
        const uint64_t avail = end_ - pos_;
        if (window >= avail || window >= (64u << 20)) throw;
        window = size_t(std::min<uint64_t>(avail, uint64_t(window) * 8));
      }
    }
    const auto& h = pi.h;
    if (h.compressed_page_size < 0 || h.uncompressed_page_size < 0)
      fail(ctx_, ": negative page size at offset ", pos_);
    if (uint64_t(h.uncompressed_page_size) > kMaxPageBytes)
      fail(ctx_, ": page of ", h.uncompressed_page_size, " bytes exceeds llmc's limit");
    if (uint64_t(h.compressed_page_size) > end_ - pi.body_off)
      fail(ctx_, ": page at offset ", pos_, " runs past the end of its column chunk");
    pos_ = pi.body_off + uint64_t(h.compressed_page_size);
    return pi;
  }

 private:
  const File& f_;
  uint64_t pos_, end_;
  const std::string& ctx_;
};

// Values of one column chunk's leaf, as needed by llmc.
struct Dictionary {
  bool present = false;
  Bytes storage;
  std::vector<std::string_view> bytes;
  std::vector<int64_t> ints;
};

struct DecodedPage {
  size_t num_values = 0;  // level entries
  std::vector<uint32_t> def, rep;  // empty when the max level is 0
  std::vector<std::string_view> bytes;  // non-null values (BYTE_ARRAY)
  std::vector<int64_t> ints;            // non-null values (INT32/INT64)
  Bytes storage;                        // owns what `bytes` points into (with the dictionary)
  std::string rebuilt;                  // DELTA_BYTE_ARRAY values
};

// Decompresses a page body into a new buffer of exactly out_size bytes (sizes checked first).
Bytes decode_body(int32_t codec, const uint8_t* src, size_t n, size_t out_size, const std::string& ctx) {
  pq::check_decoded_size(codec, src, n, out_size, ctx);
  Bytes b(out_size);
  pq::decompress(codec, src, n, b.data(), out_size, ctx);
  return b;
}

void decode_plain(int32_t type, const uint8_t* p, size_t n, size_t count, bool want_bytes,
                  std::vector<std::string_view>* bytes, std::vector<int64_t>* ints,
                  const std::string& ctx) {
  const uint8_t* end = p + n;
  if (type == int32_t(Type::BYTE_ARRAY)) {
    if (count > n / 4) fail(ctx, ": PLAIN data too short for ", count, " values");
    bytes->reserve(bytes->size() + count);
    for (size_t i = 0; i < count; ++i) {
      if (end - p < 4) fail(ctx, ": PLAIN data ends at value ", i, " of ", count);
      const uint32_t len = load_u32(p);
      p += 4;
      if (len > size_t(end - p)) fail(ctx, ": PLAIN value ", i, " (", len, " bytes) runs past the page");
      bytes->emplace_back(reinterpret_cast<const char*>(p), len);
      p += len;
    }
    return;
  }
  const size_t w = type == int32_t(Type::INT32) ? 4 : type == int32_t(Type::INT64) ? 8 : 0;
  if (w == 0 || want_bytes) fail(ctx, ": unexpected physical type ", type);
  if (count > n / w) fail(ctx, ": PLAIN data too short for ", count, " values");
  ints->reserve(ints->size() + count);
  for (size_t i = 0; i < count; ++i, p += w) {
    if (w == 4) {
      ints->push_back(int32_t(load_u32(p)));
    } else {
      ints->push_back(int64_t(uint64_t(load_u32(p)) | uint64_t(load_u32(p + 4)) << 32));
    }
  }
}

void decode_dictionary_page(const File& f, const PageInfo& pi, int32_t codec, const Leaf& leaf,
                            Dictionary* d, const std::string& ctx) {
  const auto& dh = pi.h.dictionary_page_header;
  if (!dh) fail(ctx, ": dictionary page without a dictionary page header");
  if (dh->encoding != int32_t(Encoding::PLAIN) && dh->encoding != int32_t(Encoding::PLAIN_DICTIONARY))
    fail(ctx, ": unsupported dictionary encoding ", pq::encoding_name(dh->encoding));
  if (dh->num_values < 0 || dh->num_values > kMaxPageValues) fail(ctx, ": bad dictionary size");
  Bytes raw(size_t(pi.h.compressed_page_size));
  f.read(pi.body_off, raw.n, raw.data(), ctx);
  d->storage = decode_body(codec, raw.data(), raw.n, size_t(pi.h.uncompressed_page_size),
                           ctx + ": dictionary page");
  d->bytes.clear();
  d->ints.clear();
  decode_plain(leaf.type, d->storage.data(), d->storage.n, size_t(dh->num_values),
               false, &d->bytes, &d->ints, ctx + ": dictionary page");
  d->present = true;
}

uint32_t checked_level_width(int max_level) { return uint32_t(pq::bit_width(uint64_t(max_level))); }

void decode_levels(const uint8_t* p, size_t n, int max_level, size_t count, std::vector<uint32_t>* out,
                   const std::string& ctx) {
  out->resize(count);
  pq::RleDecoder d(p, n, int(checked_level_width(max_level)), &ctx);
  d.get(out->data(), count);
  for (uint32_t v : *out)
    if (v > uint32_t(max_level)) fail(ctx, ": level ", v, " exceeds the maximum ", max_level);
}

// Decodes one data page (v1 or v2) of `leaf` into `out`.
void decode_data_page(const File& f, const PageInfo& pi, int32_t codec, const Leaf& leaf,
                      const Dictionary& dict, DecodedPage* out, const std::string& ctx) {
  const auto& h = pi.h;
  int64_t num_values;
  int32_t encoding;
  Bytes raw(size_t(h.compressed_page_size));
  f.read(pi.body_off, raw.n, raw.data(), ctx);
  const uint8_t* values;
  size_t values_size;
  if (h.type == int32_t(PageType::DATA_PAGE)) {
    if (!h.data_page_header) fail(ctx, ": data page without a data page header");
    const auto& d = *h.data_page_header;
    num_values = d.num_values;
    encoding = d.encoding;
    if (num_values < 0 || num_values > kMaxPageValues) fail(ctx, ": bad page value count ", num_values);
    out->storage = decode_body(codec, raw.data(), raw.n, size_t(h.uncompressed_page_size), ctx);
    const uint8_t* p = out->storage.data();
    size_t left = out->storage.n;
    auto levels = [&](int max_level, int32_t enc, std::vector<uint32_t>* lv, const char* what) {
      if (max_level == 0) return;
      if (enc != int32_t(Encoding::RLE))
        fail(ctx, ": unsupported ", what, " level encoding ", pq::encoding_name(enc));
      if (left < 4) fail(ctx, ": truncated ", what, " levels");
      const uint32_t len = load_u32(p);
      if (len > left - 4) fail(ctx, ": ", what, " levels run past the page");
      decode_levels(p + 4, len, max_level, size_t(num_values), lv, ctx + ": " + what + " levels");
      p += 4 + len;
      left -= 4 + len;
    };
    levels(leaf.max_rep, d.repetition_level_encoding, &out->rep, "repetition");
    levels(leaf.max_def, d.definition_level_encoding, &out->def, "definition");
    values = p;
    values_size = left;
  } else {
    if (!h.data_page_header_v2) fail(ctx, ": data page v2 without its header");
    const auto& d = *h.data_page_header_v2;
    num_values = d.num_values;
    encoding = d.encoding;
    if (num_values < 0 || num_values > kMaxPageValues) fail(ctx, ": bad page value count ", num_values);
    const int64_t rl = d.repetition_levels_byte_length, dl = d.definition_levels_byte_length;
    if (rl < 0 || dl < 0 || rl + dl > int64_t(raw.n) || rl + dl > h.uncompressed_page_size)
      fail(ctx, ": bad level byte lengths in data page v2");
    if (leaf.max_rep) decode_levels(raw.data(), size_t(rl), leaf.max_rep, size_t(num_values), &out->rep,
                                    ctx + ": repetition levels");
    if (leaf.max_def) decode_levels(raw.data() + rl, size_t(dl), leaf.max_def, size_t(num_values),
                                    &out->def, ctx + ": definition levels");
    const uint8_t* body = raw.data() + rl + dl;
    const size_t body_n = raw.n - size_t(rl + dl);
    const size_t plain_n = size_t(h.uncompressed_page_size - rl - dl);
    out->storage = decode_body(d.is_compressed ? codec : int32_t(Codec::UNCOMPRESSED), body, body_n,
                               plain_n, ctx);
    values = out->storage.data();
    values_size = plain_n;
  }
  out->num_values = size_t(num_values);
  size_t non_null = out->num_values;
  if (leaf.max_def > 0) {
    non_null = 0;
    for (uint32_t v : out->def) non_null += (v == uint32_t(leaf.max_def));
  }
  const bool is_bytes = leaf.type == int32_t(Type::BYTE_ARRAY);
  if (encoding == int32_t(Encoding::PLAIN)) {
    decode_plain(leaf.type, values, values_size, non_null, is_bytes, &out->bytes, &out->ints, ctx);
  } else if (encoding == int32_t(Encoding::RLE_DICTIONARY) ||
             encoding == int32_t(Encoding::PLAIN_DICTIONARY)) {
    if (!dict.present) fail(ctx, ": dictionary-encoded page without a dictionary page");
    if (values_size < 1 && non_null > 0) fail(ctx, ": truncated dictionary indices");
    std::vector<uint32_t> idx(non_null);
    if (non_null > 0) {
      if (values[0] > 32) fail(ctx, ": bad dictionary index bit width ", int(values[0]));
      pq::RleDecoder dec(values + 1, values_size - 1, values[0], &ctx);
      dec.get(idx.data(), non_null);
    }
    const size_t dict_n = is_bytes ? dict.bytes.size() : dict.ints.size();
    for (uint32_t i : idx) {
      if (i >= dict_n) fail(ctx, ": dictionary index ", i, " out of range (", dict_n, " entries)");
      if (is_bytes) out->bytes.push_back(dict.bytes[i]);
      else out->ints.push_back(dict.ints[i]);
    }
  } else if (encoding == int32_t(Encoding::DELTA_BINARY_PACKED) && !is_bytes) {
    pq::delta_binary_unpack(values, values_size, non_null, &out->ints, ctx);
    if (leaf.type == int32_t(Type::INT32))
      for (auto& v : out->ints) v = int32_t(uint32_t(uint64_t(v)));
  } else if (encoding == int32_t(Encoding::DELTA_LENGTH_BYTE_ARRAY) && is_bytes) {
    pq::delta_length_byte_array(values, values_size, non_null, &out->bytes, ctx);
  } else if (encoding == int32_t(Encoding::DELTA_BYTE_ARRAY) && is_bytes) {
    pq::delta_byte_array(values, values_size, non_null, &out->bytes, &out->rebuilt, kMaxPageBytes, ctx);
  } else {
    fail(ctx, ": unsupported value encoding ", pq::encoding_name(encoding), " (", encoding,
         ") for this column; llmc reads PLAIN, dictionary and DELTA encodings");
  }
}

bool is_data_page(int32_t t) {
  return t == int32_t(PageType::DATA_PAGE) || t == int32_t(PageType::DATA_PAGE_V2);
}

// Rows a data page covers (flat columns: one row per level entry).
int64_t page_rows(const pq::PageHeader& h, const Leaf& leaf) {
  if (h.type == int32_t(PageType::DATA_PAGE_V2) && h.data_page_header_v2)
    return h.data_page_header_v2->num_rows;
  if (leaf.max_rep == 0 && h.data_page_header) return h.data_page_header->num_values;
  return -1;  // unknown without decoding
}

// Per-row values of a small column (every value of one column chunk).
struct RowValues {
  std::vector<std::string> str;
  std::vector<int64_t> num;
  std::vector<std::vector<int64_t>> list;
};

// ---------------- reader ----------------

struct Entry {
  TensorInfo info;
  uint64_t first_row = 0;
  uint64_t rows = 0;
};

class ParquetTensorFile : public TensorReader {
 public:
  ParquetTensorFile(const std::filesystem::path& path, std::map<std::string, std::string>* kv)
      : file_(path), origin_(path.string()) {
    try {
      read_footer(kv);
      read_index();
    } catch (const std::bad_alloc&) {
      fail(origin_, ": out of memory while reading the index (corrupt sizes?)");
    }
  }

  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return by_name_.count(name) != 0; }
  std::string origin() const override { return origin_; }
  TensorRef get(const std::string& name) const override;
  TensorRef get_impl(const std::string& name) const;

 private:
  enum Col { kName, kDType, kShape, kChunk, kData, kNumCols };

  void read_footer(std::map<std::string, std::string>* kv);
  void bind_columns();
  void read_index();
  void chunk_range(size_t g, int col, uint64_t* start, uint64_t* end, const std::string& ctx) const;
  RowValues read_small_column(size_t g, int col) const;

  File file_;
  std::string origin_;
  pq::FileMetaData meta_;
  uint64_t data_end_ = 0;  // where the footer starts
  std::vector<Leaf> leaves_;
  int col_index_[kNumCols] = {};
  std::vector<uint64_t> rg_first_row_;
  std::vector<Entry> entries_;
  std::vector<TensorInfo> infos_;
  std::unordered_map<std::string, size_t> by_name_;
};

// Reads and validates the magic bytes and the footer of `f`; returns where the footer starts.
uint64_t read_file_metadata(const File& f, const std::string& origin, pq::FileMetaData* meta,
                            std::map<std::string, std::string>* kv) {
  const uint64_t size = f.size();
  if (size < 12) fail(origin, ": not a Parquet file (", size, " bytes is too short)");
  uint8_t head[4], tail[8];
  f.read(0, 4, head, origin);
  f.read(size - 8, 8, tail, origin);
  if (std::memcmp(head, kMagic, 4) != 0) fail(origin, ": not a Parquet file (no PAR1 magic at the start)");
  if (std::memcmp(tail + 4, "PARE", 4) == 0) fail(origin, ": encrypted Parquet files are not supported");
  if (std::memcmp(tail + 4, kMagic, 4) != 0)
    fail(origin, ": not a Parquet file or truncated (no PAR1 magic at the end)");
  const uint64_t footer_len = load_u32(tail);
  if (footer_len > size - 12) fail(origin, ": footer length ", footer_len, " exceeds the file");
  if (footer_len > kMaxFooterBytes) fail(origin, ": footer of ", footer_len, " bytes is too large");
  const uint64_t data_end = size - 8 - footer_len;
  Bytes buf{size_t(footer_len)};
  f.read(data_end, buf.n, buf.data(), origin);
  thrift::ThriftReader r(buf.data(), buf.n, origin + ": footer");
  *meta = pq::decode_file_metadata(r);
  for (const auto& e : meta->key_value_metadata) {
    if (!kv->emplace(e.key, e.value.value_or("")).second)
      fail(origin, ": duplicate key-value metadata key '", e.key, "'");
  }
  return data_end;
}

// Byte range [start, end) of one column chunk (dictionary page included), checked against the
// data region that ends at `data_end`.
void column_chunk_range(const pq::ColumnMetaData& m, uint64_t data_end, uint64_t* start, uint64_t* end,
                        const std::string& ctx) {
  int64_t s = m.data_page_offset;
  if (m.dictionary_page_offset && *m.dictionary_page_offset > 0 && *m.dictionary_page_offset < s)
    s = *m.dictionary_page_offset;
  if (s < 4 || uint64_t(s) > data_end || m.total_compressed_size < 0 ||
      uint64_t(m.total_compressed_size) > data_end - uint64_t(s))
    fail(ctx, ": column chunk [", s, ", +", m.total_compressed_size, ") lies outside the data region");
  *start = uint64_t(s);
  *end = uint64_t(s) + uint64_t(m.total_compressed_size);
}

// The metadata of one column chunk of `leaf`, checked: in this file, present, of the schema's
// type and path, with a non-negative value count. `ctx` names the row group.
const pq::ColumnMetaData& checked_chunk_meta(const pq::ColumnChunk& cc, const Leaf& leaf,
                                             const std::string& ctx) {
  if (cc.file_path) fail(ctx, ": column '", leaf.dotted(), "' lives in another file (", *cc.file_path, ")");
  if (!cc.meta_data) fail(ctx, ": column '", leaf.dotted(), "' has no metadata");
  const auto& m = *cc.meta_data;
  if (m.type != leaf.type) fail(ctx, ": column '", leaf.dotted(), "' type differs from the schema");
  if (!m.path_in_schema.empty() && m.path_in_schema != leaf.path)
    fail(ctx, ": column chunk order does not match the schema at '", leaf.dotted(), "'");
  if (m.num_values < 0) fail(ctx, ": column '", leaf.dotted(), "' has a negative value count");
  return m;
}

// Decodes the data pages of one column chunk [start, end) in order (reading its dictionary page
// and skipping index pages), calling fn for each, until the chunk's num_values level entries are
// seen. Returns the level entries decoded.
int64_t for_each_data_page(const File& f, uint64_t start, uint64_t end, const pq::ColumnMetaData& m,
                           const Leaf& leaf, const std::string& ctx,
                           const std::function<void(const DecodedPage&)>& fn) {
  PageCursor cur(f, start, end, ctx);
  Dictionary dict;
  int64_t entries = 0;
  while (!cur.done() && entries < m.num_values) {
    const PageInfo pi = cur.next();
    if (pi.h.type == int32_t(PageType::DICTIONARY_PAGE)) {
      decode_dictionary_page(f, pi, m.codec, leaf, &dict, ctx);
      continue;
    }
    if (!is_data_page(pi.h.type)) continue;  // index pages
    DecodedPage dp;
    decode_data_page(f, pi, m.codec, leaf, dict, &dp, ctx);
    entries += int64_t(dp.num_values);
    fn(dp);
  }
  return entries;
}

void ParquetTensorFile::read_footer(std::map<std::string, std::string>* kv) {
  data_end_ = read_file_metadata(file_, origin_, &meta_, kv);
  if (meta_.num_rows < 0 || uint64_t(meta_.num_rows) > kMaxRows)
    fail(origin_, ": bad row count ", meta_.num_rows);
  leaves_ = SchemaWalker(meta_.schema, origin_ + ": schema").walk();
  bind_columns();
}

void ParquetTensorFile::bind_columns() {
  static const char* const kNames[kNumCols] = {"name", "dtype", "shape", "chunk", "data"};
  for (int c = 0; c < kNumCols; ++c) {
    int found = -1;
    for (size_t i = 0; i < leaves_.size(); ++i) {
      if (leaves_[i].path[0] != kNames[c]) continue;
      if (found >= 0) fail(origin_, ": column '", kNames[c], "' appears more than once in the schema");
      found = int(i);
    }
    if (found < 0) fail(origin_, ": missing column '", kNames[c], "' (not an llmc tensor file)");
    const Leaf& l = leaves_[size_t(found)];
    const bool is_list = c == kShape;
    const bool ints = c == kShape || c == kChunk;
    const bool type_ok = ints ? (l.type == int32_t(Type::INT32) || l.type == int32_t(Type::INT64))
                              : l.type == int32_t(Type::BYTE_ARRAY);
    if (!type_ok)
      fail(origin_, ": column '", l.dotted(), "' has physical type ", l.type, ", expected ",
           ints ? "INT32/INT64" : "BYTE_ARRAY");
    if (l.max_rep != (is_list ? 1 : 0))
      fail(origin_, ": column '", l.dotted(), "' must be ", is_list ? "a list of integers" : "a single value per row");
    col_index_[c] = found;
  }
}

void ParquetTensorFile::chunk_range(size_t g, int col, uint64_t* start, uint64_t* end,
                                    const std::string& ctx) const {
  column_chunk_range(*meta_.row_groups[g].columns[size_t(col_index_[col])].meta_data, data_end_, start,
                     end, ctx);
}

RowValues ParquetTensorFile::read_small_column(size_t g, int col) const {
  const Leaf& leaf = leaves_[size_t(col_index_[col])];
  const std::string ctx = origin_ + ": row group " + std::to_string(g) + ", column '" + leaf.dotted() + "'";
  const auto& m = *meta_.row_groups[g].columns[size_t(col_index_[col])].meta_data;
  const uint64_t rows = uint64_t(meta_.row_groups[g].num_rows);
  uint64_t start, end;
  chunk_range(g, col, &start, &end, ctx);
  RowValues rv;
  const bool is_bytes = leaf.type == int32_t(Type::BYTE_ARRAY);
  const int64_t entries = for_each_data_page(file_, start, end, m, leaf, ctx, [&](const DecodedPage& dp) {
    size_t vi = 0;  // next non-null value
    for (size_t i = 0; i < dp.num_values; ++i) {
      const uint32_t def = leaf.max_def ? dp.def[i] : 0;
      const bool present = def == uint32_t(leaf.max_def);
      if (leaf.max_rep == 0) {
        if (!present) fail(ctx, ": null value in row ", rv.str.size() + rv.num.size());
        if (is_bytes) rv.str.emplace_back(dp.bytes[vi++]);
        else rv.num.push_back(dp.ints[vi++]);
        continue;
      }
      const uint32_t rep = dp.rep[i];
      if (rep == 0) {
        if (rv.list.size() >= rows) fail(ctx, ": more rows than the row group's ", rows);
        rv.list.emplace_back();
      } else if (rv.list.empty()) {
        fail(ctx, ": first list entry continues a previous row");
      }
      if (def < uint32_t(leaf.list_def)) fail(ctx, ": null list in row ", rv.list.size() - 1);
      if (def < uint32_t(leaf.rep_def)) {
        if (rep != 0) fail(ctx, ": empty list marker inside a list");
        continue;  // empty list
      }
      if (!present) fail(ctx, ": null list element in row ", rv.list.size() - 1);
      if (rv.list.back().size() >= 64) fail(ctx, ": list in row ", rv.list.size() - 1, " is too long");
      rv.list.back().push_back(dp.ints[vi++]);
    }
  });
  const uint64_t got = leaf.max_rep ? rv.list.size() : (is_bytes ? rv.str.size() : rv.num.size());
  if (got != rows || entries != m.num_values)
    fail(ctx, ": holds ", got, " rows / ", entries, " values, metadata says ", rows, " / ", m.num_values);
  return rv;
}

void ParquetTensorFile::read_index() {
  uint64_t total = 0;
  const size_t ncols = leaves_.size();
  for (size_t g = 0; g < meta_.row_groups.size(); ++g) {
    const auto& rg = meta_.row_groups[g];
    const std::string ctx = origin_ + ": row group " + std::to_string(g);
    if (rg.num_rows < 0 || uint64_t(rg.num_rows) > kMaxRows - total) fail(ctx, ": bad row count ", rg.num_rows);
    if (rg.columns.size() != ncols)
      fail(ctx, ": has ", rg.columns.size(), " column chunks, the schema has ", ncols, " columns");
    for (int c = 0; c < kNumCols; ++c)
      checked_chunk_meta(rg.columns[size_t(col_index_[c])], leaves_[size_t(col_index_[c])], ctx);
    rg_first_row_.push_back(total);
    total += uint64_t(rg.num_rows);
  }
  if (total != uint64_t(meta_.num_rows))
    fail(origin_, ": row groups hold ", total, " rows, the footer says ", meta_.num_rows);

  // Decode the small columns and group rows into tensors.
  std::set<std::string> seen;
  Entry* cur = nullptr;
  std::string cur_dtype;
  uint64_t row = 0;
  for (size_t g = 0; g < meta_.row_groups.size(); ++g) {
    const RowValues names = read_small_column(g, kName);
    const RowValues dtypes = read_small_column(g, kDType);
    const RowValues shapes = read_small_column(g, kShape);
    const RowValues chunks = read_small_column(g, kChunk);
    for (size_t i = 0; i < names.str.size(); ++i, ++row) {
      const std::string& name = names.str[i];
      const int64_t chunk = chunks.num[i];
      if (cur && cur->info.name == name) {
        if (chunk != int64_t(cur->rows))
          fail(origin_, ": tensor '", name, "': chunk ", chunk, " follows chunk ", cur->rows - 1,
               chunk == 0 ? " (duplicate tensor name)" : " (chunks not contiguous)");
        if (dtypes.str[i] != cur_dtype || shapes.list[i] != cur->info.shape)
          fail(origin_, ": tensor '", name, "': chunk ", chunk, " disagrees on dtype or shape");
        ++cur->rows;
        continue;
      }
      if (name.empty()) fail(origin_, ": row ", row, " has an empty tensor name");
      if (!seen.insert(name).second)
        fail(origin_, ": tensor '", name, "' appears twice (its chunks are not consecutive rows)");
      if (chunk != 0) fail(origin_, ": tensor '", name, "': first chunk is ", chunk, ", expected 0");
      Entry e;
      e.info.name = name;
      e.first_row = row;
      e.rows = 1;
      if (!parse_dtype(dtypes.str[i], &e.info.dtype))
        fail(origin_, ": tensor '", name, "': unknown dtype '", dtypes.str[i], "'");
      e.info.shape = shapes.list[i];
      uint64_t n = dtype_size(e.info.dtype);
      for (int64_t d : e.info.shape) {
        if (d < 0) fail(origin_, ": tensor '", name, "': negative dimension in shape ", shape_str(e.info.shape));
        if (d > 0 && n > (uint64_t(1) << 62) / uint64_t(d))
          fail(origin_, ": tensor '", name, "': shape ", shape_str(e.info.shape), " is too large");
        n *= uint64_t(d);
      }
      e.info.nbytes = n;
      entries_.push_back(std::move(e));
      cur = &entries_.back();
      cur_dtype = dtypes.str[i];
    }
  }
  for (size_t i = 0; i < entries_.size(); ++i) {
    infos_.push_back(entries_[i].info);
    by_name_[entries_[i].info.name] = i;
  }
}

TensorRef ParquetTensorFile::get(const std::string& name) const {
  try {
    return get_impl(name);
  } catch (const std::bad_alloc&) {
    fail(origin_, ": tensor '", name, "': out of memory while decoding (corrupt sizes?)");
  }
}

TensorRef ParquetTensorFile::get_impl(const std::string& name) const {
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) fail(origin_, ": no tensor '", name, "'");
  const Entry& e = entries_[it->second];
  const std::string tctx = origin_ + ": tensor '" + name + "'";
  const uint64_t row_end = e.first_row + e.rows;
  const Leaf& leaf = leaves_[size_t(col_index_[kData])];
  size_t g0 = size_t(std::upper_bound(rg_first_row_.begin(), rg_first_row_.end(), e.first_row) -
                     rg_first_row_.begin()) - 1;
  // The output buffer is allocated at once when the data column chunks plausibly hold the
  // tensor (always so for llmc's files) and grown as data arrives otherwise, so a corrupt shape
  // cannot trigger a huge allocation.
  uint64_t declared = 0, compressed = 0;
  for (size_t g = g0; g < meta_.row_groups.size() && rg_first_row_[g] < row_end; ++g) {
    const auto& m = *meta_.row_groups[g].columns[size_t(col_index_[kData])].meta_data;
    declared += uint64_t(std::clamp<int64_t>(m.total_uncompressed_size, 0, int64_t(1) << 50));
    compressed += uint64_t(std::clamp<int64_t>(m.total_compressed_size, 0, int64_t(1) << 50));
  }
  uint64_t cap = std::min({e.info.nbytes, declared, compressed * 64 + (1u << 20)});
  auto buf = std::shared_ptr<uint8_t[]>(new uint8_t[std::max<uint64_t>(cap, 1)]);
  uint64_t filled = 0;
  auto reserve = [&](uint64_t n) {  // room for n more bytes (n <= nbytes - filled)
    if (filled + n <= cap) return;
    const uint64_t nc = std::min(e.info.nbytes, std::max(filled + n, cap * 2));
    auto nb = std::shared_ptr<uint8_t[]>(new uint8_t[nc]);
    if (filled) std::memcpy(nb.get(), buf.get(), filled);
    buf = std::move(nb);
    cap = nc;
  };
  auto too_long = [&] {
    fail(tctx, ": data holds more than the ", e.info.nbytes, " bytes its shape ", shape_str(e.info.shape),
         " and dtype need");
  };
  auto put = [&](const uint8_t* p, size_t n) {
    if (n > e.info.nbytes - filled) too_long();
    reserve(n);
    if (n) std::memcpy(buf.get() + filled, p, n);
    filled += n;
  };
  // Row groups overlapping [first_row, row_end).
  for (size_t g = g0; g < meta_.row_groups.size() && rg_first_row_[g] < row_end; ++g) {
    const std::string ctx = tctx + ": row group " + std::to_string(g) + ", column 'data'";
    const auto& m = *meta_.row_groups[g].columns[size_t(col_index_[kData])].meta_data;
    uint64_t start, end;
    chunk_range(g, kData, &start, &end, ctx);
    PageCursor cur(file_, start, end, ctx);
    Dictionary dict;
    uint64_t row = rg_first_row_[g];
    const uint64_t rg_end = row + uint64_t(meta_.row_groups[g].num_rows);
    while (row < std::min(row_end, rg_end)) {
      if (cur.done()) fail(ctx, ": column chunk ends before row ", row - rg_first_row_[g]);
      const PageInfo pi = cur.next();
      if (pi.h.type == int32_t(PageType::DICTIONARY_PAGE)) {
        decode_dictionary_page(file_, pi, m.codec, leaf, &dict, ctx);
        continue;
      }
      if (!is_data_page(pi.h.type)) continue;
      const int64_t n = page_rows(pi.h, leaf);
      if (n < 0 || n > kMaxPageValues) fail(ctx, ": bad page row count ", n);
      if (row + uint64_t(n) <= e.first_row) {  // page entirely before the tensor: skip unread
        row += uint64_t(n);
        continue;
      }
      // Fast path (llmc's own layout): one PLAIN uncompressed value read straight into place.
      const auto& dph = pi.h.data_page_header;
      if (n == 1 && leaf.max_def == 0 && dph && dph->encoding == int32_t(Encoding::PLAIN) &&
          m.codec == int32_t(Codec::UNCOMPRESSED) && pi.h.compressed_page_size >= 4 &&
          pi.h.uncompressed_page_size == pi.h.compressed_page_size) {
        uint8_t lenb[4];
        file_.read(pi.body_off, 4, lenb, ctx);
        const uint64_t len = load_u32(lenb);
        if (len + 4 != uint64_t(pi.h.compressed_page_size))
          fail(ctx, ": PLAIN value length ", len, " disagrees with its page size");
        if (len > e.info.nbytes - filled) too_long();
        reserve(len);
        file_.read(pi.body_off + 4, size_t(len), buf.get() + filled, ctx);
        filled += len;
        ++row;
        continue;
      }
      // Fast path (llmc's ZSTD pages): stream-decompress the value straight into place.
      if (n == 1 && leaf.max_def == 0 && dph && dph->encoding == int32_t(Encoding::PLAIN) &&
          m.codec == int32_t(Codec::ZSTD) && pi.h.uncompressed_page_size >= 4) {
        Bytes raw(size_t(pi.h.compressed_page_size));
        file_.read(pi.body_off, raw.n, raw.data(), ctx);
        pq::ZstdStream zs(raw.data(), raw.n, ctx);
        uint8_t lenb[4];
        zs.read(lenb, 4);
        const uint64_t len = load_u32(lenb);
        if (len + 4 != uint64_t(pi.h.uncompressed_page_size))
          fail(ctx, ": PLAIN value length ", len, " disagrees with its page size");
        if (len > e.info.nbytes - filled) too_long();
        reserve(len);
        zs.read(buf.get() + filled, size_t(len));
        zs.finish();
        filled += len;
        ++row;
        continue;
      }
      DecodedPage dp;
      decode_data_page(file_, pi, m.codec, leaf, dict, &dp, ctx);
      if (dp.num_values != uint64_t(n)) fail(ctx, ": page row count disagrees with its values");
      size_t vi = 0;
      for (size_t i = 0; i < dp.num_values; ++i, ++row) {
        const bool present = leaf.max_def == 0 || dp.def[i] == uint32_t(leaf.max_def);
        if (!present) {
          if (row >= e.first_row && row < row_end) fail(ctx, ": null data in chunk ", row - e.first_row);
          continue;
        }
        const std::string_view v = dp.bytes[vi++];
        if (row >= e.first_row && row < row_end) put(reinterpret_cast<const uint8_t*>(v.data()), v.size());
      }
    }
  }
  if (filled != e.info.nbytes)
    fail(tctx, ": data holds ", filled, " bytes, its shape ", shape_str(e.info.shape), " and dtype ",
         dtype_traits(e.info.dtype).safetensors, " need ", e.info.nbytes);
  TensorRef ref;
  ref.info = e.info;
  ref.data = buf.get();
  ref.keepalive = std::shared_ptr<const void>(buf, buf.get());
  return ref;
}

}  // namespace

ParquetCheckpointFile open_parquet_checkpoint(const std::filesystem::path& path) {
  ParquetCheckpointFile out;
  out.tensors = std::make_unique<ParquetTensorFile>(path, &out.kv);
  return out;
}

ParquetColumnStats read_parquet_string_column(
    const std::filesystem::path& path, const std::string& column,
    const std::function<void(uint64_t row, std::string_view value)>& fn) {
  const std::string origin = path.string();
  try {
    File f(path);
    pq::FileMetaData meta;
    std::map<std::string, std::string> kv;
    const uint64_t data_end = read_file_metadata(f, origin, &meta, &kv);
    if (meta.num_rows < 0) fail(origin, ": bad row count ", meta.num_rows);
    const std::vector<Leaf> leaves = SchemaWalker(meta.schema, origin + ": schema").walk();
    int found = -1;
    std::string names;
    for (size_t i = 0; i < leaves.size(); ++i) {
      names += (names.empty() ? "" : ", ") + leaves[i].dotted();
      if (leaves[i].path[0] != column) continue;
      if (found >= 0) fail(origin, ": column '", column, "' is a group with several leaves (", leaves[i].dotted(), ")");
      found = int(i);
    }
    if (found < 0) fail(origin, ": no column '", column, "' (columns: ", names.empty() ? "none" : names, ")");
    const Leaf& leaf = leaves[size_t(found)];
    if (leaf.type != int32_t(Type::BYTE_ARRAY) || leaf.max_rep != 0 || leaf.path.size() != 1)
      fail(origin, ": column '", leaf.dotted(), "' is not a plain string column (type ", leaf.type,
           leaf.max_rep ? ", repeated" : "", ")");
    ParquetColumnStats st;
    for (size_t g = 0; g < meta.row_groups.size(); ++g) {
      const auto& rg = meta.row_groups[g];
      const std::string rg_ctx = origin + ": row group " + std::to_string(g);
      const std::string ctx = rg_ctx + ", column '" + column + "'";
      if (rg.num_rows < 0) fail(rg_ctx, ": bad row count ", rg.num_rows);
      if (rg.columns.size() != leaves.size())
        fail(rg_ctx, ": has ", rg.columns.size(), " column chunks, the schema has ", leaves.size(), " columns");
      const auto& m = checked_chunk_meta(rg.columns[size_t(found)], leaf, rg_ctx);
      uint64_t start, end;
      column_chunk_range(m, data_end, &start, &end, ctx);
      const int64_t entries = for_each_data_page(f, start, end, m, leaf, ctx, [&](const DecodedPage& dp) {
        size_t vi = 0;
        for (size_t i = 0; i < dp.num_values; ++i, ++st.rows) {
          if (leaf.max_def && dp.def[i] != uint32_t(leaf.max_def)) {
            ++st.nulls;
            continue;
          }
          fn(st.rows, dp.bytes[vi++]);
        }
      });
      if (entries != m.num_values || entries != rg.num_rows)
        fail(ctx, ": holds ", entries, " values, metadata says ", m.num_values, " values in ", rg.num_rows, " rows");
    }
    if (st.rows != uint64_t(meta.num_rows))
      fail(origin, ": row groups hold ", st.rows, " rows, the footer says ", meta.num_rows);
    return st;
  } catch (const std::bad_alloc&) {
    fail(origin, ": out of memory while reading column '", column, "' (corrupt sizes?)");
  }
}

// ---------------- writer ----------------

namespace {

pq::SchemaElement leaf_element(const char* name, Type t, bool utf8) {
  pq::SchemaElement e;
  e.name = name;
  e.type = int32_t(t);
  e.repetition_type = int32_t(Repetition::REQUIRED);
  if (utf8) {
    e.converted_type = int32_t(pq::ConvertedType::UTF8);
    e.logical_type = int16_t(pq::LogicalKind::STRING);
  }
  return e;
}

std::vector<pq::SchemaElement> tensor_schema() {
  std::vector<pq::SchemaElement> s;
  pq::SchemaElement root;
  root.name = "schema";
  root.num_children = 5;
  s.push_back(root);
  s.push_back(leaf_element("name", Type::BYTE_ARRAY, true));
  s.push_back(leaf_element("dtype", Type::BYTE_ARRAY, true));
  pq::SchemaElement shape;  // required group shape (LIST) { repeated group list { required int64 element } }
  shape.name = "shape";
  shape.repetition_type = int32_t(Repetition::REQUIRED);
  shape.num_children = 1;
  shape.converted_type = int32_t(pq::ConvertedType::LIST);
  shape.logical_type = int16_t(pq::LogicalKind::LIST);
  s.push_back(shape);
  pq::SchemaElement list;
  list.name = "list";
  list.repetition_type = int32_t(Repetition::REPEATED);
  list.num_children = 1;
  s.push_back(list);
  s.push_back(leaf_element("element", Type::INT64, false));
  s.push_back(leaf_element("chunk", Type::INT32, false));
  s.push_back(leaf_element("data", Type::BYTE_ARRAY, false));
  return s;
}

// One column chunk being assembled: serialized pages plus the totals for its metadata.
struct ChunkBuf {
  std::string bytes;
  int64_t uncompressed = 0;
  int64_t values = 0;
};

}  // namespace

struct ParquetTensorWriter::Impl {
  std::string path;
  uint64_t chunk_bytes = 0;
  uint64_t row_group_bytes = kDefaultRowGroupBytes;
  int32_t codec = 0;
  int fd = -1;
  uint64_t pos = 0;
  bool finished = false;
  std::map<std::string, std::string> kv;
  std::set<std::string> names;
  std::vector<pq::RowGroup> row_groups;
  int64_t total_rows = 0;
  // current row group
  struct Row {
    std::string name, dtype;
    Shape shape;
    int32_t chunk;
  };
  std::vector<Row> rows;
  ChunkBuf data;

  void write(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    while (n > 0) {
      const ssize_t r = ::write(fd, c, std::min<size_t>(n, 1u << 30));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) fail(path, ": write error: ", std::strerror(errno));
      c += r;
      n -= size_t(r);
      pos += uint64_t(r);
    }
  }

  // Appends one data page (v1) holding `body` (levels + values, uncompressed) to *out.
  void add_page(const std::string& body, int32_t num_values, ChunkBuf* out) const {
    add_page(reinterpret_cast<const uint8_t*>(body.data()), body.size(), nullptr, 0, num_values, out);
  }
  // Page body = head[0..head_n) + tail[0..tail_n) (avoids concatenating big tensors).
  void add_page(const uint8_t* head, size_t head_n, const uint8_t* tail, size_t tail_n,
                int32_t num_values, ChunkBuf* out) const {
    pq::PageHeader h;
    h.type = int32_t(PageType::DATA_PAGE);
    h.uncompressed_page_size = int32_t(head_n + tail_n);
    pq::DataPageHeader d;
    d.num_values = num_values;
    d.encoding = int32_t(Encoding::PLAIN);
    d.definition_level_encoding = int32_t(Encoding::RLE);
    d.repetition_level_encoding = int32_t(Encoding::RLE);
    h.data_page_header = d;
    std::string compressed;
    if (codec == int32_t(Codec::ZSTD)) {
      if (tail_n) {
        std::string joined(reinterpret_cast<const char*>(head), head_n);
        joined.append(reinterpret_cast<const char*>(tail), tail_n);
        compressed = pq::zstd_compress(reinterpret_cast<const uint8_t*>(joined.data()), joined.size());
      } else {
        compressed = pq::zstd_compress(head, head_n);
      }
      h.compressed_page_size = int32_t(compressed.size());
    } else {
      h.compressed_page_size = h.uncompressed_page_size;
    }
    thrift::ThriftWriter w;
    pq::encode_page_header(w, h);
    out->bytes += w.bytes();
    if (codec == int32_t(Codec::ZSTD)) {
      out->bytes += compressed;
    } else {
      out->bytes.append(reinterpret_cast<const char*>(head), head_n);
      if (tail_n) out->bytes.append(reinterpret_cast<const char*>(tail), tail_n);
    }
    out->uncompressed += int64_t(w.bytes().size() + head_n + tail_n);
    out->values += num_values;
  }

  pq::ColumnChunk emit_chunk(const ChunkBuf& c, Type type, std::vector<std::string> path_in_schema,
                             std::vector<int32_t> encodings) {
    pq::ColumnChunk cc;
    pq::ColumnMetaData m;
    m.type = int32_t(type);
    m.encodings = std::move(encodings);
    m.path_in_schema = std::move(path_in_schema);
    m.codec = codec;
    m.num_values = c.values;
    m.total_uncompressed_size = c.uncompressed;
    m.total_compressed_size = int64_t(c.bytes.size());
    m.data_page_offset = int64_t(pos);
    cc.file_offset = int64_t(pos);
    cc.meta_data = std::move(m);
    write(c.bytes.data(), c.bytes.size());
    return cc;
  }

  void flush_row_group() {
    if (rows.empty()) return;
    const int32_t n = int32_t(rows.size());
    pq::RowGroup rg;
    rg.num_rows = n;
    rg.file_offset = int64_t(pos);
    if (row_groups.size() < 32767) rg.ordinal = int16_t(row_groups.size());
    const uint64_t start = pos;
    auto string_col = [&](auto field) {
      std::string body;
      for (const Row& r : rows) {
        const std::string& s = r.*field;
        put_u32(&body, uint32_t(s.size()));
        body += s;
      }
      ChunkBuf c;
      add_page(body, n, &c);
      return c;
    };
    const ChunkBuf name_c = string_col(&Row::name);
    const ChunkBuf dtype_c = string_col(&Row::dtype);
    // shape: repetition levels (0 starts a row, 1 continues it), definition levels (1: an
    // element, 0: the empty list of a 0-d tensor), then the INT64 values.
    std::vector<uint32_t> rep, def;
    std::string values;
    for (const Row& r : rows) {
      if (r.shape.empty()) {
        rep.push_back(0);
        def.push_back(0);
      }
      for (size_t i = 0; i < r.shape.size(); ++i) {
        rep.push_back(i ? 1 : 0);
        def.push_back(1);
        put_u32(&values, uint32_t(uint64_t(r.shape[i])));
        put_u32(&values, uint32_t(uint64_t(r.shape[i]) >> 32));
      }
    }
    std::string body, lv;
    pq::rle_encode(rep.data(), rep.size(), 1, &lv);
    put_u32(&body, uint32_t(lv.size()));
    body += lv;
    lv.clear();
    pq::rle_encode(def.data(), def.size(), 1, &lv);
    put_u32(&body, uint32_t(lv.size()));
    body += lv;
    body += values;
    ChunkBuf shape_c;
    add_page(body, int32_t(rep.size()), &shape_c);
    body.clear();
    for (const Row& r : rows) put_u32(&body, uint32_t(r.chunk));
    ChunkBuf chunk_c;
    add_page(body, n, &chunk_c);

    const std::vector<int32_t> plain = {int32_t(Encoding::PLAIN)};
    const std::vector<int32_t> plain_rle = {int32_t(Encoding::PLAIN), int32_t(Encoding::RLE)};
    rg.columns.push_back(emit_chunk(name_c, Type::BYTE_ARRAY, {"name"}, plain));
    rg.columns.push_back(emit_chunk(dtype_c, Type::BYTE_ARRAY, {"dtype"}, plain));
    rg.columns.push_back(emit_chunk(shape_c, Type::INT64, {"shape", "list", "element"}, plain_rle));
    rg.columns.push_back(emit_chunk(chunk_c, Type::INT32, {"chunk"}, plain));
    rg.columns.push_back(emit_chunk(data, Type::BYTE_ARRAY, {"data"}, plain));
    int64_t unc = 0;
    for (const auto& c : rg.columns) unc += c.meta_data->total_uncompressed_size;
    rg.total_byte_size = unc;
    rg.total_compressed_size = int64_t(pos - start);
    row_groups.push_back(std::move(rg));
    total_rows += n;
    rows.clear();
    data.bytes.clear();  // keeps its capacity: no re-allocation or page faults per row group
    data.uncompressed = 0;
    data.values = 0;
  }
};

ParquetTensorWriter::ParquetTensorWriter(const std::filesystem::path& path, uint64_t chunk_bytes, bool zstd)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path.string();
  if (chunk_bytes == 0 || chunk_bytes > kMaxChunkBytes)
    fail(impl_->path, ": Parquet chunk size ", chunk_bytes, " out of range (1 byte .. 1 GiB)");
  impl_->chunk_bytes = chunk_bytes;
  impl_->codec = int32_t(zstd ? Codec::ZSTD : Codec::UNCOMPRESSED);
  impl_->fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (impl_->fd < 0) fail(impl_->path, ": cannot create: ", std::strerror(errno));
  impl_->write(kMagic, 4);
}

ParquetTensorWriter::~ParquetTensorWriter() {
  if (impl_ && impl_->fd >= 0) ::close(impl_->fd);
}

void ParquetTensorWriter::set_kv(const std::map<std::string, std::string>& kv) {
  if (impl_->finished) fail(impl_->path, ": set_kv() after finish()");
  for (const auto& [k, v] : kv)
    if (k.empty()) fail(impl_->path, ": empty key-value metadata key");
  impl_->kv = kv;
}

void ParquetTensorWriter::set_row_group_bytes(uint64_t bytes) {
  if (bytes == 0) fail(impl_->path, ": row group size must be positive");
  impl_->row_group_bytes = bytes;
}

void ParquetTensorWriter::add(const std::string& name, DType dtype, const Shape& shape, const void* data,
                              uint64_t nbytes) {
  Impl& w = *impl_;
  if (w.finished) fail(w.path, ": tensor '", name, "' added after finish()");
  if (name.empty()) fail(w.path, ": empty tensor name");
  if (w.names.count(name)) fail(w.path, ": tensor '", name, "' added twice");
  uint64_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    if (d < 0) fail(w.path, ": tensor '", name, "': negative dimension in shape ", shape_str(shape));
    if (d > 0 && n > (uint64_t(1) << 62) / uint64_t(d)) fail(w.path, ": tensor '", name, "': shape too large");
    n *= uint64_t(d);
  }
  if (n != nbytes)
    fail(w.path, ": tensor '", name, "': ", nbytes, " bytes given, shape ", shape_str(shape), " x ",
         dtype_traits(dtype).safetensors, " needs ", n);
  if (nbytes > 0 && !data) fail(w.path, ": tensor '", name, "': no data");
  const uint64_t pieces = nbytes == 0 ? 1 : (nbytes + w.chunk_bytes - 1) / w.chunk_bytes;
  if (pieces > uint64_t(INT32_MAX)) fail(w.path, ": tensor '", name, "' needs too many chunks");
  w.names.insert(name);
  // Room for one row group plus one chunk, so appends rarely re-allocate (kept across groups).
  const size_t want = size_t(std::min<uint64_t>(w.row_group_bytes, kDefaultRowGroupBytes) +
                             std::min<uint64_t>(w.chunk_bytes, kDefaultRowGroupBytes) + 4096);
  if (w.data.bytes.capacity() < want) w.data.bytes.reserve(want);
  const auto* src = static_cast<const uint8_t*>(data);
  for (uint64_t c = 0; c < pieces; ++c) {
    const uint64_t off = c * w.chunk_bytes;
    const uint64_t len = std::min<uint64_t>(w.chunk_bytes, nbytes - off);
    std::string len_prefix;
    put_u32(&len_prefix, uint32_t(len));
    w.add_page(reinterpret_cast<const uint8_t*>(len_prefix.data()), 4, len ? src + off : nullptr, size_t(len),
               1, &w.data);
    w.rows.push_back({name, dtype_traits(dtype).safetensors, shape, int32_t(c)});
    if (w.data.bytes.size() >= w.row_group_bytes) w.flush_row_group();
  }
}

void ParquetTensorWriter::finish() {
  Impl& w = *impl_;
  if (w.finished) fail(w.path, ": finish() called twice");
  w.flush_row_group();
  pq::FileMetaData m;
  m.version = 1;
  m.schema = tensor_schema();
  m.num_rows = w.total_rows;
  m.row_groups = std::move(w.row_groups);
  for (const auto& [k, v] : w.kv) m.key_value_metadata.push_back({k, v});
  m.created_by = std::string("llmc version ") + LLMC_VERSION + " (build llmc)";
  thrift::ThriftWriter tw;
  pq::encode_file_metadata(tw, m);
  const std::string& footer = tw.bytes();
  if (footer.size() > kMaxFooterBytes) fail(w.path, ": Parquet footer too large (", footer.size(), " bytes)");
  std::string tail;
  put_u32(&tail, uint32_t(footer.size()));
  tail.append(kMagic, 4);
  w.write(footer.data(), footer.size());
  w.write(tail.data(), tail.size());
  const int fd = w.fd;
  w.fd = -1;
  if (::close(fd) != 0) fail(w.path, ": close failed: ", std::strerror(errno));
  w.finished = true;
}

}  // namespace llmc
