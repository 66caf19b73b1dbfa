// formats/parquet.h — minimal spec-conformant Apache Parquet reader/writer for the AI-OS tensor
// layout (see docs/formats.md): one row per tensor chunk with columns
//   name: BYTE_ARRAY (UTF8), dtype: BYTE_ARRAY (UTF8), shape: LIST<INT64>, chunk: INT32,
//   data: BYTE_ARRAY (raw little-endian bytes)
// File key-value metadata carries "llmc.format_version", "config.json", "quantization_config"
// and "file:<name>" for every auxiliary file. Codecs: UNCOMPRESSED and ZSTD; PLAIN encoding
// (plus RLE/bit-packed definition/repetition levels as the spec requires).
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "formats/tensor_store.h"

namespace llmc {

struct ParquetCheckpointFile {
  std::unique_ptr<TensorReader> tensors;      // streams: reads one tensor's rows on get()
  std::map<std::string, std::string> kv;      // file key-value metadata
};

// Opens an AI-OS Parquet weight file (any conformant writer). Throws llmc::Error naming the
// file (and tensor) on corrupt, truncated or hostile input.
ParquetCheckpointFile open_parquet_checkpoint(const std::filesystem::path& path);

class ParquetTensorWriter : public TensorWriter {
 public:
  ParquetTensorWriter(const std::filesystem::path& path, uint64_t chunk_bytes, bool zstd);
  ~ParquetTensorWriter() override;
  void set_kv(const std::map<std::string, std::string>& kv);  // before finish()
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data,
           uint64_t nbytes) override;
  void finish() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmc
