// quant/layouts.cpp — the layout table: compressed-tensors (pack-/int-/float-/naive-quantized),
// AutoGPTQ v1, AutoAWQ GEMM and vLLM fp8. See layouts.h and docs/formats.md.
#include "quant/layouts.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

#include "core/error.h"
#include "core/threads.h"
#include "quant/packing.h"

namespace llmc {

using nlohmann::json;

namespace {

// ------------------------------------------------------------------------------------------
// Writing helpers

EncodedTensor words_tensor(std::string name, Shape shape, const std::vector<uint32_t>& w) {
  EncodedTensor t{std::move(name), DType::I32, std::move(shape), {}};
  t.bytes.resize(w.size() * 4);
  std::memcpy(t.bytes.data(), w.data(), t.bytes.size());
  return t;
}

// Float values converted to `dt`; a value that overflows or (being non-zero) underflows to 0 in
// dt is an error naming the tensor.
EncodedTensor float_tensor(std::string name, DType dt, Shape shape, const std::vector<float>& v) {
  EncodedTensor t{std::move(name), dt, std::move(shape), {}};
  t.bytes.resize(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    store_from_f32(dt, t.bytes.data(), i, v[i]);
    const float back = load_as_f32(dt, t.bytes.data(), i);
    if (!std::isfinite(back) || (back == 0.0f && v[i] != 0.0f))
      fail("tensor ", t.name, ": value ", v[i], " at index ", i, " cannot be stored as ",
           dtype_name(dt));
  }
  return t;
}

EncodedTensor bytes_tensor(std::string name, DType dt, Shape shape, const void* p, size_t n) {
  EncodedTensor t{std::move(name), dt, std::move(shape), {}};
  t.bytes.resize(n);
  std::memcpy(t.bytes.data(), p, n);
  return t;
}

EncodedTensor i64_tensor(std::string name, std::vector<int64_t> v) {
  const int64_t n = int64_t(v.size());
  return bytes_tensor(std::move(name), DType::I64, {n}, v.data(), v.size() * 8);
}

// Unsigned code of element k: INT sym signed + 2^(b-1); INT asym as stored.
inline int32_t ucode(const QuantizedWeight& w, size_t k) {
  return w.symmetric ? int32_t(w.q8[k]) + (1 << (w.bits - 1)) : int32_t(w.qu[k]);
}

// Zero point of (o, g) in the unsigned convention (sym: 2^(b-1)).
inline int32_t uzero(const QuantizedWeight& w, int64_t o, int64_t g) {
  return w.symmetric ? (1 << (w.bits - 1)) : w.zeros[size_t(o * w.n_groups() + g)];
}

// Scales [out, ng] transposed to [ng, out].
std::vector<float> scales_t(const QuantizedWeight& w) {
  const int64_t ng = w.n_groups();
  std::vector<float> t(size_t(ng * w.out));
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t g = 0; g < ng; ++g) t[size_t(g * w.out + o)] = w.scales[size_t(o * ng + g)];
  return t;
}

bool trivial_g_idx(const std::vector<int32_t>& g_idx, int64_t group) {
  if (g_idx.empty()) return true;
  if (group <= 0) return false;
  for (size_t c = 0; c < g_idx.size(); ++c)
    if (g_idx[c] != int32_t(int64_t(c) / group)) return false;
  return true;
}

void add_bias(std::vector<EncodedTensor>& out, const std::string& prefix, const QuantizedWeight& w) {
  if (!w.bias.empty())
    out.push_back(float_tensor(prefix + ".bias", DType::F32, {w.out}, w.bias));
}

// ------------------------------------------------------------------------------------------
// Reading helpers

TensorRef need(const TensorReader& r, const std::string& name) {
  if (!r.has(name)) fail(r.origin(), ": missing tensor ", name);
  return r.get(name);
}

void expect_dtype(const TensorReader& r, const TensorRef& t, std::initializer_list<DType> ok) {
  for (DType d : ok)
    if (t.info.dtype == d) return;
  std::string names;
  for (DType d : ok) names += (names.empty() ? "" : " or ") + std::string(dtype_traits(d).safetensors);
  fail(r.origin(), ": tensor ", t.info.name, " has dtype ", dtype_traits(t.info.dtype).safetensors,
       ", expected ", names);
}

void expect_shape(const TensorReader& r, const TensorRef& t, const Shape& s) {
  if (t.info.shape != s)
    fail(r.origin(), ": tensor ", t.info.name, " has shape ", shape_str(t.info.shape),
         ", expected ", shape_str(s));
}

// Float tensor (f32/f16/bf16) as f32; every value must be finite.
std::vector<float> read_floats(const TensorReader& r, const TensorRef& t) {
  expect_dtype(r, t, {DType::F32, DType::F16, DType::BF16});
  std::vector<float> v = t.to_f32();
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      fail(r.origin(), ": tensor ", t.info.name, " has a non-finite value at index ", i);
  return v;
}

std::vector<uint32_t> read_words(const TensorReader& r, const TensorRef& t) {
  expect_dtype(r, t, {DType::I32});
  std::vector<uint32_t> w(size_t(t.info.numel()));
  if (!w.empty()) std::memcpy(w.data(), t.data, w.size() * 4);  // an empty tensor has no data pointer
  return w;
}

// Scalar float tensor (numel 1), e.g. input_scale.
float read_scalar(const TensorReader& r, const std::string& name) {
  TensorRef t = need(r, name);
  if (t.info.numel() != 1)
    fail(r.origin(), ": tensor ", name, " has shape ", shape_str(t.info.shape), ", expected [1]");
  const float v = read_floats(r, t)[0];
  if (!(v > 0.0f)) fail(r.origin(), ": tensor ", name, " is ", v, ", expected a value > 0");
  return v;
}

// out/in given by the caller (>= 0) must agree with what the tensors say.
int64_t agree(const TensorReader& r, const std::string& what, int64_t given, int64_t found) {
  if (given >= 0 && given != found)
    fail(r.origin(), ": ", what, " is ", found, " in the checkpoint, but the model expects ", given);
  return found;
}

void read_bias(const TensorReader& r, const std::string& prefix, QuantizedWeight& w) {
  const std::string name = prefix + ".bias";
  if (!r.has(name)) return;
  TensorRef t = r.get(name);
  expect_shape(r, t, {w.out});
  w.bias = read_floats(r, t);
}

void finish_decode(const TensorReader& r, const std::string& prefix, QuantizedWeight& w) {
  if (trivial_g_idx(w.g_idx, w.group)) w.g_idx.clear();
  try {
    w.validate(prefix);
  } catch (const Error& e) {
    fail(r.origin(), ": ", e.what());
  }
}

int json_int(const json& j, const char* key, int def, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number_integer()) fail(origin, ": quantization_config.", key, " is not an integer");
  return j[key].get<int>();
}

bool json_bool(const json& j, const char* key, bool def, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) fail(origin, ": quantization_config.", key, " is not a boolean");
  return j[key].get<bool>();
}

std::string json_str(const json& j, const char* key, const std::string& def) {
  if (!j.contains(key) || !j[key].is_string()) return def;
  return j[key].get<std::string>();
}

std::string regex_escape(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string o;
  for (char c : s) {
    if (special.find(c) != std::string::npos) o += '\\';
    o += c;
  }
  return o;
}

// ==========================================================================================
// compressed-tensors

const char* ct_strategy(int64_t group) {
  return group == 0 ? "tensor" : group < 0 ? "channel" : "group";
}

struct ActSpec {
  ActQuant act;
  const char* type;
  const char* strategy;
  bool dynamic;
};
const ActSpec kActSpecs[] = {
    {ActQuant::FP8StaticTensor, "float", "tensor", false},
    {ActQuant::FP8DynamicToken, "float", "token", true},
    {ActQuant::FP8DynamicTensor, "float", "tensor", true},
    {ActQuant::INT8DynamicToken, "int", "token", true},
    {ActQuant::INT8StaticTensor, "int", "tensor", false},
};

bool is_static(ActQuant a) {
  return a == ActQuant::FP8StaticTensor || a == ActQuant::INT8StaticTensor;
}

std::string ct_float_why(const QuantizedWeight& w) {
  if (w.kind != QKind::FP8) return "float-quantized holds fp8 weights";
  if (!w.g_idx.empty()) return "float-quantized has no g_idx";
  if (w.act == ActQuant::INT8DynamicToken || w.act == ActQuant::INT8StaticTensor)
    return "float-quantized does not hold int8 activation quantization";
  return "";
}

std::string ct_int_why(const QuantizedWeight& w) {
  if (w.kind != QKind::INT || w.bits != 8 || !w.symmetric)
    return "int-quantized holds symmetric int8 weights";
  if (!w.g_idx.empty()) return "int-quantized has no g_idx";
  if (w.act == ActQuant::FP8StaticTensor || w.act == ActQuant::FP8DynamicToken ||
      w.act == ActQuant::FP8DynamicTensor)
    return "int-quantized does not hold fp8 activation quantization";
  return "";
}

std::string ct_pack_why(const QuantizedWeight& w) {
  if (w.kind != QKind::INT) return "pack-quantized holds integer weights";
  if (w.act != ActQuant::None)
    return "pack-quantized is weight-only (use int-quantized or float-quantized for activation "
           "quantization)";
  if (!w.symmetric && w.group == 0)
    return "pack-quantized stores asymmetric zero points per channel or group, not per tensor";
  return "";
}

// Unquantized bytes of the weight (FP8 raw bytes / int8 codes), [out, in].
std::vector<EncodedTensor> ct_plain_encode(const std::string& prefix, const QuantizedWeight& w) {
  std::vector<EncodedTensor> out;
  const DType dt = w.kind == QKind::FP8 ? DType::F8_E4M3 : DType::I8;
  out.push_back(bytes_tensor(prefix + ".weight", dt, {w.out, w.in}, w.q8.data(), w.q8.size()));
  const Shape sshape = w.group == 0 ? Shape{1} : Shape{w.out, w.n_groups()};
  out.push_back(float_tensor(prefix + ".weight_scale", DType::F32, sshape, w.scales));
  if (is_static(w.act))
    out.push_back(float_tensor(prefix + ".input_scale", DType::F32, {1}, {w.input_scale}));
  add_bias(out, prefix, w);
  return out;
}

std::vector<EncodedTensor> ct_pack_encode(const std::string& prefix, const QuantizedWeight& w) {
  std::vector<EncodedTensor> out;
  const int b = w.bits;
  const int64_t ng = w.n_groups();
  // weight_packed [out, ceil(in / (32/b))]: each row's codes + 2^(b-1), 32/b per word.
  const int64_t wpr = packed_words(w.in, b, PackScheme::Fixed);
  std::vector<uint32_t> words(size_t(w.out * wpr));
  std::vector<int32_t> row(size_t(w.in));
  for (int64_t o = 0; o < w.out; ++o) {
    for (int64_t i = 0; i < w.in; ++i) row[size_t(i)] = ucode(w, size_t(o * w.in + i));
    pack_codes(row.data(), 1, w.in, b, PackScheme::Fixed, words.data() + o * wpr, 1);
  }
  out.push_back(words_tensor(prefix + ".weight_packed", {w.out, wpr}, words));
  const Shape sshape = w.group == 0 ? Shape{1} : Shape{w.out, ng};
  out.push_back(float_tensor(prefix + ".weight_scale", DType::F32, sshape, w.scales));
  out.push_back(i64_tensor(prefix + ".weight_shape", {w.out, w.in}));
  if (!w.symmetric) {
    // weight_zero_point [ceil(out / (32/b)), ng]: packed along out (packed_dim 0).
    const int64_t zr = packed_words(w.out, b, PackScheme::Fixed);
    std::vector<uint32_t> zw(size_t(zr * ng));
    std::vector<int32_t> col(size_t(w.out));
    for (int64_t g = 0; g < ng; ++g) {
      for (int64_t o = 0; o < w.out; ++o) col[size_t(o)] = uzero(w, o, g);
      pack_codes(col.data(), 1, w.out, b, PackScheme::Fixed, zw.data() + g, ng);
    }
    out.push_back(words_tensor(prefix + ".weight_zero_point", {zr, ng}, zw));
  }
  if (!w.g_idx.empty())
    out.push_back(bytes_tensor(prefix + ".weight_g_idx", DType::I32, {w.in}, w.g_idx.data(),
                               w.g_idx.size() * 4));
  add_bias(out, prefix, w);
  return out;
}

