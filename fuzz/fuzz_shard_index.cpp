// Fuzz target: a sharded HF directory's model.safetensors.index.json (formats/hf_dir.h). Two
// valid shards are written once; the index is the fuzz input; every tensor it opens is read.
#include <vector>

#include "core/error.h"
#include "formats/hf_dir.h"
#include "formats/safetensors.h"
#include "fuzz_common.h"

namespace {
const std::filesystem::path& model_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path d = llmc::fuzz::scratch_dir() / "model";
    std::filesystem::create_directories(d);
    const float a[4] = {1, 2, 3, 4};
    const uint16_t b[3] = {1, 2, 3};
    llmc::TensorRef ta, tb, tc;
    ta.info = {"model.embed_tokens.weight", llmc::DType::F32, {2, 2}, 16};
    ta.data = reinterpret_cast<const uint8_t*>(a);
    tb.info = {"model.norm.weight", llmc::DType::BF16, {3}, 6};
    tb.data = reinterpret_cast<const uint8_t*>(b);
    tc.info = {"lm_head.weight", llmc::DType::F32, {4}, 16};
    tc.data = reinterpret_cast<const uint8_t*>(a);
    llmc::write_safetensors(d / "model-00001-of-00002.safetensors", {ta, tb});
    llmc::write_safetensors(d / "model-00002-of-00002.safetensors", {tc});
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::filesystem::path& dir = model_dir();
  llmc::fuzz::scratch_file("model/model.safetensors.index.json", data, size);
  try {
    auto r = llmc::open_hf_tensors(dir);
    for (const auto& info : r->list()) r->get(info.name);
  } catch (const llmc::Error&) {
  }
  return 0;
}
