// quant/layouts.cpp — the layout table (rows: compressed-tensors, AutoGPTQ v1, AutoAWQ GEMM,
// vLLM fp8; each row's functions in its own layouts_<name>.cpp, see layouts_io.h) and the
// public functions of layouts.h. See docs/formats.md.
#include "quant/layouts.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>

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

constexpr uint16_t bits_mask(std::initializer_list<int> bits) {
  uint16_t m = 0;
  for (int b : bits) m = uint16_t(m | (1u << b));
  return m;
}
constexpr uint8_t acts_mask(std::initializer_list<ActQuant> acts) {
  uint8_t m = 0;
  for (ActQuant a : acts) m = uint8_t(m | (1u << int(a)));
  return m;
}

// What vLLM serves, per layout (docs/formats.md "vLLM loadability" names the code).
// fp8, sym bits, asym bits, per tensor, per channel, any group, groups, activations, source
constexpr VllmRule kVllmPack = {
    false, bits_mask({4, 8}), bits_mask({4}), false, true, false, {32, 64, 128},
    acts_mask({ActQuant::None}),
    "compressed_tensors_wNa16.py WNA16_SUPPORTED_TYPES_MAP; marlin_utils.py "
    "MARLIN_SUPPORTED_GROUP_SIZES, query_marlin_supported_quant_types(has_zp=True)"};
constexpr VllmRule kVllmInt = {
    false, bits_mask({8}), 0, true, true, false, {},
    acts_mask({ActQuant::INT8DynamicToken, ActQuant::INT8StaticTensor}),
    "compressed_tensors.py _is_dynamic_token_w8a8 / _is_static_tensor_w8a8 -> "
    "CompressedTensorsW8A8Int8"};
constexpr VllmRule kVllmFloat = {
    true, bits_mask({8}), 0, true, true, false, {},
    acts_mask({ActQuant::None, ActQuant::FP8StaticTensor, ActQuant::FP8DynamicToken,
               ActQuant::FP8DynamicTensor}),
    "compressed_tensors.py _is_fp8_w8a8 / _is_fp8_w8a16 -> CompressedTensorsW8A8Fp8 / W8A16Fp8"};
constexpr VllmRule kVllmGptq = {
    false, bits_mask({2, 3, 4, 8}), 0, false, true, true, {}, acts_mask({ActQuant::None}),
    "gptq.py GPTQConfig (2/3/4/8 bits, float16) and GPTQLinearMethod.create_weights; "
    "gptq_marlin.py is_gptq_marlin_compatible (4/8 bits, groups -1/32/64/128)"};
constexpr VllmRule kVllmAwq = {
    false, bits_mask({4}), bits_mask({4}), false, false, true, {}, acts_mask({ActQuant::None}),
    "awq.py AWQConfig (4 bits, float16) and AWQLinearMethod.create_weights; awq_marlin.py"};
constexpr VllmRule kVllmFp8 = {
    true, bits_mask({8}), 0, true, true, true, {},
    acts_mask({ActQuant::FP8StaticTensor, ActQuant::FP8DynamicToken, ActQuant::FP8DynamicTensor}),
    "fp8.py Fp8Config (weight_scale per tensor, weight_block_size)"};

std::vector<Layout> build_table() {
  const char* ct = "compressed-tensors";
  const std::optional<DType> keep = std::nullopt;
  return {
      {"pack-quantized", ct, "pack-quantized", true, DType::F32,
       "compressed-tensors: integer codes packed into int32 (weight-only, 2..8 bits)", ct_pack_why,
       ct_pack_encode, ct_decode, ct_config, ct_shape, keep, kVllmPack},
      {"int-quantized", ct, "int-quantized", true, DType::F32,
       "compressed-tensors: int8 weight [out, in] (W8A8 with int8 activations)", ct_int_why,
       ct_plain_encode, ct_decode, ct_config, ct_shape, keep, kVllmInt},
      {"float-quantized", ct, "float-quantized", true, DType::F32,
       "compressed-tensors: fp8 e4m3 weight [out, in] (+ static input_scale)", ct_float_why,
       ct_plain_encode, ct_decode, ct_config, ct_shape, keep, kVllmFloat},
      {"naive-quantized", ct, "naive-quantized", false, DType::F32,
       "compressed-tensors naive: quantized dtype weight, unpacked (read only)", read_only_why,
       no_encode, ct_decode, no_config, ct_shape, keep, kVllmFloat},
      // The rule of the format it picks applies (Layout::vllm_why_not).
      {"compressed-tensors", ct, "", true, DType::F32,
       "compressed-tensors, format chosen by scheme (float-/int-/pack-quantized)", ct_any_why,
       ct_any_encode, ct_decode, ct_config, ct_shape, keep, {}},
      {"gptq", "gptq", "", true, DType::F16,
       "AutoGPTQ v1: qweight/qzeros(zero-1)/scales fp16/g_idx (symmetric 2/3/4/8-bit)", gptq_why,
       gptq_encode, gptq_decode, gptq_config, gptq_shape, DType::F16, kVllmGptq},
      {"awq", "awq", "", true, DType::F16,
       "AutoAWQ GEMM: 4-bit, interleaved nibbles, raw zeros, scales fp16", awq_why, awq_encode,
       awq_decode, awq_config, awq_shape, DType::F16, kVllmAwq},
      {"fp8", "fp8", "", false, DType::F32,
       "vLLM fp8: e4m3 weight + weight_scale or 128x128 weight_scale_inv (read only)",
       read_only_why, no_encode, fp8_decode, no_config, plain_shape, keep, kVllmFp8},
  };
}

