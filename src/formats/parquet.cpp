// STUB — replaced by the Parquet implementation.
#include "formats/parquet.h"

#include "core/error.h"

namespace llmc {
struct ParquetTensorWriter::Impl {};
ParquetCheckpointFile open_parquet_checkpoint(const std::filesystem::path& path) {
  fail(path.string(), ": Parquet support not implemented yet");
}
ParquetTensorWriter::ParquetTensorWriter(const std::filesystem::path& path, uint64_t, bool) {
  fail(path.string(), ": Parquet support not implemented yet");
}
ParquetTensorWriter::~ParquetTensorWriter() = default;
void ParquetTensorWriter::set_kv(const std::map<std::string, std::string>&) {}
void ParquetTensorWriter::add(const std::string&, DType, const Shape&, const void*, uint64_t) {}
void ParquetTensorWriter::finish() {}
}  // namespace llmc
