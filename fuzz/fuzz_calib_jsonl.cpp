// Fuzz target: calibration .jsonl records (calib/calib_data.h parse_jsonl_records) and their
// rendering (ChatML and plain).
#include <string_view>

#include "calib/calib_data.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto recs = llmc::parse_jsonl_records(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.jsonl");
    for (const auto& r : recs) {
      llmc::render_record(r, true);
      llmc::render_record(r, false);
    }
  } catch (const llmc::Error&) {
  }
  return 0;
}
