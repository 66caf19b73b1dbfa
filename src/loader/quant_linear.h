// loader/quant_linear.h — running quantized checkpoints: Linear layers that keep a module's
// weights in their stored (packed / fp8 / int8) form and dequantize on every forward call.
//
// Contracts:
//  * QuantLinear holds exactly the module's stored tensors (views into the checkpoint's mapping,
//    or owned buffers for formats that decode) plus the layout and quantization_config needed to
//    decode them; bytes_held() is their size. It decodes once when constructed, so a corrupt or
//    mismatched module fails at load time with an llmc::Error naming the tensor and file.
//  * forward(x): W = layout.decode(...).dequantize() (bit-exact to QuantizedWeight::dequantize),
//    x' = quantize_activations(act, input_scale, copy of x) (so W8A8 / fp8 static activation
//    quantization is simulated exactly as the quantizer did), y = x'·Wᵀ + bias. Nothing is cached
//    between calls on the CPU (memory stays at the packed size); with --device cuda the product
//    runs through backend::try_qlinear_forward (decoded weight cached on the GPU).
//  * QuantLinearFactory::make() builds a QuantLinear for modules stored quantized
//    (quant/layouts.h is_quantized_module) and falls back to the dense LinearFactory for the
//    others (ignored modules such as lm_head).
//  * make_quant_linear_factory(ckpt): nullptr for a checkpoint without quantization_config (or
//    the older key compression_config); an unknown quant_method, or a config that declares
//    quantization while no tensor is stored quantized, throws naming config.json.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "formats/checkpoint.h"
#include "model/model.h"
#include "quant/layouts.h"

namespace llmc {

class QuantLinear : public Linear {
 public:
  QuantLinear(const Layout& layout, std::shared_ptr<const nlohmann::json> qconfig,
              std::string module, MemoryTensorReader tensors, int64_t out, int64_t in);
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void forward(const float* x, int64_t rows, float* y) const override;
  uint64_t bytes_held() const override { return tensors_.bytes(); }

  QuantizedWeight quantized() const;  // decodes the stored tensors
  const Layout& layout() const { return layout_; }
  const std::string& module() const { return module_; }
  ActQuant act() const { return act_; }

 private:
  const Layout& layout_;
  std::shared_ptr<const nlohmann::json> qconfig_;
  std::string module_;
  MemoryTensorReader tensors_;
  int64_t out_, in_;
  ActQuant act_ = ActQuant::None;
};

class QuantLinearFactory : public LinearFactory {
 public:
  // `origin` names the config in errors (e.g. ".../config.json").
  QuantLinearFactory(const nlohmann::json& qconfig, const std::string& origin);
  std::shared_ptr<Linear> make(const TensorReader& tensors, const std::string& prefix, int64_t out,
                               int64_t in) const override;
  const Layout& layout() const { return layout_; }

 private:
  std::shared_ptr<const nlohmann::json> qconfig_;
  const Layout& layout_;
};

// The checkpoint's quantization_config (or compression_config), or nullptr.
const nlohmann::json* find_quantization_config(const nlohmann::json& config);
// "<dir>/config.json" or "<file.parquet> (config.json)": how errors name a checkpoint's config.
std::string config_origin(const Checkpoint& ckpt);
std::shared_ptr<const LinearFactory> make_quant_linear_factory(const Checkpoint& ckpt);

// THE way the CLI (eval, generate, ...) and the quality check build a model for inference from a
// checkpoint, so that every command opens the same kinds of checkpoints: Model::load with
// DenseLinear, or, for a config with "quantization_config" (or "compression_config"), with the
// QuantLinearFactory above (quantized modules keep their stored form and dequantize per call,
// activation quantization simulated). An unknown quant_method throws naming config.json.
// (Lives in loader/, not model/: the model engine knows nothing of quantization.)
std::unique_ptr<Model> load_model_for_inference(const Checkpoint& ckpt);

}  // namespace llmc
