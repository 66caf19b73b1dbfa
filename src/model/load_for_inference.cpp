// model/load_for_inference.cpp — the single entry point the CLI uses to build a runnable model.
//
// loader/: extend HERE. When ckpt.config has "quantization_config", build the LinearFactory for
// that storage (GPTQ/AWQ packed int, fp8, ...) and pass it to Model::load; every command that
// runs a model (eval, generate, ...) then opens quantized checkpoints too.
#include "core/error.h"
#include "model/model.h"

namespace llmc {

std::unique_ptr<Model> load_model_for_inference(const Checkpoint& ckpt) {
  if (ckpt.config.is_object() && ckpt.config.contains("quantization_config")) {
    const auto& q = ckpt.config.at("quantization_config");
    const std::string method =
        q.is_object() && q.contains("quant_method") && q.at("quant_method").is_string()
            ? q.at("quant_method").get<std::string>()
            : std::string("unknown");
    fail(ckpt.path.string(), ": quantized checkpoint (quant_method \"", method,
         "\") cannot be run: no loader for quantized storage is available");
  }
  return Model::load(ckpt);
}

}  // namespace llmc
