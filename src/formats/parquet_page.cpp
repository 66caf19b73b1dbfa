// formats/parquet_page.cpp — page-level Parquet code shared by the reader and the writer: file
// access, schema flattening, footer, page headers and page decoding (see parquet_page.h).
#include "formats/parquet_page.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <zlib.h>

#include "core/error.h"
#include "core/fs.h"
#include "formats/parquet_encoding.h"
#include "formats/thrift_compact.h"

namespace llmc {
namespace pq = parquet;
namespace parquet {

// ---------------- checksums ----------------

uint32_t crc32_bytes(const void* p, size_t n, uint32_t crc) {
  if (n == 0) return crc;
  return uint32_t(::crc32_z(crc, static_cast<const Bytef*>(p), n));
}

uint32_t crc32_concat(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  return uint32_t(::crc32_combine(crc_a, crc_b, z_off_t(len_b)));
}

std::string crc_hex(uint32_t crc) {
  static const char* const kHex = "0123456789abcdef";
  std::string s(8, '0');
  for (int i = 0; i < 8; ++i) s[size_t(7 - i)] = kHex[(crc >> (4 * i)) & 15];
  return s;
}

void check_page_crc(const PageHeader& h, uint32_t crc, const std::string& ctx) {
  if (h.crc && uint32_t(*h.crc) != crc)
    fail(ctx, ": page CRC mismatch (stored ", crc_hex(uint32_t(*h.crc)), ", computed ", crc_hex(crc),
         "): the file is corrupt");
}

namespace {

// Where the 8 hex digits of the footer CRC lie in an encoded footer: after the last occurrence
// of the key followed by KeyValue's field-2 header (0x18: delta 1, BINARY) and length 8.
bool find_footer_crc(const uint8_t* p, size_t n, size_t* off) {
  std::string pat = kFooterCrcKey;
  pat += '\x18';
  pat += '\x08';
  const std::string_view s(reinterpret_cast<const char*>(p), n);
  const size_t at = s.rfind(pat);
  if (at == std::string_view::npos || n - (at + pat.size()) < 8) return false;
  *off = at + pat.size();
  return true;
}

constexpr char kCrcPlaceholder[] = "00000000";

}  // namespace

std::string seal_footer(FileMetaData m) {
  std::erase_if(m.key_value_metadata, [](const KeyValue& kv) { return kv.key == kFooterCrcKey; });
  m.key_value_metadata.push_back({kFooterCrcKey, std::string(kCrcPlaceholder)});
  thrift::ThriftWriter w;
  encode_file_metadata(w, m);
  std::string b = w.bytes();
  size_t off = 0;
  if (!find_footer_crc(reinterpret_cast<const uint8_t*>(b.data()), b.size(), &off))
    fail("parquet: internal error: no footer checksum slot in the encoded footer");
  b.replace(off, 8, crc_hex(crc32_bytes(b.data(), b.size())));
  return b;
}

// ---------------- positional file reads ----------------

File::File(const std::string& path) : name_(path) {
  fd_ = open_regular_file(path);  // refuses FIFOs / devices without blocking
  struct stat st{};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    fail(name_, ": not a regular file");
  }
  size_ = uint64_t(st.st_size);
}

File::~File() { ::close(fd_); }

void File::read(uint64_t off, size_t n, uint8_t* dst, const std::string& ctx) const {
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

// ---------------- schema ----------------

std::string Leaf::dotted() const {
  std::string s;
  for (const auto& p : path) s += (s.empty() ? "" : ".") + p;
  return s;
}

namespace {


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

}  // namespace

std::vector<Leaf> schema_leaves(const std::vector<SchemaElement>& schema, const std::string& ctx) {
  return SchemaWalker(schema, ctx).walk();
}

// ---------------- pages ----------------


PageInfo PageCursor::next() {
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




namespace {

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

}  // namespace

void decode_dictionary_page(const File& f, const PageInfo& pi, int32_t codec, const Leaf& leaf,
                            Dictionary* d, const std::string& ctx) {
  const auto& dh = pi.h.dictionary_page_header;
  if (!dh) fail(ctx, ": dictionary page without a dictionary page header");
  if (dh->encoding != int32_t(Encoding::PLAIN) && dh->encoding != int32_t(Encoding::PLAIN_DICTIONARY))
    fail(ctx, ": unsupported dictionary encoding ", pq::encoding_name(dh->encoding));
  if (dh->num_values < 0 || dh->num_values > kMaxPageValues) fail(ctx, ": bad dictionary size");
  Bytes raw(size_t(pi.h.compressed_page_size));
  f.read(pi.body_off, raw.n, raw.data(), ctx);
  if (pi.h.crc) check_page_crc(pi.h, crc32_bytes(raw.data(), raw.n), ctx + ": dictionary page");
  d->storage = decode_body(codec, raw.data(), raw.n, size_t(pi.h.uncompressed_page_size),
                           ctx + ": dictionary page");
  d->bytes.clear();
  d->ints.clear();
  decode_plain(leaf.type, d->storage.data(), d->storage.n, size_t(dh->num_values),
               false, &d->bytes, &d->ints, ctx + ": dictionary page");
  d->present = true;
}

namespace {

uint32_t checked_level_width(int max_level) { return uint32_t(pq::bit_width(uint64_t(max_level))); }

void decode_levels(const uint8_t* p, size_t n, int max_level, size_t count, std::vector<uint32_t>* out,
                   const std::string& ctx) {
  out->resize(count);
  pq::RleDecoder d(p, n, int(checked_level_width(max_level)), &ctx);
  d.get(out->data(), count);
  for (uint32_t v : *out)
    if (v > uint32_t(max_level)) fail(ctx, ": level ", v, " exceeds the maximum ", max_level);
}

}  // namespace

// Decodes one data page (v1 or v2) of `leaf` into `out`.
void decode_data_page(const File& f, const PageInfo& pi, int32_t codec, const Leaf& leaf,
                      const Dictionary& dict, DecodedPage* out, const std::string& ctx) {
  const auto& h = pi.h;
  int64_t num_values;
  int32_t encoding;
  Bytes raw(size_t(h.compressed_page_size));
  f.read(pi.body_off, raw.n, raw.data(), ctx);
  if (h.crc) check_page_crc(h, crc32_bytes(raw.data(), raw.n), ctx);
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

int64_t page_rows(const pq::PageHeader& h, const Leaf& leaf) {
  if (h.type == int32_t(PageType::DATA_PAGE_V2) && h.data_page_header_v2)
    return h.data_page_header_v2->num_rows;
  if (leaf.max_rep == 0 && h.data_page_header) return h.data_page_header->num_values;
  return -1;  // unknown without decoding
}


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
  // llmc's footer checksum, checked before decoding so that a corrupt footer says so.
  size_t slot = 0;
  const bool sealed = find_footer_crc(buf.data(), buf.n, &slot);
  if (sealed) {
    const std::string stored(reinterpret_cast<const char*>(buf.data()) + slot, 8);
    std::memcpy(buf.data() + slot, kCrcPlaceholder, 8);
    const std::string got = crc_hex(crc32_bytes(buf.data(), buf.n));
    std::memcpy(buf.data() + slot, stored.data(), 8);
    if (got != stored)
      fail(origin, ": footer checksum mismatch (stored '", stored, "', computed ", got,
           "): the file's metadata is corrupt");
  }
  thrift::ThriftReader r(buf.data(), buf.n, origin + ": footer");
  *meta = pq::decode_file_metadata(r);
  for (const auto& e : meta->key_value_metadata) {
    if (!kv->emplace(e.key, e.value.value_or("")).second)
      fail(origin, ": duplicate key-value metadata key '", e.key, "'");
  }
  const bool has_key = kv->erase(kFooterCrcKey) != 0;
  if (has_key != sealed || (!has_key && kv->count(kTensorCrcKey)))
    fail(origin, ": footer checksum entry missing or malformed: the file's metadata is corrupt");
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

}  // namespace parquet
}  // namespace llmc
