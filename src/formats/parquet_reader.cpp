// formats/parquet_reader.cpp — the Parquet readers of formats/parquet.h: ParquetTensorFile (the
// AI-OS tensor layout: footer and small columns at open, one tensor's data pages per get()) and
// read_parquet_string_column() (one string column of any dataset). Page-level work is in
// parquet_page.{h,cpp}.
#include <algorithm>
#include <cstring>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "formats/parquet.h"
#include "formats/parquet_encoding.h"
#include "formats/parquet_page.h"

namespace llmc {

namespace pq = parquet;
using pq::Bytes;
using pq::Codec;
using pq::DecodedPage;
using pq::Dictionary;
using pq::Encoding;
using pq::File;
using pq::Leaf;
using pq::PageCursor;
using pq::PageInfo;
using pq::PageType;
using pq::Type;
using pq::kMaxPageValues;
using pq::kMaxRows;
using pq::load_u32;

namespace {

// Per-row values of a small column (every value of one column chunk).
struct RowValues {
  std::vector<std::string> str;
  std::vector<int64_t> num;
  std::vector<std::vector<int64_t>> list;
};

struct Entry {
  TensorInfo info;
  uint64_t first_row = 0;
  uint64_t rows = 0;
  bool has_crc = false;
  uint32_t crc = 0;  // CRC-32 of the tensor's bytes (kTensorCrcKey)
};

// Parses kTensorCrcKey's value: `count` CRCs of 8 hex digits separated by single spaces.
std::vector<uint32_t> parse_tensor_crcs(const std::string& s, size_t count, const std::string& origin) {
  std::vector<uint32_t> out;
  auto bad = [&] {
    fail(origin, ": metadata '", pq::kTensorCrcKey, "' is malformed (", count,
         " tensors): the file's metadata is corrupt");
  };
  if (count == 0 ? !s.empty() : s.size() != count * 9 - 1) bad();
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    uint32_t v = 0;
    for (size_t k = 0; k < 8; ++k) {
      const char c = s[i * 9 + k];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) bad();
      v = v << 4 | uint32_t(d);
    }
    if (i + 1 < count && s[i * 9 + 8] != ' ') bad();
    out.push_back(v);
  }
  return out;
}

class ParquetTensorFile : public TensorReader {
 public:
  ParquetTensorFile(const std::filesystem::path& path, std::map<std::string, std::string>* kv)
      : file_(path.string()), origin_(path.string()) {
    try {
      read_footer(kv);
      const auto crcs = kv->find(pq::kTensorCrcKey);
      if (crcs != kv->end()) {
        tensor_crcs_ = std::move(crcs->second);
        has_tensor_crcs_ = true;
        kv->erase(crcs);
      }
      read_index();
    } catch (const std::bad_alloc&) {
      fail(origin_, ": out of memory while reading the index (corrupt sizes?)");
    }
  }

  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return by_name_.count(name) != 0; }
  std::string origin() const override { return origin_; }
  bool has_checksums() const { return has_tensor_crcs_; }
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
  std::string tensor_crcs_;
  bool has_tensor_crcs_ = false;
};