std::string bits_list(uint16_t mask) {
  std::string s;
  for (int b = 1; b <= 8; ++b)
    if (mask >> b & 1) s += (s.empty() ? "" : "/") + std::to_string(b);
  return s.empty() ? "none" : s;
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

std::string Layout::vllm_why_not(const QuantizedWeight& w) const {
  const Layout* l = this;
  if (!*format && std::string(quant_method) == "compressed-tensors") {
    l = ct_pick(w);
    if (!l) return "no compressed-tensors format holds these weights";
  }
  const VllmRule& r = l->vllm;
  if (!*r.source) return cat("vLLM has no loader for layout ", l->name);
  std::string why;
  const bool fp8 = w.kind == QKind::FP8;
  const uint16_t served = w.symmetric ? r.sym_bits : r.asym_bits;
  if (fp8 != r.fp8) {
    why = cat("vLLM's ", l->name, " loader takes ", r.fp8 ? "fp8" : "integer", " weights");
  } else if (!(served >> w.bits & 1)) {
    why = cat(w.bits, "-bit ", w.symmetric ? "symmetric" : "asymmetric", " weights (served: ",
              w.symmetric ? "symmetric " : "asymmetric ", bits_list(served), "-bit)");
  } else if (w.group == 0   ? !r.per_tensor
             : w.group < 0 ? !r.per_channel
                           : !r.any_group && std::find(std::begin(r.groups), std::end(r.groups),
                                                       w.group) == std::end(r.groups)) {
    std::string served_groups;
    auto add = [&](const std::string& g) {
      served_groups += (served_groups.empty() ? "" : ", ") + g;
    };
    if (r.per_tensor) add("per tensor");
    if (r.per_channel) add("-1");
    for (int g : r.groups)
      if (g > 0) add(std::to_string(g));
    if (r.any_group) add("any dividing in_features");
    why = cat(w.group == 0 ? std::string("per-tensor scales") : cat("group size ", w.group),
              " (served: ", served_groups, ")");
  } else if (w.group > 0 && w.in > 0 && w.in % w.group != 0) {
    why = cat("group size ", w.group, " does not divide in_features ", w.in);
  } else if (!(r.acts >> int(w.act) & 1)) {
    why = cat("activation scheme ", act_quant_name(w.act), " in layout ", l->name);
  }
  return why.empty() ? why : why + "; from vLLM " + r.source;
}

json vllm_loadability(const TensorReader& r, const json& config) {
  const json* qc = config.is_object() && config.contains("quantization_config")
                       ? &config["quantization_config"]
                       : nullptr;
  std::string why;
  if (qc && !qc->is_null()) {
    try {
      const Layout& l = layout_for_config(*qc, r.origin());
      const std::vector<std::string> mods = quantized_modules(r);
      if (!mods.empty()) {
        const QuantizedWeight w = l.decode(r, mods.front(), *qc);
        why = l.vllm_why_not(w);
        const int64_t g = w.group;
        for (size_t i = 1; i < mods.size() && why.empty() && g > 0; ++i) {
          const Shape s = l.weight_shape(r, mods[i], *qc);
          if (s[1] % g)
            why = cat(mods[i], ": group size ", g, " does not divide in_features ", s[1]);
        }
      }
    } catch (const Error& e) {
      why = e.what();
    }
  }
  return {{"loadable", why.empty()}, {"reason", why}};
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
