// Fuzz target: config.json as the model engine reads it (model/config.h ModelConfig::from_json,
// v4 and v5 spellings), after nlohmann's parser.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    llmc::ModelConfig::from_json(j, "fuzz/config.json");
  } catch (const llmc::Error&) {
  }
  return 0;
}