// The config group of compressed-tensors config `qc` whose targets match `module`: "Linear",
// "re:<regex>" (Python re.match: anchored at the start) or the module name / a dotted suffix.
const json* ct_group(const json& qc, const std::string& module, const std::string& origin) {
  if (!qc.contains("config_groups") || !qc["config_groups"].is_object())
    fail(origin, ": compressed-tensors quantization_config has no config_groups object");
  for (const auto& [gname, g] : qc["config_groups"].items()) {
    if (!g.is_object() || !g.contains("targets") || !g["targets"].is_array()) continue;
    for (const auto& t : g["targets"]) {
      if (!t.is_string()) continue;
      const std::string s = t.get<std::string>();
      bool hit = false;
      if (s == "Linear") {
        hit = true;
      } else if (s.rfind("re:", 0) == 0) {
        try {
          hit = std::regex_search(module, std::regex(s.substr(3)),
                                  std::regex_constants::match_continuous);
        } catch (const std::regex_error&) {
          fail(origin, ": config group ", gname, " has an invalid target regex '", s, "'");
        }
      } else {
        hit = module == s ||
              (module.size() > s.size() && module.compare(module.size() - s.size(), s.size(), s) == 0 &&
               module[module.size() - s.size() - 1] == '.');
      }
      if (hit) return &g;
    }
  }
  return nullptr;
}

struct CtArgs {
  int bits = 8;
  std::string type = "int";
  bool symmetric = true;
  std::string strategy = "tensor";
  int64_t group_size = -1;
  int64_t block_out = 0, block_in = 0;
};

CtArgs ct_weight_args(const json& wa, const std::string& origin, const std::string& module) {
  CtArgs a;
  if (!wa.is_object()) fail(origin, ": config group of ", module, " has no weights arguments");
  a.bits = json_int(wa, "num_bits", 8, origin);
  a.type = json_str(wa, "type", "int");
  a.symmetric = json_bool(wa, "symmetric", true, origin);
  a.strategy = json_str(wa, "strategy", "tensor");
  if (a.strategy == "group") {
    a.group_size = json_int(wa, "group_size", -1, origin);
    if (a.group_size <= 0) fail(origin, ": group strategy for ", module, " without a group_size > 0");
  } else if (a.strategy == "block") {
    const json& bs = wa.contains("block_structure") ? wa["block_structure"] : json();
    if (bs.is_array() && bs.size() == 2 && bs[0].is_number_integer() && bs[1].is_number_integer()) {
      a.block_out = bs[0].get<int64_t>();
      a.block_in = bs[1].get<int64_t>();
    } else if (bs.is_string()) {  // older spelling "128x128"
      const std::string s = bs.get<std::string>();
      const size_t x = s.find('x');
      if (x != std::string::npos) {
        a.block_out = std::atoll(s.substr(0, x).c_str());
        a.block_in = std::atoll(s.substr(x + 1).c_str());
      }
    }
    if (a.block_out <= 0 || a.block_in <= 0)
      fail(origin, ": block strategy for ", module, " without a valid block_structure");
  } else if (a.strategy != "tensor" && a.strategy != "channel") {
    fail(origin, ": weight strategy '", a.strategy, "' of ", module, " is not supported");
  }
  if (a.type != "int" && a.type != "float")
    fail(origin, ": weight type '", a.type, "' of ", module, " is not supported");
  return a;
}

ActQuant ct_act(const json& ia, const std::string& origin, const std::string& module) {
  if (ia.is_null()) return ActQuant::None;
  if (!ia.is_object()) fail(origin, ": input_activations of ", module, " is not an object");
  const std::string type = json_str(ia, "type", "int");
  const std::string strategy = json_str(ia, "strategy", "tensor");
  const int bits = json_int(ia, "num_bits", 8, origin);
  bool dynamic = false;
  if (ia.contains("dynamic") && ia["dynamic"].is_boolean()) dynamic = ia["dynamic"].get<bool>();
  else if (ia.contains("dynamic") && !ia["dynamic"].is_null())
    fail(origin, ": input_activations.dynamic of ", module, " is not supported");
  const bool sym = json_bool(ia, "symmetric", true, origin);
  if (bits == 8 && sym) {
    for (const ActSpec& s : kActSpecs)
      if (type == s.type && strategy == s.strategy && dynamic == s.dynamic) return s.act;
  }
  fail(origin, ": input activation scheme of ", module, " (", bits, "-bit ", type, ", ", strategy,
       dynamic ? ", dynamic" : ", static", sym ? "" : ", asymmetric", ") is not supported");
}

// Scale tensor for a strategy -> QuantizedWeight scales [out, ng] (or [1]) and group.
void ct_read_scales(const TensorReader& r, const std::string& prefix, const CtArgs& a,
                    QuantizedWeight& w) {
  TensorRef t = need(r, prefix + ".weight_scale");
  std::vector<float> s = read_floats(r, t);
  if (a.strategy == "tensor") {
    if (t.info.numel() != 1) expect_shape(r, t, {1});
    w.group = 0;
    w.scales = s;
  } else if (a.strategy == "channel") {
    if (t.info.shape != Shape{w.out} && t.info.shape != Shape{w.out, 1})
      expect_shape(r, t, {w.out, 1});
    w.group = -1;
    w.scales = s;
  } else if (a.strategy == "group") {
    w.group = a.group_size;
    expect_shape(r, t, {w.out, w.n_groups()});
    w.scales = s;
  } else {  // block [bo, bi]: expanded to groups of bi along in, one row of scales per output
    const int64_t rb = (w.out + a.block_out - 1) / a.block_out;
    const int64_t cb = (w.in + a.block_in - 1) / a.block_in;
    expect_shape(r, t, {rb, cb});
    w.group = a.block_in;
    w.scales.resize(size_t(w.out * cb));
    for (int64_t o = 0; o < w.out; ++o)
      for (int64_t g = 0; g < cb; ++g)
        w.scales[size_t(o * cb + g)] = s[size_t((o / a.block_out) * cb + g)];
  }
}

QuantizedWeight ct_decode(const TensorReader& r, const std::string& prefix, int64_t out, int64_t in,
                          const json& qc) {
  const std::string origin = r.origin();
  const json* g = ct_group(qc, prefix, origin);
  if (!g) fail(origin, ": no compressed-tensors config group targets ", prefix);
  const CtArgs a = ct_weight_args(g->contains("weights") ? (*g)["weights"] : json(), origin, prefix);
  QuantizedWeight w;
  w.bits = a.bits;
  w.symmetric = a.symmetric;
  w.act = ct_act(g->contains("input_activations") ? (*g)["input_activations"] : json(), origin,
                 prefix);
  const std::string packed = prefix + ".weight_packed";
  if (r.has(packed)) {
    if (a.type != "int") fail(origin, ": ", packed, " needs integer weights in the config");
    if (a.bits < 1 || a.bits > 8) fail(origin, ": ", prefix, ": cannot unpack ", a.bits, "-bit codes");
    w.kind = QKind::INT;
    TensorRef sh = need(r, prefix + ".weight_shape");
    if (sh.info.numel() != 2) expect_shape(r, sh, {2});
    expect_dtype(r, sh, {DType::I64, DType::I32});
    w.out = agree(r, prefix + " out_features", out, int64_t(load_as_f32(sh.info.dtype, sh.data, 0)));
    w.in = agree(r, prefix + " in_features", in, int64_t(load_as_f32(sh.info.dtype, sh.data, 1)));
    if (w.out <= 0 || w.in <= 0) fail(origin, ": tensor ", sh.info.name, " holds an invalid shape");
    TensorRef pt = need(r, packed);
    const int64_t wpr = packed_words(w.in, a.bits, PackScheme::Fixed);
    expect_dtype(r, pt, {DType::I32});
    expect_shape(r, pt, {w.out, wpr});
    std::vector<uint32_t> words = read_words(r, pt);
    const int32_t off = 1 << (a.bits - 1);
    if (a.symmetric) w.q8.resize(size_t(w.out * w.in));
    else w.qu.resize(size_t(w.out * w.in));
    parallel_for(0, size_t(w.out), 16, [&](size_t lo, size_t hi) {
      std::vector<int32_t> buf(size_t(w.in));
      for (size_t o = lo; o < hi; ++o) {
        unpack_codes(words.data() + o * wpr, 1, w.in, a.bits, PackScheme::Fixed, buf.data(), 1);
        if (a.symmetric) {
          int8_t* d = w.q8.data() + o * w.in;
          for (int64_t i = 0; i < w.in; ++i) d[i] = int8_t(buf[size_t(i)] - off);
        } else {
          uint8_t* d = w.qu.data() + o * w.in;
          for (int64_t i = 0; i < w.in; ++i) d[i] = uint8_t(buf[size_t(i)]);
        }
      }
    });
    ct_read_scales(r, prefix, a, w);
    if (!a.symmetric) {
      const int64_t ng = w.group == 0 ? 1 : w.n_groups();
      TensorRef zt = need(r, prefix + ".weight_zero_point");
      w.zeros.resize(size_t(w.group == 0 ? 1 : w.out * ng));
      if (zt.info.dtype == DType::I32 && w.group != 0) {
        const int64_t zr = packed_words(w.out, a.bits, PackScheme::Fixed);
        expect_shape(r, zt, {zr, ng});
        std::vector<uint32_t> zw = read_words(r, zt);
        std::vector<int32_t> col(size_t(w.out));
        for (int64_t gi = 0; gi < ng; ++gi) {
          unpack_codes(zw.data() + gi, ng, w.out, a.bits, PackScheme::Fixed, col.data(), 1);
          for (int64_t o = 0; o < w.out; ++o) w.zeros[size_t(o * ng + gi)] = col[size_t(o)];
        }
      } else {  // unpacked signed zero points (per-tensor)
        expect_dtype(r, zt, {DType::I8, DType::I32});
        if (size_t(zt.info.numel()) != w.zeros.size())
          fail(origin, ": tensor ", zt.info.name, " has shape ", shape_str(zt.info.shape),
               ", expected ", w.zeros.size(), " zero points");
        for (size_t k = 0; k < w.zeros.size(); ++k)
          w.zeros[k] = int32_t(load_as_f32(zt.info.dtype, zt.data, k)) + off;
      }
    }
    const std::string gname = prefix + ".weight_g_idx";
    if (r.has(gname)) {
      TensorRef gt = r.get(gname);
      expect_dtype(r, gt, {DType::I32, DType::I64});
      expect_shape(r, gt, {w.in});
      w.g_idx.resize(size_t(w.in));
      for (int64_t i = 0; i < w.in; ++i)
        w.g_idx[size_t(i)] = int32_t(load_as_f32(gt.info.dtype, gt.data, size_t(i)));
    }
  } else {
    TensorRef wt = need(r, prefix + ".weight");
    if (wt.info.shape.size() != 2) expect_shape(r, wt, {std::max<int64_t>(out, 0), std::max<int64_t>(in, 0)});
    w.out = agree(r, prefix + " out_features", out, wt.info.shape[0]);
    w.in = agree(r, prefix + " in_features", in, wt.info.shape[1]);
    if (a.type == "float") {
      if (a.bits != 8) fail(origin, ": ", prefix, ": float weights must have 8 bits, not ", a.bits);
      expect_dtype(r, wt, {DType::F8_E4M3});
      w.kind = QKind::FP8;
      if (!a.symmetric) fail(origin, ": ", prefix, ": asymmetric fp8 weights are not supported");
    } else {
      if (a.bits != 8) fail(origin, ": ", prefix, ": unpacked integer weights must have 8 bits");
      expect_dtype(r, wt, {DType::I8});
      w.kind = QKind::INT;
    }
    ct_read_scales(r, prefix, a, w);
    if (w.kind == QKind::INT && !a.symmetric) {
      TensorRef zt = need(r, prefix + ".weight_zero_point");
      expect_dtype(r, zt, {DType::I8, DType::I32});
      if (size_t(zt.info.numel()) != w.scales.size())
        fail(origin, ": tensor ", zt.info.name, " has shape ", shape_str(zt.info.shape),
             ", expected ", w.scales.size(), " zero points");
      w.zeros.resize(w.scales.size());
      for (size_t k = 0; k < w.zeros.size(); ++k)
        w.zeros[k] = int32_t(load_as_f32(zt.info.dtype, zt.data, k)) + 128;
      w.qu.resize(size_t(w.out * w.in));
      for (size_t k = 0; k < w.qu.size(); ++k) w.qu[k] = uint8_t(int32_t(int8_t(wt.data[k])) + 128);
    } else {
      w.q8.resize(size_t(w.out * w.in));
      if (!w.q8.empty()) std::memcpy(w.q8.data(), wt.data, w.q8.size());
    }
  }
  if (is_static(w.act)) w.input_scale = read_scalar(r, prefix + ".input_scale");
  read_bias(r, prefix, w);
  finish_decode(r, prefix, w);
  return w;
}

