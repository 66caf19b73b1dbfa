// loader/quant_linear.cpp — see quant_linear.h.
#include "loader/quant_linear.h"

#include "backend/backend.h"
#include "core/error.h"
#include "core/threads.h"

namespace llmc {

QuantLinear::QuantLinear(const Layout& layout, std::shared_ptr<const nlohmann::json> qconfig,
                         std::string module, MemoryTensorReader tensors, int64_t out, int64_t in)
    : layout_(layout),
      qconfig_(std::move(qconfig)),
      module_(std::move(module)),
      tensors_(std::move(tensors)),
      out_(out),
      in_(in) {
  act_ = quantized().act;  // validates the module once, at load time
}

QuantizedWeight QuantLinear::quantized() const {
  return layout_.decode(tensors_, module_, *qconfig_, out_, in_);
}

void QuantLinear::forward(const float* x, int64_t rows, float* y) const {
  if (rows <= 0) return;
  const QuantizedWeight q = quantized();
  if (backend::try_qlinear_forward(q, x, rows, y)) return;  // GPU; decoded weight stays there
  const std::vector<float> w = q.dequantize();
  const float* xin = x;
  std::vector<float> xq;
  if (q.act != ActQuant::None) {
    xq.assign(x, x + rows * in_);
    quantize_activations(q.act, q.input_scale, xq.data(), rows, in_);
    xin = xq.data();
  }
  gemm_xwt(xin, rows, in_, w.data(), out_, y);
  if (!q.bias.empty()) {
    parallel_for(0, size_t(rows), 64, [&](size_t r0, size_t r1) {
      for (size_t r = r0; r < r1; ++r)
        for (int64_t o = 0; o < out_; ++o) y[r * out_ + o] += q.bias[size_t(o)];
    });
  }
}

QuantLinearFactory::QuantLinearFactory(const nlohmann::json& qconfig, const std::string& origin)
    : qconfig_(std::make_shared<const nlohmann::json>(qconfig)),
      layout_(layout_for_config(qconfig, origin)) {}

std::shared_ptr<Linear> QuantLinearFactory::make(const TensorReader& tensors,
                                                 const std::string& prefix, int64_t out,
                                                 int64_t in) const {
  if (!is_quantized_module(tensors, prefix)) return LinearFactory::make(tensors, prefix, out, in);
  MemoryTensorReader mine(tensors.origin());
  for (const std::string& name : module_tensor_names(tensors, prefix)) mine.add(tensors.get(name));
  return std::make_shared<QuantLinear>(layout_, qconfig_, prefix, std::move(mine), out, in);
}

const nlohmann::json* find_quantization_config(const nlohmann::json& config) {
  if (!config.is_object()) return nullptr;
  for (const char* key : {"quantization_config", "compression_config"}) {
    auto it = config.find(key);
    if (it != config.end() && !it->is_null()) return &*it;
  }
  return nullptr;
}

std::string config_origin(const Checkpoint& ckpt) {
  return ckpt.format == CheckpointFormat::HF ? (ckpt.path / "config.json").string()
                                             : ckpt.path.string() + " (config.json)";
}

std::shared_ptr<const LinearFactory> make_quant_linear_factory(const Checkpoint& ckpt) {
  const nlohmann::json* qc = find_quantization_config(ckpt.config);
  if (!qc) return nullptr;
  auto f = std::make_shared<QuantLinearFactory>(*qc, config_origin(ckpt));
  if (ckpt.tensors && quantized_modules(*ckpt.tensors).empty())
    fail(config_origin(ckpt), ": quantization_config declares quant_method \"",
         f->layout().quant_method, "\" but no tensor of ", ckpt.tensors->origin(),
         " is stored quantized");
  return f;
}

std::unique_ptr<Model> load_model_for_inference(const Checkpoint& ckpt) {
  return Model::load(ckpt, make_quant_linear_factory(ckpt));
}

}  // namespace llmc
