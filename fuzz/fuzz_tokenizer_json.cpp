// Fuzz target: tokenizer.json (tokenizer/tokenizer.h Tokenizer::from_json_text); a tokenizer
// that loads must encode and decode a fixed text (ASCII, UTF-8, digits, whitespace, a special).
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const llmc::Tokenizer t =
        llmc::Tokenizer::from_json_text(std::string(reinterpret_cast<const char*>(data), size), "fuzz/tokenizer.json");
    const auto ids = t.encode("Hello, world!  12345 h\xc3\xa9llo \xe4\xb8\xad\xe6\x96\x87\n\t<|im_start|>x");
    t.decode(ids);
    t.decode(ids, true);
    t.vocab_size();
  } catch (const llmc::Error&) {
  }
  return 0;
}