json ct_weight_json(const QuantizedWeight& s) {
  json w = {{"num_bits", s.bits},
            {"type", s.kind == QKind::FP8 ? "float" : "int"},
            {"symmetric", s.symmetric},
            {"strategy", ct_strategy(s.group)},
            {"group_size", s.group > 0 ? json(s.group) : json()},
            {"block_structure", nullptr},
            {"dynamic", false},
            {"actorder", s.g_idx.empty() ? json() : json("group")},
            {"observer", "minmax"},
            {"observer_kwargs", json::object()}};
  return w;
}

json ct_act_json(ActQuant a) {
  for (const ActSpec& s : kActSpecs) {
    if (s.act != a) continue;
    return json{{"num_bits", 8},
                {"type", s.type},
                {"symmetric", true},
                {"strategy", s.strategy},
                {"group_size", nullptr},
                {"block_structure", nullptr},
                {"dynamic", s.dynamic},
                {"actorder", nullptr},
                {"observer", s.dynamic ? json() : json("minmax")},
                {"observer_kwargs", json::object()}};
  }
  return nullptr;
}

json ct_config(const Layout& self, const QuantConfigSpec& spec) {
  std::string format = self.format;
  if (format.empty()) {  // the "compressed-tensors" row: the first format that holds the scheme
    for (const Layout& l : layout_table())
      if (l.writable && *l.format && std::string(l.quant_method) == "compressed-tensors" &&
          l.why_not(spec.scheme).empty()) {
        format = l.format;
        break;
      }
    if (format.empty()) fail("no compressed-tensors format can hold this quantization scheme");
  }
  json ignore = json::array();
  for (const auto& n : spec.ignore) ignore.push_back(n);
  json c = {{"quant_method", "compressed-tensors"},
            {"format", format},
            {"quantization_status", "compressed"},
            {"config_groups",
             {{"group_0",
               {{"targets", json::array({"Linear"})},
                {"weights", ct_weight_json(spec.scheme)},
                {"input_activations", ct_act_json(spec.scheme.act)},
                {"output_activations", nullptr}}}}},
            {"ignore", ignore},
            {"kv_cache_scheme", nullptr}};
  return c;
}

// The "compressed-tensors" row: whichever compressed-tensors format holds the weight.
const Layout* ct_pick(const QuantizedWeight& w) {
  for (const Layout& l : layout_table())
    if (l.writable && *l.format && std::string(l.quant_method) == "compressed-tensors" &&
        l.why_not(w).empty())
      return &l;
  return nullptr;
}

std::string ct_any_why(const QuantizedWeight& w) {
  if (ct_pick(w)) return "";
  return ct_float_why(w) + "; " + ct_int_why(w) + "; " + ct_pack_why(w);
}

std::vector<EncodedTensor> ct_any_encode(const std::string& prefix, const QuantizedWeight& w) {
  return ct_pick(w)->encode_fn(prefix, w);
}

// ==========================================================================================
// GPTQ v1 (AutoGPTQ)

std::string gptq_why(const QuantizedWeight& w) {
  if (w.kind != QKind::INT) return "the gptq layout holds integer weights";
  if (w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8)
    return cat("the gptq layout holds 2, 3, 4 or 8-bit weights, not ", w.bits);
  if (!w.symmetric)
    return "asymmetric GPTQ cannot be stored as zero-1 in the gptq layout; use --layout "
           "compressed-tensors";
  if (w.act != ActQuant::None) return "the gptq layout is weight-only";
  if (w.group == 0) return "the gptq layout has no per-tensor scales (use a group size or -1)";
  if ((w.in * w.bits) % 32 != 0)
    return cat("the gptq layout needs in_features x bits divisible by 32 (in = ", w.in, ")");
  if ((w.out * w.bits) % 32 != 0)
    return cat("the gptq layout needs out_features x bits divisible by 32 (out = ", w.out, ")");
  return "";
}

std::vector<EncodedTensor> gptq_encode(const std::string& prefix, const QuantizedWeight& w) {
  const int b = w.bits;
  const int64_t ng = w.n_groups();
  // qweight [in*b/32, out]: for each output column, the codes along in as one bit stream.
  const int64_t qr = w.in * b / 32;
  std::vector<uint32_t> qw(size_t(qr * w.out));
  std::vector<int32_t> col(size_t(std::max(w.in, w.out)));
  for (int64_t o = 0; o < w.out; ++o) {
    for (int64_t i = 0; i < w.in; ++i) col[size_t(i)] = ucode(w, size_t(o * w.in + i));
    pack_codes(col.data(), 1, w.in, b, PackScheme::Stream, qw.data() + o, w.out);
  }
  // qzeros [ng, out*b/32]: zero - 1 along out.
  const int64_t zc = w.out * b / 32;
  std::vector<uint32_t> qz(size_t(ng * zc));
  for (int64_t g = 0; g < ng; ++g) {
    for (int64_t o = 0; o < w.out; ++o) col[size_t(o)] = uzero(w, o, g) - 1;
    pack_codes(col.data(), 1, w.out, b, PackScheme::Stream, qz.data() + g * zc, 1);
  }
  std::vector<int32_t> gi(size_t(w.in));
  for (int64_t i = 0; i < w.in; ++i) gi[size_t(i)] = int32_t(w.group_of(i));
  std::vector<EncodedTensor> out;
  out.push_back(words_tensor(prefix + ".qweight", {qr, w.out}, qw));
  out.push_back(words_tensor(prefix + ".qzeros", {ng, zc}, qz));
  out.push_back(float_tensor(prefix + ".scales", DType::F16, {ng, w.out}, scales_t(w)));
  out.push_back(bytes_tensor(prefix + ".g_idx", DType::I32, {w.in}, gi.data(), gi.size() * 4));
  add_bias(out, prefix, w);
  return out;
}

