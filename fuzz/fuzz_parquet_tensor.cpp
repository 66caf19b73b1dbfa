// Fuzz target: the AI-OS Parquet tensor reader (formats/parquet.h open_parquet_checkpoint):
// footer, schema, small columns, then every tensor's data pages, CRCs and checksums.
#include "core/error.h"
#include "formats/parquet.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto p = llmc::fuzz::scratch_file("t.parquet", data, size);
  try {
    llmc::ParquetCheckpointFile f = llmc::open_parquet_checkpoint(p);
    for (const auto& info : f.tensors->list()) {
      const llmc::TensorRef r = f.tensors->get(info.name);
      if (r.info.nbytes != info.nbytes) __builtin_trap();
    }
  } catch (const llmc::Error&) {
  }
  return 0;
}
