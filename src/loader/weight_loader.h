// loader/weight_loader.h — WeightLoader (the seed called it WeightLoaderV2): one library API over
// every checkpoint llmc reads.
//
// Opens an HF directory or a Parquet file (formats/checkpoint.h), plain or quantized
// (quantization_config with quant_method compressed-tensors, gptq, awq or fp8 — quant/layouts.h),
// lists its tensors, returns any of them raw or as fp32, and reports memory.
//
// Contracts:
//  * raw_tensors(): the stored tensors in file order. tensors(): the logical view — every stored
//    tensor except those of quantized modules, each quantized module appearing once as
//    "<module>.weight" [out, in] (dtype F32, what get_f32 returns) at the position of its first
//    stored tensor.
//  * get_f32(name): a logical or stored tensor as fp32. For "<module>.weight" of a quantized
//    module it is QuantizedWeight::dequantize() of the decoded module (bit-exact to what the
//    quantizer produced); for any other tensor its values converted to fp32. Unknown names throw
//    llmc::Error naming the tensor and the checkpoint.
//  * memory(): bytes as stored vs the same logical tensors in bf16 (float tensors 2 bytes per
//    element, integer tensors as stored; quantization metadata — scales, zeros, g_idx, shapes —
//    counts 0 in bf16), overall and for the quantized linears alone.
//  * linear_factory(): the LinearFactory that runs this checkpoint (loader/quant_linear.h), or
//    the dense default for plain checkpoints.
#pragma once
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/checkpoint.h"
#include "model/model.h"
#include "quant/layouts.h"

namespace llmc {

struct MemoryReport {
  uint64_t bytes = 0;                // every stored tensor
  uint64_t bf16_bytes = 0;           // the logical tensors in bf16
  uint64_t linear_bytes = 0;         // quantized linears as stored (codes, scales, zeros, ...)
  uint64_t linear_bf16_bytes = 0;    // the same linears' weights in bf16 (biases count as
                                     // ordinary tensors, in bytes and bf16_bytes)
  int64_t quantized_linears = 0;
  double ratio() const { return bf16_bytes ? double(bytes) / double(bf16_bytes) : 0.0; }
  double linear_ratio() const {
    return linear_bf16_bytes ? double(linear_bytes) / double(linear_bf16_bytes) : 0.0;
  }
  nlohmann::json to_json() const;
};

class WeightLoader {
 public:
  explicit WeightLoader(const std::filesystem::path& path);
  explicit WeightLoader(Checkpoint ckpt);

  const Checkpoint& checkpoint() const { return ckpt_; }
  const TensorReader& reader() const { return *ckpt_.tensors; }
  // quantization_config (or compression_config) of config.json; nullptr for plain checkpoints.
  const nlohmann::json* quantization_config() const { return qconfig_; }
  const Layout* layout() const { return layout_; }  // nullptr for plain checkpoints
  std::string quant_method() const;                  // "" for plain checkpoints

  const std::vector<TensorInfo>& raw_tensors() const { return ckpt_.tensors->list(); }
  const std::vector<std::string>& quantized_modules() const { return modules_; }
  bool is_quantized(const std::string& module) const { return module_index_.count(module) != 0; }
  std::vector<TensorInfo> tensors() const;
  bool has(const std::string& name) const;

  TensorRef raw(const std::string& name) const;
  QuantizedWeight quantized(const std::string& module) const;
  std::vector<float> get_f32(const std::string& name) const;
  Shape shape(const std::string& name) const;

  MemoryReport memory() const;
  std::shared_ptr<const LinearFactory> linear_factory() const;

 private:
  void init();
  // Module whose logical weight `name` is ("<m>.weight" of a quantized module), or "".
  std::string module_of_weight(const std::string& name) const;

  Checkpoint ckpt_;
  const nlohmann::json* qconfig_ = nullptr;
  const Layout* layout_ = nullptr;
  std::string origin_;
  std::vector<std::string> modules_;
  std::unordered_map<std::string, size_t> module_index_;
};

}  // namespace llmc
