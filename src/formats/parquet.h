// formats/parquet.h — minimal spec-conformant Apache Parquet reader/writer for the AI-OS tensor
// layout (see docs/formats.md): one row per tensor chunk with columns
//   name: BYTE_ARRAY (UTF8), dtype: BYTE_ARRAY (UTF8), shape: LIST<INT64>, chunk: INT32,
//   data: BYTE_ARRAY (raw little-endian bytes)
// File key-value metadata carries "llmc.format_version", "config.json", "quantization_config"
// and "file:<name>" for every auxiliary file (set by formats/checkpoint; this layer stores any
// map given to set_kv()). Codecs: UNCOMPRESSED and ZSTD; PLAIN encoding (plus RLE/bit-packed
// definition/repetition levels as the spec requires).
//
// Contracts:
//  * Writer: streams; a tensor larger than chunk_bytes (1 byte .. 1 GiB) is split over
//    consecutive rows chunk = 0, 1, 2, ...; an empty tensor is one row with empty data; dtype is
//    written in the safetensors spelling ("BF16"). A row group is flushed once its data reaches
//    the row group size (default 64 MiB), so memory stays bounded by one row group plus one
//    chunk. Duplicate names, shape x dtype != nbytes, add()/set_kv() after finish() throw.
//    The writer writes to `path` directly; atomic replacement is the caller's job.
//  * Integrity: every page header carries the Parquet `crc` (CRC-32 of the page bytes as
//    stored); the key-value metadata carries "llmc.tensor_crc32" (the CRC-32 of each tensor's
//    bytes) and "llmc.footer_crc32" (the CRC-32 of the footer itself). These two keys are
//    reserved: set_kv() refuses them and the reader does not return them.
//  * Reader: reads the footer and the small columns (name, dtype, shape, chunk) at open;
//    get(name) reads only that tensor's data pages (page headers are walked, earlier pages are
//    skipped unread). It reads files of other writers too: REQUIRED or OPTIONAL columns, 3-level
//    (or legacy 2-level) lists, data page v1 and v2, PLAIN and dictionary encodings, codecs
//    UNCOMPRESSED/SNAPPY/GZIP/ZSTD, any row-group split. Every inconsistency (chunks missing,
//    repeated or out of order, bytes != shape x dtype size, unknown dtype, null values, bad
//    offsets, corrupt Thrift or pages) throws llmc::Error naming the file and tensor. Page CRCs
//    are verified when a page has one, the footer CRC at open, a tensor's CRC on every get();
//    a mismatch throws naming the file (and tensor). Files without checksums still read.
#pragma once
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "formats/tensor_store.h"

namespace llmc {

struct ParquetCheckpointFile {
  std::unique_ptr<TensorReader> tensors;      // streams: reads one tensor's rows on get()
  std::map<std::string, std::string> kv;      // file key-value metadata (llmc's checksum keys removed)
  bool checksums = false;  // the file carries llmc's footer and tensor checksums (verified)
};

// Opens an AI-OS Parquet weight file (any conformant writer). Throws llmc::Error naming the
// file (and tensor) on corrupt, truncated or hostile input.
ParquetCheckpointFile open_parquet_checkpoint(const std::filesystem::path& path);

// Any Parquet file (a dataset, not a tensor file): streams the top-level string column `column`
// (BYTE_ARRAY, REQUIRED or OPTIONAL, not inside a list or struct) row group by row group and page
// by page, calling fn(row, value) for every non-null value in row order; the view is valid only
// during the call. Returns the rows seen and how many were null. Same encodings and codecs as the
// tensor reader. Throws llmc::Error naming the file when the column is missing (listing the
// columns there are), has another type, or the file is corrupt.
struct ParquetColumnStats {
  uint64_t rows = 0, nulls = 0;
};
ParquetColumnStats read_parquet_string_column(
    const std::filesystem::path& path, const std::string& column,
    const std::function<void(uint64_t row, std::string_view value)>& fn);

class ParquetTensorWriter : public TensorWriter {
 public:
  ParquetTensorWriter(const std::filesystem::path& path, uint64_t chunk_bytes, bool zstd);
  ~ParquetTensorWriter() override;
  void set_kv(const std::map<std::string, std::string>& kv);  // before finish()
  void set_row_group_bytes(uint64_t bytes);  // data bytes per row group (default 64 MiB)
  // Page CRCs, per-tensor CRC-32s and the footer CRC (default on). Off writes files as llmc
  // did before it had checksums (for tests of old files); only before the first add().
  void set_checksums(bool on);
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data,
           uint64_t nbytes) override;
  void finish() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmc
