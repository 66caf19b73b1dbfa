// model/load_for_inference.cpp — the single entry point the CLI uses to build a runnable model.
//
// A checkpoint whose config.json has "quantization_config" (or "compression_config") runs with
// loader/'s QuantLinearFactory: quantized modules keep their stored (packed / fp8 / int8) form
// and dequantize per forward call, with activation quantization simulated; every command that
// runs a model (eval, generate, ...) therefore opens quantized checkpoints too. An unknown
// quant_method throws naming config.json.
#include "loader/quant_linear.h"
#include "model/model.h"

namespace llmc {

std::unique_ptr<Model> load_model_for_inference(const Checkpoint& ckpt) {
  return Model::load(ckpt, make_quant_linear_factory(ckpt));
}

}  // namespace llmc
