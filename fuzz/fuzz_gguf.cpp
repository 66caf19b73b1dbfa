// Fuzz target: the GGUF reader (formats/gguf.h), given a whole file image; every tensor's data is
// decoded with its ggml type (formats/ggml_types.h) to check the validated bounds.
#include <vector>

#include "core/error.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const llmc::GgufHeader h = llmc::parse_gguf(data, size, "fuzz.gguf");
    for (const auto& t : h.tensors) {
      const llmc::GgmlTypeTraits* tt = llmc::ggml_type_by_id(t.type);
      const uint64_t n = t.numel();
      if (n > (1u << 16)) continue;  // bounded work per input
      std::vector<float> y(n);
      tt->decode(data + h.data_start + t.offset, int64_t(n), y.data());
    }
  } catch (const llmc::Error&) {
  }
  return 0;
}
