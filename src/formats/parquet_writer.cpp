// formats/parquet_writer.cpp — ParquetTensorWriter (formats/parquet.h), the table_builder of
// llmc's Parquet code. File layout (parquet-format 2.x, data page v1, PLAIN values, RLE levels;
// see docs/formats.md):
//   "PAR1" | row group 0 | row group 1 | ... | FileMetaData (Thrift compact) | len (u32 LE) | "PAR1"
// Each row group holds the column chunks name, dtype, shape, chunk, data in schema order; the
// data chunk has one page per row (tensor chunk), so a reader can seek to one tensor.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "core/error.h"
#include "formats/parquet.h"
#include "formats/parquet_encoding.h"
#include "formats/parquet_page.h"
#include "formats/thrift_compact.h"

namespace llmc {

namespace pq = parquet;
using pq::Codec;
using pq::Encoding;
using pq::PageType;
using pq::Repetition;
using pq::Type;
using pq::kDefaultRowGroupBytes;
using pq::kMagic;
using pq::kMaxChunkBytes;
using pq::kMaxFooterBytes;
using pq::put_u32;

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
  bool checksums = true;               // page CRCs, tensor CRCs, footer CRC
  std::string tensor_crcs;             // kTensorCrcKey's value
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
  // tail_crc: the CRC-32 of tail when the caller has it (saves a pass over the tensor bytes).
  void add_page(const uint8_t* head, size_t head_n, const uint8_t* tail, size_t tail_n,
                int32_t num_values, ChunkBuf* out, const uint32_t* tail_crc = nullptr) const {
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
    uint32_t crc = 0;
    if (codec == int32_t(Codec::ZSTD)) {
      if (tail_n) {
        std::string joined(reinterpret_cast<const char*>(head), head_n);
        joined.append(reinterpret_cast<const char*>(tail), tail_n);
        compressed = pq::zstd_compress(reinterpret_cast<const uint8_t*>(joined.data()), joined.size());
      } else {
        compressed = pq::zstd_compress(head, head_n);
      }
      h.compressed_page_size = int32_t(compressed.size());
      if (checksums) crc = pq::crc32_bytes(compressed.data(), compressed.size());
    } else {
      h.compressed_page_size = h.uncompressed_page_size;
      if (checksums)
        crc = tail_crc ? pq::crc32_concat(pq::crc32_bytes(head, head_n), *tail_crc, tail_n)
                       : pq::crc32_bytes(tail, tail_n, pq::crc32_bytes(head, head_n));
    }
    if (checksums) h.crc = int32_t(crc);
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
  for (const auto& [k, v] : kv) {
    if (k.empty()) fail(impl_->path, ": empty key-value metadata key");
    if (k == pq::kFooterCrcKey || k == pq::kTensorCrcKey)
      fail(impl_->path, ": key-value metadata key '", k, "' is reserved for the writer's checksums");
  }
  impl_->kv = kv;
}

void ParquetTensorWriter::set_row_group_bytes(uint64_t bytes) {
  if (bytes == 0) fail(impl_->path, ": row group size must be positive");
  impl_->row_group_bytes = bytes;
}

void ParquetTensorWriter::set_checksums(bool on) {
  if (impl_->finished || !impl_->names.empty()) fail(impl_->path, ": set_checksums() after the first add()");
  impl_->checksums = on;
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
  uint32_t tensor_crc = 0;
  for (uint64_t c = 0; c < pieces; ++c) {
    const uint64_t off = c * w.chunk_bytes;
    const uint64_t len = std::min<uint64_t>(w.chunk_bytes, nbytes - off);
    std::string len_prefix;
    put_u32(&len_prefix, uint32_t(len));
    // One pass over the chunk serves the page CRC and the tensor CRC.
    const uint32_t chunk_crc = w.checksums ? pq::crc32_bytes(src + off, size_t(len)) : 0;
    tensor_crc = pq::crc32_concat(tensor_crc, chunk_crc, len);
    w.add_page(reinterpret_cast<const uint8_t*>(len_prefix.data()), 4, len ? src + off : nullptr, size_t(len),
               1, &w.data, w.checksums ? &chunk_crc : nullptr);
    w.rows.push_back({name, dtype_traits(dtype).safetensors, shape, int32_t(c)});
    if (w.data.bytes.size() >= w.row_group_bytes) w.flush_row_group();
  }
  if (w.checksums) {
    if (!w.tensor_crcs.empty()) w.tensor_crcs += ' ';
    w.tensor_crcs += pq::crc_hex(tensor_crc);
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
  if (w.checksums) m.key_value_metadata.push_back({pq::kTensorCrcKey, w.tensor_crcs});
  m.created_by = std::string("llmc version ") + LLMC_VERSION + " (build llmc)";
  std::string footer;
  if (w.checksums) {
    footer = pq::seal_footer(std::move(m));
  } else {
    thrift::ThriftWriter tw;
    pq::encode_file_metadata(tw, m);
    footer = tw.bytes();
  }
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
