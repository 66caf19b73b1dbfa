// quant/layouts.h — THE table of on-disk layouts of quantized linear weights.
//
// A layout turns one QuantizedWeight (quant/qweight.h) into named tensors (encode), reads them
// back (decode) and writes the checkpoint's `quantization_config` (quantization_config).
// Exact tensor names, dtypes and shapes are documented in docs/formats.md ("Quantized layouts").
//
// Rows (layout_table()):
//   name               quant_method         writes  holds
//   pack-quantized     compressed-tensors   yes     INT 2..8 bits, weight-only, sym/asym, tensor/
//                                                   channel/group, optional g_idx (weight_g_idx)
//   int-quantized      compressed-tensors   yes     INT8 symmetric [out,in] int8 (W8A8 / W8A16)
//   float-quantized    compressed-tensors   yes     FP8 e4m3, per tensor / channel / group
//   naive-quantized    compressed-tensors   no      read only (AngelSlim fp8_static writes it)
//   compressed-tensors compressed-tensors   yes     picks the first of float-/int-/pack-quantized
//                                                   that can hold the weight
//   gptq               gptq                 yes     INT 2/3/4/8 symmetric (AutoGPTQ v1), g_idx
//   awq                awq                  yes     INT4 (AutoAWQ GEMM), group > 0, no g_idx
//   fp8                fp8                  no      read only (vLLM fp8: per-tensor weight_scale
//                                                   or 128x128 block weight_scale_inv)
// Reading: every compressed-tensors row decodes every compressed-tensors format (the module's
// config group decides); layout_for_config() picks the row from the config's quant_method.
//
// Contracts:
//  * encode() validates the weight (QuantizedWeight::validate) and that this layout can hold it;
//    otherwise llmc::Error naming the module and the reason, e.g. asymmetric weights in the gptq
//    layout: "asymmetric GPTQ cannot be stored as zero-1 in the gptq layout; use --layout
//    compressed-tensors".
//  * Scales are written in `scale_dtype`. For fp16 layouts (gptq, awq) a quantizer that wants
//    bit-exact round trips rounds its scales first (round_scales()); encode() throws if a scale
//    overflows or underflows to 0 in that dtype.
//  * decode(...).dequantize() equals the encoded weight's dequantize() bit for bit (given
//    representable scales). decode() validates every tensor (present, dtype, shape, finite
//    positive scales, code ranges) and throws llmc::Error naming the tensor and reader origin.
//    out/in < 0 means "take the shape from the tensors"; otherwise they are checked.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "formats/tensor_store.h"
#include "quant/qweight.h"

namespace llmc {

// One tensor produced by encode(): its full name ("<prefix>.qweight"), dtype, shape and bytes.
struct EncodedTensor {
  std::string name;
  DType dtype = DType::I32;
  Shape shape;
  std::vector<uint8_t> bytes;
};

// What the quantization_config describes. `scheme` is a representative weight: only kind,
// bits, symmetric, group, act and whether g_idx is non-empty are used.
struct QuantConfigSpec {
  QuantizedWeight scheme;
  std::vector<std::string> ignore;  // module names left unquantized, e.g. "lm_head"
  // vLLM's fused module names ("model.layers.0.self_attn.qkv_proj") whose members are all in
  // `ignore`: vLLM's gptq `dynamic` and awq `modules_to_not_convert` rules see only those.
  std::vector<std::string> fused_ignore;
  // Merged into the config last (gptq: desc_act, static_groups, true_sequential, damp_percent).
  nlohmann::json extra = nlohmann::json::object();
};

// What vLLM serves from a layout: one row of data per layout, evaluated by
// Layout::vllm_why_not (no per-layout code). The rules and the vLLM code they come from are
// listed in docs/formats.md ("vLLM loadability").
struct VllmRule {
  bool fp8 = false;          // weights are fp8 e4m3 (else integer)
  uint16_t sym_bits = 0;     // bit b set: b-bit symmetric weights are served
  uint16_t asym_bits = 0;    // bit b set: b-bit weights with zero points are served
  bool per_tensor = false;   // group 0
  bool per_channel = false;  // group -1
  bool any_group = false;    // every group size > 0 that divides in_features
  int groups[3] = {0, 0, 0}; // otherwise these group sizes (0: unused slot)
  uint8_t acts = 0;          // bit int(ActQuant) set: that activation scheme is served
  const char* source = "";   // the vLLM code the rule comes from ("" = vLLM has no loader)
};

struct Layout {
  const char* name;          // --layout spelling
  const char* quant_method;  // quantization_config.quant_method
  const char* format;        // compressed-tensors "format" ("" for other methods)
  bool writable;
  DType scale_dtype;         // dtype of the written scales
  const char* description;
  // Implementation (one set of functions per row; see layouts.cpp).
  std::string (*why_not)(const QuantizedWeight& w);  // "" when this layout can hold w
  std::vector<EncodedTensor> (*encode_fn)(const std::string& prefix, const QuantizedWeight& w);
  QuantizedWeight (*decode_fn)(const TensorReader& r, const std::string& prefix, int64_t out,
                               int64_t in, const nlohmann::json& qconfig);
  nlohmann::json (*config_fn)(const Layout& self, const QuantConfigSpec& spec);
  // [out, in] of a stored module from its tensors' shapes (no unpacking).
  Shape (*shape_fn)(const TensorReader& r, const std::string& prefix, const nlohmann::json& qconfig);
  // Dtype the rest of the checkpoint must use (dense tensors and config dtype) when the
  // layout's kernels require it: awq -> float16 (vLLM's AWQ kernels run fp16 activations only);
  // gptq -> float16 (vLLM's non-Marlin GPTQ kernels reject bf16, and Marlin casts the fp16
  // scales to the model dtype: in bf16 they would no longer equal what llmc wrote).
  std::optional<DType> model_dtype = std::nullopt;
  VllmRule vllm = {};  // what vLLM serves from this layout

