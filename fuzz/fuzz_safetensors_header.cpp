// Fuzz target: the safetensors header parser (formats/safetensors.h), given a whole file image.
#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const llmc::SafetensorsHeader h = llmc::parse_safetensors_header(data, size, "fuzz.safetensors");
    // Offsets were validated against the image: touch every tensor's first and last byte.
    volatile uint8_t sink = 0;
    for (const auto& e : h.entries)
      if (e.end > e.begin) sink = sink ^ data[h.data_start + e.begin] ^ data[h.data_start + e.end - 1];
  } catch (const llmc::Error&) {
  }
  return 0;
}