QuantizedWeight gptq_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                            int64_t in, const json& qc) {
  const std::string origin = r.origin();
  const int b = json_int(qc, "bits", 4, origin);
  if (b != 2 && b != 3 && b != 4 && b != 8)
    fail(origin, ": gptq bits must be 2, 3, 4 or 8, not ", b);
  const int gs = json_int(qc, "group_size", -1, origin);
  const std::string fmt = json_str(qc, "checkpoint_format", "gptq");
  if (fmt != "gptq" && fmt != "gptq_v2")
    fail(origin, ": gptq checkpoint_format '", fmt, "' is not supported (gptq, gptq_v2)");
  const int32_t zoff = fmt == "gptq" ? 1 : 0;  // v1 stores zero - 1
  TensorRef qt = need(r, prefix + ".qweight");
  expect_dtype(r, qt, {DType::I32});
  if (qt.info.shape.size() != 2)
    fail(origin, ": tensor ", qt.info.name, " has shape ", shape_str(qt.info.shape), ", expected 2-D");
  QuantizedWeight w;
  w.kind = QKind::INT;
  w.bits = b;
  if ((qt.info.shape[0] * 32) % b != 0)
    fail(origin, ": tensor ", qt.info.name, " has ", qt.info.shape[0], " rows, not a whole number of ",
         b, "-bit columns");
  w.out = agree(r, prefix + " out_features", out, qt.info.shape[1]);
  w.in = agree(r, prefix + " in_features", in, qt.info.shape[0] * 32 / b);
  if ((w.in * b) % 32 || (w.out * b) % 32)
    fail(origin, ": ", prefix, ": gptq needs in and out features x bits divisible by 32");
  w.group = gs > 0 ? gs : -1;
  const int64_t ng = w.n_groups();
  const int64_t zc = w.out * b / 32;
  TensorRef zt = need(r, prefix + ".qzeros");
  expect_dtype(r, zt, {DType::I32});
  expect_shape(r, zt, {ng, zc});
  TensorRef st = need(r, prefix + ".scales");
  expect_shape(r, st, {ng, w.out});
  std::vector<float> s = read_floats(r, st);
  std::vector<uint32_t> qw = read_words(r, qt), qz = read_words(r, zt);
  std::vector<int32_t> z(size_t(w.out * ng)), row(size_t(w.out));
  bool all_mid = true;
  for (int64_t g = 0; g < ng; ++g) {
    unpack_codes(qz.data() + g * zc, 1, w.out, b, PackScheme::Stream, row.data(), 1);
    for (int64_t o = 0; o < w.out; ++o) {
      const int32_t zv = row[size_t(o)] + zoff;
      z[size_t(o * ng + g)] = zv;
      all_mid = all_mid && zv == (1 << (b - 1));
    }
  }
  w.scales.resize(size_t(w.out * ng));
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t g = 0; g < ng; ++g) w.scales[size_t(o * ng + g)] = s[size_t(g * w.out + o)];
  // Symmetric when every zero is the midpoint (the sym flag of the config alone is not trusted).
  w.symmetric = all_mid;
  if (all_mid) w.q8.resize(size_t(w.out * w.in));
  else {
    w.qu.resize(size_t(w.out * w.in));
    w.zeros = std::move(z);
  }
  {
    // Transposed to [out, in*b/32] so each column's bit stream is contiguous.
    const int64_t qr = qt.info.shape[0];
    std::vector<uint32_t> tw(qw.size());
    constexpr int64_t T = 64;
    parallel_for(0, size_t((w.out + T - 1) / T), 1, [&](size_t lo, size_t hi) {
      for (int64_t o0 = int64_t(lo) * T; o0 < std::min<int64_t>(w.out, int64_t(hi) * T); o0 += T) {
        const int64_t o1 = std::min(w.out, o0 + T);
        for (int64_t k0 = 0; k0 < qr; k0 += T) {
          const int64_t k1 = std::min(qr, k0 + T);
          for (int64_t o = o0; o < o1; ++o)
            for (int64_t k = k0; k < k1; ++k) tw[size_t(o * qr + k)] = qw[size_t(k * w.out + o)];
        }
      }
    });
    const int32_t mid = 1 << (b - 1);
    parallel_for(0, size_t(w.out), 16, [&](size_t lo, size_t hi) {
      std::vector<int32_t> buf(size_t(w.in));
      for (size_t o = lo; o < hi; ++o) {
        unpack_codes(tw.data() + o * qr, 1, w.in, b, PackScheme::Stream, buf.data(), 1);
        if (all_mid) {
          int8_t* d = w.q8.data() + o * w.in;
          for (int64_t i = 0; i < w.in; ++i) d[i] = int8_t(buf[size_t(i)] - mid);
        } else {
          uint8_t* d = w.qu.data() + o * w.in;
          for (int64_t i = 0; i < w.in; ++i) d[i] = uint8_t(buf[size_t(i)]);
        }
      }
    });
  }
  const std::string gname = prefix + ".g_idx";
  if (r.has(gname)) {
    TensorRef gt = r.get(gname);
    expect_dtype(r, gt, {DType::I32, DType::I64});
    expect_shape(r, gt, {w.in});
    w.g_idx.resize(size_t(w.in));
    for (int64_t i = 0; i < w.in; ++i)
      w.g_idx[size_t(i)] = int32_t(load_as_f32(gt.info.dtype, gt.data, size_t(i)));
    if (w.group < 0) {  // per-channel: g_idx must be all zero
      for (int32_t v : w.g_idx)
        if (v != 0) fail(origin, ": tensor ", gname, " refers to groups, but group_size is -1");
      w.g_idx.clear();
    }
  }
  read_bias(r, prefix, w);
  finish_decode(r, prefix, w);
  return w;
}

