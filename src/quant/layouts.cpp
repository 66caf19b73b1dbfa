// quant/layouts.cpp — the layout table (rows: compressed-tensors, AutoGPTQ v1, AutoAWQ GEMM,
// vLLM fp8; each row's functions in its own layouts_<name>.cpp, see layouts_io.h) and the
// public functions of layouts.h. See docs/formats.md.
#include "quant/layouts.h"

#include <cstring>

#include "core/error.h"
#include "quant/layouts_io.h"

namespace llmc {

using nlohmann::json;

using namespace layout_io;

namespace {

std::string read_only_why(const QuantizedWeight&) { return "this layout is read-only"; }
std::vector<EncodedTensor> no_encode(const std::string& prefix, const QuantizedWeight&) {
  fail(prefix, ": this layout is read-only");
}
json no_config(const Layout& self, const QuantConfigSpec&) {
  fail("layout ", self.name, " is read-only");
}

std::vector<Layout> build_table() {
  const char* ct = "compressed-tensors";
  return {
      {"pack-quantized", ct, "pack-quantized", true, DType::F32,
       "compressed-tensors: integer codes packed into int32 (weight-only, 2..8 bits)", ct_pack_why,
       ct_pack_encode, ct_decode, ct_config, ct_shape},
      {"int-quantized", ct, "int-quantized", true, DType::F32,
       "compressed-tensors: int8 weight [out, in] (W8A8 with int8 activations)", ct_int_why,
       ct_plain_encode, ct_decode, ct_config, ct_shape},
      {"float-quantized", ct, "float-quantized", true, DType::F32,
       "compressed-tensors: fp8 e4m3 weight [out, in] (+ static input_scale)", ct_float_why,
       ct_plain_encode, ct_decode, ct_config, ct_shape},
      {"naive-quantized", ct, "naive-quantized", false, DType::F32,
       "compressed-tensors naive: quantized dtype weight, unpacked (read only)", read_only_why,
       no_encode, ct_decode, no_config, ct_shape},
      {"compressed-tensors", ct, "", true, DType::F32,
       "compressed-tensors, format chosen by scheme (float-/int-/pack-quantized)", ct_any_why,
       ct_any_encode, ct_decode, ct_config, ct_shape},
      {"gptq", "gptq", "", true, DType::F16,
       "AutoGPTQ v1: qweight/qzeros(zero-1)/scales fp16/g_idx (symmetric 2/3/4/8-bit)", gptq_why,
       gptq_encode, gptq_decode, gptq_config, gptq_shape},
      {"awq", "awq", "", true, DType::F16,
       "AutoAWQ GEMM: 4-bit, interleaved nibbles, raw zeros, scales fp16", awq_why, awq_encode,
       awq_decode, awq_config, awq_shape, DType::F16},
      {"fp8", "fp8", "", false, DType::F32,
       "vLLM fp8: e4m3 weight + weight_scale or 128x128 weight_scale_inv (read only)",
       read_only_why, no_encode, fp8_decode, no_config, plain_shape},
  };
}

}  // namespace

// ------------------------------------------------------------------------------------------

const std::vector<Layout>& layout_table() {
  static const std::vector<Layout> t = build_table();
  return t;
}

std::string layout_names(bool writable_only) {
  std::string s;
  for (const Layout& l : layout_table())
    if (l.writable || !writable_only) s += (s.empty() ? "" : ", ") + std::string(l.name);
  return s;
}

const Layout& find_layout(const std::string& name) {
  for (const Layout& l : layout_table())
    if (name == l.name) return l;
  fail("unknown layout '", name, "' (known: ", layout_names(), ")");
}

const Layout& layout_for_config(const json& qc, const std::string& origin) {
  if (!qc.is_object() || !qc.contains("quant_method") || !qc["quant_method"].is_string())
    fail(origin, ": quantization_config has no quant_method");
  const std::string method = qc["quant_method"].get<std::string>();
  const std::string format = json_str(qc, "format", "");
  const Layout* first = nullptr;
  for (const Layout& l : layout_table()) {
    if (method != l.quant_method) continue;
    if (!first) first = &l;
    if (format == l.format) return l;
  }
  if (first) return *first;
  std::string known;
  for (const Layout& l : layout_table())
    if (known.find(l.quant_method) == std::string::npos)
      known += (known.empty() ? "" : ", ") + std::string(l.quant_method);
  fail(origin, ": quant_method '", method, "' is not supported (supported: ", known, ")");
}

void Layout::check(const QuantizedWeight& w, const std::string& module) const {
  w.validate(module);
  const std::string why = why_not(w);
  if (!why.empty()) fail(module, ": cannot write layout ", name, ": ", why);
}

bool Layout::can_hold(const QuantizedWeight& w) const { return why_not(w).empty(); }

std::vector<EncodedTensor> Layout::encode(const std::string& prefix,
                                          const QuantizedWeight& w) const {
  check(w, prefix);
  return encode_fn(prefix, w);
}

QuantizedWeight Layout::decode(const TensorReader& r, const std::string& prefix, const json& qc,
                               int64_t out, int64_t in) const {
  return decode_fn(r, prefix, out, in, qc);
}

json Layout::quantization_config(const QuantConfigSpec& spec) const {
  const std::string why = why_not(spec.scheme);
  if (!why.empty()) fail("layout ", name, ": ", why);
  json c = config_fn(*this, spec);
  for (const auto& [k, v] : spec.extra.items()) c[k] = v;
  return c;
}

Shape Layout::weight_shape(const TensorReader& r, const std::string& prefix, const json& qc) const {
  return shape_fn(r, prefix, qc);
}

void round_scales(QuantizedWeight& w, DType t) {
  for (float& s : w.scales) {
    uint8_t buf[8];
    store_from_f32(t, buf, 0, s);
    s = load_as_f32(t, buf, 0);
  }
}

std::vector<std::string> quantized_modules(const TensorReader& r) {
  std::vector<std::string> mods;
  auto strip = [](const std::string& n, const char* suffix, std::string* m) {
    const size_t l = std::strlen(suffix);
    if (n.size() <= l || n.compare(n.size() - l, l, suffix) != 0) return false;
    *m = n.substr(0, n.size() - l);
    return true;
  };
  for (const TensorInfo& t : r.list()) {
    std::string m;
    if (strip(t.name, ".weight_packed", &m) || strip(t.name, ".qweight", &m) ||
        (strip(t.name, ".weight", &m) &&
         (t.dtype == DType::F8_E4M3 || t.dtype == DType::I8)))
      mods.push_back(m);
  }
  return mods;
}

bool is_quantized_module(const TensorReader& r, const std::string& module) {
  if (r.has(module + ".weight_packed") || r.has(module + ".qweight")) return true;
  const std::string w = module + ".weight";
  if (!r.has(w)) return false;
  for (const TensorInfo& t : r.list())
    if (t.name == w) return t.dtype == DType::F8_E4M3 || t.dtype == DType::I8;
  return false;
}

std::vector<std::string> module_tensor_names(const TensorReader& r, const std::string& module) {
  std::vector<std::string> names;
  const std::string p = module + ".";
  for (const TensorInfo& t : r.list())
    if (t.name.size() > p.size() && t.name.compare(0, p.size(), p) == 0 &&
        t.name.find('.', p.size()) == std::string::npos)
      names.push_back(t.name);
  return names;
}

// ------------------------------------------------------------------------------------------

void MemoryTensorReader::add(TensorRef t) {
  auto it = index_.find(t.info.name);
  if (it != index_.end()) {
    infos_[it->second] = t.info;
    refs_[it->second] = std::move(t);
    return;
  }
  index_[t.info.name] = refs_.size();
  infos_.push_back(t.info);
  refs_.push_back(std::move(t));
}

void MemoryTensorReader::add(EncodedTensor t) {
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(t.bytes));
  TensorRef r;
  r.info.name = std::move(t.name);
  r.info.dtype = t.dtype;
  r.info.shape = std::move(t.shape);
  r.info.nbytes = buf->size();
  LLMC_CHECK(uint64_t(r.info.numel()) * dtype_size(r.info.dtype) == r.info.nbytes, r.info.name);
  r.data = buf->data();
  r.keepalive = buf;
  add(std::move(r));
}

TensorRef MemoryTensorReader::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(origin_, ": missing tensor ", name);
  return refs_[it->second];
}

uint64_t MemoryTensorReader::bytes() const {
  uint64_t n = 0;
  for (const TensorInfo& t : infos_) n += t.nbytes;
  return n;
}

}  // namespace llmc
