// loader/weight_loader.cpp — see weight_loader.h.
#include "loader/weight_loader.h"

#include "core/error.h"
#include "loader/quant_linear.h"

namespace llmc {

nlohmann::json MemoryReport::to_json() const {
  return {{"bytes", bytes},
          {"bf16_bytes", bf16_bytes},
          {"ratio", ratio()},
          {"quantized_linears", quantized_linears},
          {"linear_bytes", linear_bytes},
          {"linear_bf16_bytes", linear_bf16_bytes},
          {"linear_ratio", linear_ratio()}};
}

WeightLoader::WeightLoader(const std::filesystem::path& path) : ckpt_(open_checkpoint(path)) {
  init();
}

WeightLoader::WeightLoader(Checkpoint ckpt) : ckpt_(std::move(ckpt)) { init(); }

void WeightLoader::init() {
  if (!ckpt_.tensors) fail(ckpt_.path.string(), ": checkpoint has no tensors");
  origin_ = ckpt_.tensors->origin();
  qconfig_ = find_quantization_config(ckpt_.config);
  if (!qconfig_) return;
  layout_ = &layout_for_config(*qconfig_, config_origin(ckpt_));
  modules_ = llmc::quantized_modules(*ckpt_.tensors);
  for (size_t i = 0; i < modules_.size(); ++i) module_index_[modules_[i]] = i;
}

std::string WeightLoader::quant_method() const { return layout_ ? layout_->quant_method : ""; }

namespace {
// "<m>.<suffix>" -> m (the text before the last dot); "" when there is no dot.
std::string owner(const std::string& name) {
  const size_t d = name.rfind('.');
  return d == std::string::npos ? std::string() : name.substr(0, d);
}
std::string suffix(const std::string& name) {
  const size_t d = name.rfind('.');
  return d == std::string::npos ? name : name.substr(d + 1);
}
}  // namespace

std::string WeightLoader::module_of_weight(const std::string& name) const {
  if (suffix(name) != "weight") return "";
  const std::string m = owner(name);
  return is_quantized(m) ? m : std::string();
}

std::vector<TensorInfo> WeightLoader::tensors() const {
  std::vector<TensorInfo> out;
  std::unordered_map<std::string, bool> emitted;
  for (const TensorInfo& t : raw_tensors()) {
    const std::string m = owner(t.name);
    if (!is_quantized(m) || suffix(t.name) == "bias") {
      out.push_back(t);
      continue;
    }
    if (emitted[m]) continue;
    emitted[m] = true;
    TensorInfo w;
    w.name = m + ".weight";
    w.dtype = DType::F32;
    w.shape = shape(w.name);
    w.nbytes = uint64_t(w.numel()) * 4;
    out.push_back(w);
  }
  return out;
}

bool WeightLoader::has(const std::string& name) const {
  return ckpt_.tensors->has(name) || !module_of_weight(name).empty();
}

TensorRef WeightLoader::raw(const std::string& name) const {
  if (!ckpt_.tensors->has(name)) fail(origin_, ": no tensor named ", name);
  return ckpt_.tensors->get(name);
}

QuantizedWeight WeightLoader::quantized(const std::string& module) const {
  if (!is_quantized(module)) fail(origin_, ": ", module, " is not a quantized module");
  return layout_->decode(*ckpt_.tensors, module, *qconfig_);
}

std::vector<float> WeightLoader::get_f32(const std::string& name) const {
  const std::string m = module_of_weight(name);
  if (!m.empty()) return quantized(m).dequantize();
  return raw(name).to_f32();
}

Shape WeightLoader::shape(const std::string& name) const {
  const std::string m = module_of_weight(name);
  if (!m.empty()) return layout_->weight_shape(*ckpt_.tensors, m, *qconfig_);
  return raw(name).info.shape;
}

MemoryReport WeightLoader::memory() const {
  MemoryReport r;
  for (const TensorInfo& t : raw_tensors()) {
    r.bytes += t.nbytes;
    const std::string m = owner(t.name);
    if (is_quantized(m) && suffix(t.name) != "bias") {
      r.linear_bytes += t.nbytes;
      continue;
    }
    r.bf16_bytes += dtype_traits(t.dtype).is_float ? uint64_t(t.numel()) * 2 : t.nbytes;
  }
  for (const std::string& m : modules_) {
    const uint64_t b = uint64_t(shape_numel(layout_->weight_shape(*ckpt_.tensors, m, *qconfig_))) * 2;
    r.bf16_bytes += b;
    r.linear_bf16_bytes += b;
  }
  r.quantized_linears = int64_t(modules_.size());
  return r;
}

std::shared_ptr<const LinearFactory> WeightLoader::linear_factory() const {
  if (!qconfig_) return std::make_shared<LinearFactory>();
  return std::make_shared<QuantLinearFactory>(*qconfig_, config_origin(ckpt_));
}

}  // namespace llmc
