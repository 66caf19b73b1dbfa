// Fuzz target: calibration files by extension (calib/calib_data.h read_calibration_records):
// the first byte picks .txt, .jsonl or .parquet, the rest is the file.
#include "calib/calib_data.h"
#include "core/error.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const char* const kNames[] = {"c.txt", "c.jsonl", "c.parquet"};
  const auto p = llmc::fuzz::scratch_file(kNames[data[0] % 3], data + 1, size - 1);
  try {
    llmc::read_calibration_records(p);
  } catch (const llmc::Error&) {
  }
  return 0;
}