void ParquetTensorFile::read_footer(std::map<std::string, std::string>* kv) {
  data_end_ = pq::read_file_metadata(file_, origin_, &meta_, kv);
  if (meta_.num_rows < 0 || uint64_t(meta_.num_rows) > kMaxRows)
    fail(origin_, ": bad row count ", meta_.num_rows);
  leaves_ = pq::schema_leaves(meta_.schema, origin_ + ": schema");
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
  pq::column_chunk_range(*meta_.row_groups[g].columns[size_t(col_index_[col])].meta_data, data_end_, start,
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
  const int64_t entries = pq::for_each_data_page(file_, start, end, m, leaf, ctx, [&](const DecodedPage& dp) {
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
      pq::checked_chunk_meta(rg.columns[size_t(col_index_[c])], leaves_[size_t(col_index_[c])], ctx);
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
  if (has_tensor_crcs_) {
    const std::vector<uint32_t> crcs = parse_tensor_crcs(tensor_crcs_, entries_.size(), origin_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      entries_[i].has_crc = true;
      entries_[i].crc = crcs[i];
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
  uint32_t tcrc = 0;  // CRC-32 of buf[0, filled) when e.has_crc
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
    if (e.has_crc) tcrc = pq::crc32_bytes(buf.get() + filled, n, tcrc);
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
        pq::decode_dictionary_page(file_, pi, m.codec, leaf, &dict, ctx);
        continue;
      }
      if (!pq::is_data_page(pi.h.type)) continue;
      const int64_t n = pq::page_rows(pi.h, leaf);
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
        if (len + 4 != uint64_t(pi.h.compressed_page_size)) {
          if (pi.h.crc) {  // say so when the page is corrupt
            Bytes raw(size_t(pi.h.compressed_page_size));
            file_.read(pi.body_off, raw.n, raw.data(), ctx);
            pq::check_page_crc(pi.h, pq::crc32_bytes(raw.data(), raw.n), ctx);
          }
          fail(ctx, ": PLAIN value length ", len, " disagrees with its page size");
        }
        if (len > e.info.nbytes - filled) too_long();
        reserve(len);
        file_.read(pi.body_off + 4, size_t(len), buf.get() + filled, ctx);
        if (pi.h.crc || e.has_crc) {  // one pass over the bytes for both CRCs
          const uint32_t dcrc = pq::crc32_bytes(buf.get() + filled, size_t(len));
          if (pi.h.crc) pq::check_page_crc(pi.h, pq::crc32_concat(pq::crc32_bytes(lenb, 4), dcrc, len), ctx);
          tcrc = pq::crc32_concat(tcrc, dcrc, len);
        }
        filled += len;
        ++row;
        continue;
      }
      // Fast path (llmc's ZSTD pages): stream-decompress the value straight into place.
      if (n == 1 && leaf.max_def == 0 && dph && dph->encoding == int32_t(Encoding::PLAIN) &&
          m.codec == int32_t(Codec::ZSTD) && pi.h.uncompressed_page_size >= 4) {
        Bytes raw(size_t(pi.h.compressed_page_size));
        file_.read(pi.body_off, raw.n, raw.data(), ctx);
        if (pi.h.crc) pq::check_page_crc(pi.h, pq::crc32_bytes(raw.data(), raw.n), ctx);
        pq::ZstdStream zs(raw.data(), raw.n, ctx);
        uint8_t lenb[4];
        zs.read(lenb, 4);
        const uint64_t len = load_u32(lenb);
        if (len + 4 != uint64_t(pi.h.uncompressed_page_size))
          fail(ctx, ": PLAIN value length ", len, " disagrees with its page size");
        if (len > e.info.nbytes - filled) too_long();
        reserve(len);
        zs.read(buf.get() + filled, size_t(len));
        if (e.has_crc) tcrc = pq::crc32_bytes(buf.get() + filled, size_t(len), tcrc);
        zs.finish();
        filled += len;
        ++row;
        continue;
      }
      DecodedPage dp;
      pq::decode_data_page(file_, pi, m.codec, leaf, dict, &dp, ctx);
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
  if (e.has_crc) {
    const uint32_t got = tcrc;
    if (got != e.crc)
      fail(tctx, ": checksum mismatch (CRC-32 stored ", pq::crc_hex(e.crc), ", computed ", pq::crc_hex(got),
           "): the tensor's data is corrupt");
  }
  TensorRef ref;
  ref.info = e.info;
  ref.data = buf.get();
  ref.keepalive = std::shared_ptr<const void>(buf, buf.get());
  return ref;
}

}  // namespace

ParquetCheckpointFile open_parquet_checkpoint(const std::filesystem::path& path) {
  ParquetCheckpointFile out;
  auto tf = std::make_unique<ParquetTensorFile>(path, &out.kv);
  out.checksums = tf->has_checksums();
  out.tensors = std::move(tf);
  return out;
}

ParquetColumnStats read_parquet_string_column(
    const std::filesystem::path& path, const std::string& column,
    const std::function<void(uint64_t row, std::string_view value)>& fn) {
  const std::string origin = path.string();
  try {
    File f(path.string());
    pq::FileMetaData meta;
    std::map<std::string, std::string> kv;
    const uint64_t data_end = pq::read_file_metadata(f, origin, &meta, &kv);
    if (meta.num_rows < 0) fail(origin, ": bad row count ", meta.num_rows);
    const std::vector<Leaf> leaves = pq::schema_leaves(meta.schema, origin + ": schema");
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
      const auto& m = pq::checked_chunk_meta(rg.columns[size_t(found)], leaf, rg_ctx);
      uint64_t start, end;
      pq::column_chunk_range(m, data_end, &start, &end, ctx);
      const int64_t entries = pq::for_each_data_page(f, start, end, m, leaf, ctx, [&](const DecodedPage& dp) {
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

}  // namespace llmc