  // "" when vLLM can serve weights like w stored in this layout (the "compressed-tensors" row:
  // in the format it picks), else the reason and the vLLM code the rule comes from. Checks
  // weight kind, bits with symmetry, granularity, group size dividing w.in (when w.in > 0) and
  // the activation scheme.
  std::string vllm_why_not(const QuantizedWeight& w) const;

  // Throws llmc::Error naming `module` when w is invalid or this layout cannot hold it.
  void check(const QuantizedWeight& w, const std::string& module) const;
  bool can_hold(const QuantizedWeight& w) const;
  std::vector<EncodedTensor> encode(const std::string& prefix, const QuantizedWeight& w) const;
  QuantizedWeight decode(const TensorReader& r, const std::string& prefix,
                         const nlohmann::json& qconfig, int64_t out = -1, int64_t in = -1) const;
  nlohmann::json quantization_config(const QuantConfigSpec& spec) const;
  // Logical weight shape [out, in] of a stored module (cheap; throws like decode()).
  Shape weight_shape(const TensorReader& r, const std::string& prefix,
                     const nlohmann::json& qconfig) const;
};

const std::vector<Layout>& layout_table();
std::string layout_names(bool writable_only = false);  // "pack-quantized, int-quantized, ..."
// Exact name; throws llmc::Error "unknown layout 'x' (known: ...)".
const Layout& find_layout(const std::string& name);
// The layout that reads a checkpoint with this quantization_config (by quant_method, then by
// format for compressed-tensors). Throws llmc::Error naming `origin` for a missing or unknown
// quant_method.
const Layout& layout_for_config(const nlohmann::json& qconfig, const std::string& origin);

// Whether vLLM can serve a checkpoint (`llmc inspect`): {"loadable": bool, "reason": "..."}.
// Dense checkpoints are loadable. Otherwise the layout from config.quantization_config judges
// its first quantized module (decoded) and checks every quantized module's group size against
// its in_features (from the tensor shapes). An unreadable config is "not loadable" with the
// reader's error.
nlohmann::json vllm_loadability(const TensorReader& r, const nlohmann::json& config);

// Rounds every scale to `t` (round to nearest even), as written by a layout whose scale_dtype
// is t, so that codes computed afterwards decode bit-exactly.
void round_scales(QuantizedWeight& w, DType t);

// Module names ("model.layers.0.self_attn.q_proj") whose weight is stored quantized in `r`, in
// file order: a "<m>.weight_packed" or "<m>.qweight" tensor, or a "<m>.weight" of dtype
// F8_E4M3 / I8.
std::vector<std::string> quantized_modules(const TensorReader& r);
bool is_quantized_module(const TensorReader& r, const std::string& module);
// Every tensor name "<module>.<suffix>" (suffix without further dots) of `r`: what a module's
// storage consists of.
std::vector<std::string> module_tensor_names(const TensorReader& r, const std::string& module);

// A TensorReader over tensors held in memory (encoded tensors, or views of another reader's
// tensors): the loader's per-module view, and tests. Adding a name twice replaces the tensor.
class MemoryTensorReader : public TensorReader {
 public:
  explicit MemoryTensorReader(std::string origin = "memory") : origin_(std::move(origin)) {}
  void add(TensorRef t);
  void add(EncodedTensor t);  // takes ownership of the bytes
  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return index_.count(name) != 0; }
  TensorRef get(const std::string& name) const override;
  std::string origin() const override { return origin_; }
  uint64_t bytes() const;  // sum of the tensors' sizes

 private:
  std::string origin_;
  std::vector<TensorInfo> infos_;
  std::vector<TensorRef> refs_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace llmc
