// formats/parquet_page.h — the page level of llmc's Parquet code (internal to formats/parquet*),
// shared by the reader (parquet_reader.cpp) and the writer (parquet_writer.cpp), as LevelDB's
// table/format.h is shared by table.cc and table_builder.cc.
//
// Contracts:
//  * File reads exact byte ranges with pread; a range outside the file, a short read or an I/O
//    error throws llmc::Error naming the context. Only regular files open.
//  * schema_leaves() flattens a Parquet schema into its leaf columns with their max definition
//    and repetition levels; a malformed tree (bad child counts, too deep, stray elements) throws.
//  * read_file_metadata() checks both PAR1 magics and the footer length, verifies llmc's footer
//    checksum when the footer carries one (kFooterCrcKey) before decoding it, and returns where
//    the footer starts; key-value pairs go to *kv (duplicates throw) without kFooterCrcKey. A
//    footer with kTensorCrcKey but no footer checksum throws (a flipped key cannot turn the
//    checks off).
//  * PageCursor walks the page headers of one column chunk; each page it returns lies inside
//    the chunk. decode_*_page() read one page body, check its CRC-32 when the header has one
//    (zlib's CRC-32 over the page bytes as stored after the header, as the Parquet spec
//    defines PageHeader.crc) and decode it; every size, level, index and length is checked before use.
//  * for_each_data_page() decodes a column chunk's data pages in order (dictionary pages are
//    read, index pages skipped).
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/parquet_meta.h"

namespace llmc::parquet {

constexpr char kMagic[4] = {'P', 'A', 'R', '1'};
constexpr uint64_t kMaxFooterBytes = 256ull << 20;   // footers of huge models are a few MB
constexpr uint64_t kMaxRows = 1ull << 24;            // tensor chunks per file
constexpr int64_t kMaxPageValues = 1ll << 24;        // level entries per page
constexpr uint64_t kMaxPageBytes = (1ull << 30) + (1ull << 20);  // decoded page body
constexpr uint64_t kMaxChunkBytes = 1ull << 30;      // writer: tensor bytes per row
constexpr uint64_t kDefaultRowGroupBytes = 64ull << 20;
constexpr int kMaxSchemaDepth = 32;

// Key-value metadata written by llmc's writer (reserved: set_kv() refuses them, the reader
// removes them from the map it returns). Values: the footer's CRC-32 (see seal_footer()), and
// one CRC-32 per tensor of its decoded bytes, in file order, separated by spaces. CRCs are
// written as 8 lowercase hex digits. See docs/formats.md.
constexpr const char* kFooterCrcKey = "llmc.footer_crc32";
constexpr const char* kTensorCrcKey = "llmc.tensor_crc32";

inline uint32_t load_u32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline void put_u32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(char(uint8_t(v >> (8 * i))));
}

// CRC-32 (ISO-HDLC, polynomial 0x04C11DB7 as in gzip; zlib's crc32), continuing from `crc`.
uint32_t crc32_bytes(const void* p, size_t n, uint32_t crc = 0);
// The CRC-32 of A followed by B from crc_a = CRC(A), crc_b = CRC(B) and B's length (zlib's
// crc32_combine): lets one pass over the bytes serve both a page CRC and a tensor CRC.
uint32_t crc32_concat(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
std::string crc_hex(uint32_t crc);  // 8 lowercase hex digits
// Throws llmc::Error naming ctx when the header carries a CRC and `crc` differs from it.
void check_page_crc(const PageHeader& h, uint32_t crc, const std::string& ctx);

// A buffer of uninitialised bytes (decoded pages may be large; no need to zero them).
struct Bytes {
  std::unique_ptr<uint8_t[]> p;
  size_t n = 0;
  explicit Bytes(size_t size = 0) : p(size ? new uint8_t[size] : nullptr), n(size) {}
  uint8_t* data() { return p.get(); }
  const uint8_t* data() const { return p.get(); }
};

// Positional reads of one regular file.
class File {
 public:
  explicit File(const std::string& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  // Reads exactly n bytes at off into dst.
  void read(uint64_t off, size_t n, uint8_t* dst, const std::string& ctx) const;

 private:
  std::string name_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// One leaf column of the schema.
struct Leaf {
  std::vector<std::string> path;  // from the first level below the root
  int32_t type = 0;
  int max_def = 0, max_rep = 0;
  int rep_def = 0;   // definition level that includes the (single) repeated node
  int list_def = 0;  // definition level of the repeated node's parent (below it: null list)
  std::string dotted() const;
};
std::vector<Leaf> schema_leaves(const std::vector<SchemaElement>& schema, const std::string& ctx);

// Encodes `m` as llmc writes footers: with a kFooterCrcKey entry appended last whose value is
// the CRC-32 of the encoded footer computed with that value set to "00000000".
std::string seal_footer(FileMetaData m);

// Reads and validates the magic bytes and the footer of `f`; returns where the footer starts.
uint64_t read_file_metadata(const File& f, const std::string& origin, FileMetaData* meta,
                            std::map<std::string, std::string>* kv);

// Byte range [start, end) of one column chunk (dictionary page included), checked against the
// data region that ends at `data_end`.
void column_chunk_range(const ColumnMetaData& m, uint64_t data_end, uint64_t* start, uint64_t* end,
                        const std::string& ctx);
// The metadata of one column chunk of `leaf`, checked: in this file, present, of the schema's
// type and path, with a non-negative value count. `ctx` names the row group.
const ColumnMetaData& checked_chunk_meta(const ColumnChunk& cc, const Leaf& leaf, const std::string& ctx);

struct PageInfo {
  PageHeader h;
  uint64_t body_off = 0;  // absolute file offset of the page body
};

// Walks the pages of one column chunk [start, end).
class PageCursor {
 public:
  PageCursor(const File& f, uint64_t start, uint64_t end, const std::string& ctx)
      : f_(f), pos_(start), end_(end), ctx_(ctx) {}
  bool done() const { return pos_ >= end_; }
  PageInfo next();

 private:
  const File& f_;
  uint64_t pos_, end_;
  const std::string& ctx_;
};

// Values of one column chunk's dictionary page.
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

void decode_dictionary_page(const File& f, const PageInfo& pi, int32_t codec, const Leaf& leaf,
                            Dictionary* d, const std::string& ctx);
// Decodes one data page (v1 or v2) of `leaf` into `out`.
void decode_data_page(const File& f, const PageInfo& pi, int32_t codec, const Leaf& leaf,
                      const Dictionary& dict, DecodedPage* out, const std::string& ctx);

bool is_data_page(int32_t page_type);
// Rows a data page covers, or -1 when unknown without decoding (v1 pages of repeated columns).
int64_t page_rows(const PageHeader& h, const Leaf& leaf);

// Decodes the data pages of one column chunk [start, end) in order (reading its dictionary page
// and skipping index pages), calling fn for each, until the chunk's num_values level entries are
// seen. Returns the level entries decoded.
int64_t for_each_data_page(const File& f, uint64_t start, uint64_t end, const ColumnMetaData& m,
                           const Leaf& leaf, const std::string& ctx,
                           const std::function<void(const DecodedPage&)>& fn);

}  // namespace llmc::parquet
