// Fuzz target: one checkpoint layout reader of quant/layouts.h (compiled once per
// quant_method: LLMC_FUZZ_QUANT_METHOD = "gptq", "awq", "compressed-tensors" or "fp8"). The
// input (fuzz/layout_input.h) is a quantization_config plus the tensors of module "m"; the
// config's quant_method is forced to this target's, the row is picked as the loader picks it
// (layout_for_config), and a weight that decodes is dequantized.
#include "core/error.h"
#include "layout_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  llmc::fuzz::LayoutInput in = llmc::fuzz::parse_layout_input(data, size);
  if (!in.qconfig.is_object()) in.qconfig = nlohmann::json::object();
  in.qconfig["quant_method"] = LLMC_FUZZ_QUANT_METHOD;
  llmc::MemoryTensorReader r("fuzz");
  for (auto& t : in.tensors) r.add(std::move(t));
  try {
    const llmc::Layout& layout = llmc::layout_for_config(in.qconfig, "fuzz");
    layout.weight_shape(r, "m", in.qconfig);
  } catch (const llmc::Error&) {
  }
  try {
    const llmc::Layout& layout = llmc::layout_for_config(in.qconfig, "fuzz");
    const llmc::QuantizedWeight w = layout.decode(r, "m", in.qconfig);
    if (w.out * w.in <= (1 << 20)) w.dequantize();
  } catch (const llmc::Error&) {
  }
  return 0;
}