json gptq_config(const Layout&, const QuantConfigSpec& spec) {
  const QuantizedWeight& s = spec.scheme;
  json c = {{"quant_method", "gptq"},
            {"bits", s.bits},
            {"group_size", s.group > 0 ? s.group : -1},
            {"desc_act", !s.g_idx.empty()},
            {"sym", s.symmetric},
            {"static_groups", false},
            {"true_sequential", true},
            {"damp_percent", 0.01},
            {"checkpoint_format", "gptq"}};
  // Modules left dense besides lm_head: vLLM's per-module "dynamic" overrides, "-:" = skip.
  json dyn = json::object();
  for (const auto& n : spec.ignore) {
    if (n == "lm_head") continue;
    dyn["-:" + (n.rfind("re:", 0) == 0 ? n.substr(3) : ".*" + regex_escape(n) + "$")] =
        json::object();
  }
  if (!dyn.empty()) c["dynamic"] = dyn;
  return c;
}

// ==========================================================================================
// AWQ GEMM (AutoAWQ)

std::string awq_why(const QuantizedWeight& w) {
  if (w.kind != QKind::INT || w.bits != 4) return "the awq layout holds 4-bit integer weights";
  if (w.act != ActQuant::None) return "the awq layout is weight-only";
  if (w.group <= 0) return "the awq layout needs a positive group size";
  if (w.in % w.group != 0)
    return cat("the awq layout needs in_features (", w.in, ") divisible by the group size");
  if (w.out % 8 != 0) return cat("the awq layout needs out_features (", w.out, ") divisible by 8");
  if (!trivial_g_idx(w.g_idx, w.group))
    return "the awq layout has no g_idx (use --layout gptq or compressed-tensors for act-order)";
  return "";
}

std::vector<EncodedTensor> awq_encode(const std::string& prefix, const QuantizedWeight& w) {
  const int64_t ng = w.n_groups(), oc = w.out / 8;
  std::vector<uint32_t> qw(size_t(w.in * oc)), qz(size_t(ng * oc));
  std::vector<int32_t> row(size_t(w.out));
  for (int64_t i = 0; i < w.in; ++i) {
    for (int64_t o = 0; o < w.out; ++o) row[size_t(o)] = ucode(w, size_t(o * w.in + i));
    pack_codes(row.data(), 1, w.out, 4, PackScheme::Awq, qw.data() + i * oc, 1);
  }
  for (int64_t g = 0; g < ng; ++g) {
    for (int64_t o = 0; o < w.out; ++o) row[size_t(o)] = uzero(w, o, g);
    pack_codes(row.data(), 1, w.out, 4, PackScheme::Awq, qz.data() + g * oc, 1);
  }
  std::vector<EncodedTensor> out;
  out.push_back(words_tensor(prefix + ".qweight", {w.in, oc}, qw));
  out.push_back(words_tensor(prefix + ".qzeros", {ng, oc}, qz));
  out.push_back(float_tensor(prefix + ".scales", DType::F16, {ng, w.out}, scales_t(w)));
  add_bias(out, prefix, w);
  return out;
}

QuantizedWeight awq_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                           int64_t in, const json& qc) {
  const std::string origin = r.origin();
  const int b = json_int(qc, "bits", json_int(qc, "w_bit", 4, origin), origin);
  if (b != 4) fail(origin, ": awq bits must be 4, not ", b);
  const int gs = json_int(qc, "group_size", json_int(qc, "q_group_size", 128, origin), origin);
  if (gs <= 0) fail(origin, ": awq group_size must be > 0, not ", gs);
  std::string version = json_str(qc, "version", "gemm");
  std::transform(version.begin(), version.end(), version.begin(), ::tolower);
  if (version != "gemm") fail(origin, ": awq version '", version, "' is not supported (gemm)");
  if (!json_bool(qc, "zero_point", true, origin))
    fail(origin, ": awq without zero points is not supported");
  TensorRef qt = need(r, prefix + ".qweight");
  expect_dtype(r, qt, {DType::I32});
  if (qt.info.shape.size() != 2)
    fail(origin, ": tensor ", qt.info.name, " has shape ", shape_str(qt.info.shape), ", expected 2-D");
  QuantizedWeight w;
  w.kind = QKind::INT;
  w.bits = 4;
  w.symmetric = false;
  w.in = agree(r, prefix + " in_features", in, qt.info.shape[0]);
  w.out = agree(r, prefix + " out_features", out, qt.info.shape[1] * 8);
  w.group = gs;
  if (w.in % gs) fail(origin, ": ", prefix, ": in_features ", w.in, " not divisible by group ", gs);
  const int64_t ng = w.n_groups(), oc = w.out / 8;
  TensorRef zt = need(r, prefix + ".qzeros");
  expect_dtype(r, zt, {DType::I32});
  expect_shape(r, zt, {ng, oc});
  TensorRef st = need(r, prefix + ".scales");
  expect_shape(r, st, {ng, w.out});
  std::vector<float> s = read_floats(r, st);
  std::vector<uint32_t> qw = read_words(r, qt), qz = read_words(r, zt);
  std::vector<int32_t> row(size_t(w.out));
  {
    // Unpack to [in, out], then transpose to [out, in] in tiles.
    std::vector<uint8_t> ct(size_t(w.in * w.out));
    parallel_for(0, size_t(w.in), 16, [&](size_t lo, size_t hi) {
      std::vector<int32_t> buf(size_t(w.out));
      for (size_t i = lo; i < hi; ++i) {
        unpack_codes(qw.data() + i * oc, 1, w.out, 4, PackScheme::Awq, buf.data(), 1);
        for (int64_t o = 0; o < w.out; ++o) ct[size_t(i * w.out + o)] = uint8_t(buf[size_t(o)]);
      }
    });
    w.qu.resize(size_t(w.out * w.in));
    constexpr int64_t T = 64;
    parallel_for(0, size_t((w.out + T - 1) / T), 1, [&](size_t lo, size_t hi) {
      for (int64_t o0 = int64_t(lo) * T; o0 < std::min<int64_t>(w.out, int64_t(hi) * T); o0 += T) {
        const int64_t o1 = std::min(w.out, o0 + T);
        for (int64_t i0 = 0; i0 < w.in; i0 += T) {
          const int64_t i1 = std::min(w.in, i0 + T);
          for (int64_t o = o0; o < o1; ++o)
            for (int64_t i = i0; i < i1; ++i) w.qu[size_t(o * w.in + i)] = ct[size_t(i * w.out + o)];
        }
      }
    });
  }
  w.zeros.resize(size_t(w.out * ng));
  w.scales.resize(size_t(w.out * ng));
  for (int64_t g = 0; g < ng; ++g) {
    unpack_codes(qz.data() + g * oc, 1, w.out, 4, PackScheme::Awq, row.data(), 1);
    for (int64_t o = 0; o < w.out; ++o) {
      w.zeros[size_t(o * ng + g)] = row[size_t(o)];
      w.scales[size_t(o * ng + g)] = s[size_t(g * w.out + o)];
    }
  }
  read_bias(r, prefix, w);
  finish_decode(r, prefix, w);
  return w;
}

