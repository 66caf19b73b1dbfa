// Fuzz target: the Parquet string-column reader (formats/parquet.h read_parquet_string_column),
// as calibration and datasets use it: column "text" of any Parquet file.
#include "core/error.h"
#include "formats/parquet.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto p = llmc::fuzz::scratch_file("s.parquet", data, size);
  try {
    size_t bytes = 0;
    llmc::read_parquet_string_column(p, "text", [&](uint64_t, std::string_view v) { bytes += v.size(); });
  } catch (const llmc::Error&) {
  }
  return 0;
}