json awq_config(const Layout&, const QuantConfigSpec& spec) {
  json c = {{"quant_method", "awq"},
            {"bits", 4},
            {"group_size", spec.scheme.group},
            {"zero_point", true},
            {"version", "gemm"}};
  json skip = json::array();
  for (const auto& n : spec.ignore) skip.push_back(n);
  c["modules_to_not_convert"] = spec.ignore.empty() ? json() : skip;
  return c;
}

// ==========================================================================================
// vLLM fp8 (read only)

QuantizedWeight fp8_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                           int64_t in, const json& qc) {
  const std::string origin = r.origin();
  TensorRef wt = need(r, prefix + ".weight");
  expect_dtype(r, wt, {DType::F8_E4M3});
  if (wt.info.shape.size() != 2)
    fail(origin, ": tensor ", wt.info.name, " has shape ", shape_str(wt.info.shape), ", expected 2-D");
  QuantizedWeight w;
  w.kind = QKind::FP8;
  w.bits = 8;
  w.out = agree(r, prefix + " out_features", out, wt.info.shape[0]);
  w.in = agree(r, prefix + " in_features", in, wt.info.shape[1]);
  w.q8.resize(size_t(w.out * w.in));
  if (!w.q8.empty()) std::memcpy(w.q8.data(), wt.data, w.q8.size());  // empty: no data pointer
  const json& bs = qc.contains("weight_block_size") ? qc["weight_block_size"] : json();
  const bool block = bs.is_array();
  if (block) {
    if (bs.size() != 2 || !bs[0].is_number_integer() || !bs[1].is_number_integer() ||
        bs[0].get<int64_t>() <= 0 || bs[1].get<int64_t>() <= 0)
      fail(origin, ": fp8 weight_block_size must be two positive integers");
    CtArgs a;
    a.strategy = "block";
    a.block_out = bs[0].get<int64_t>();
    a.block_in = bs[1].get<int64_t>();
    const std::string inv = prefix + ".weight_scale_inv";
    const std::string sname = r.has(inv) ? inv : prefix + ".weight_scale";
    TensorRef t = need(r, sname);
    const int64_t rb = (w.out + a.block_out - 1) / a.block_out;
    const int64_t cb = (w.in + a.block_in - 1) / a.block_in;
    expect_shape(r, t, {rb, cb});
    std::vector<float> s = read_floats(r, t);
    w.group = a.block_in;
    w.scales.resize(size_t(w.out * cb));
    for (int64_t o = 0; o < w.out; ++o)
      for (int64_t g = 0; g < cb; ++g)
        w.scales[size_t(o * cb + g)] = s[size_t((o / a.block_out) * cb + g)];
  } else {
    TensorRef t = need(r, prefix + ".weight_scale");
    std::vector<float> s = read_floats(r, t);
    if (s.size() == 1) {
      w.group = 0;
    } else if (int64_t(s.size()) == w.out) {
      w.group = -1;
    } else {
      expect_shape(r, t, {1});
    }
    w.scales = s;
  }
  const std::string scheme = json_str(qc, "activation_scheme", "dynamic");
  if (scheme == "static") {
    w.act = ActQuant::FP8StaticTensor;
    w.input_scale = read_scalar(r, prefix + ".input_scale");
  } else if (scheme == "dynamic") {
    // vLLM: per-tensor dynamic for per-tensor weights; per-token-group (1 x block) for block
    // weights, simulated here per token.
    w.act = block ? ActQuant::FP8DynamicToken : ActQuant::FP8DynamicTensor;
  } else {
    fail(origin, ": fp8 activation_scheme '", scheme, "' is not supported (static, dynamic)");
  }
  read_bias(r, prefix, w);
  finish_decode(r, prefix, w);
  return w;
}

// ==========================================================================================
// Logical shapes

Shape two_d(const TensorReader& r, const TensorRef& t) {
  if (t.info.shape.size() != 2)
    fail(r.origin(), ": tensor ", t.info.name, " has shape ", shape_str(t.info.shape), ", expected 2-D");
  return t.info.shape;
}

Shape plain_shape(const TensorReader& r, const std::string& prefix, const json&) {
  return two_d(r, need(r, prefix + ".weight"));
}

Shape ct_shape(const TensorReader& r, const std::string& prefix, const json& qc) {
  if (!r.has(prefix + ".weight_packed")) return plain_shape(r, prefix, qc);
  TensorRef sh = need(r, prefix + ".weight_shape");
  expect_dtype(r, sh, {DType::I64, DType::I32});
  if (sh.info.numel() != 2) expect_shape(r, sh, {2});
  return {int64_t(load_as_f32(sh.info.dtype, sh.data, 0)), int64_t(load_as_f32(sh.info.dtype, sh.data, 1))};
}

Shape gptq_shape(const TensorReader& r, const std::string& prefix, const json& qc) {
  const Shape s = two_d(r, need(r, prefix + ".qweight"));
  const int b = json_int(qc, "bits", 4, r.origin());
  if (b <= 0) fail(r.origin(), ": gptq bits must be positive");
  return {s[1], s[0] * 32 / b};
}

Shape awq_shape(const TensorReader& r, const std::string& prefix, const json&) {
  const Shape s = two_d(r, need(r, prefix + ".qweight"));
  return {s[1] * 8, s[0]};
}

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
