// quant/layouts_ct.cpp — the compressed-tensors rows (pack-/int-/float-/naive-quantized and
// the format-picking "compressed-tensors" row). See layouts.h and docs/formats.md.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>

#include "core/error.h"
#include "core/threads.h"
#include "quant/layouts_io.h"
#include "quant/packing.h"

namespace llmc::layout_io {

using nlohmann::json;

// ==========================================================================================
// compressed-tensors

namespace {

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

}  // namespace

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
  // weight_packed [out, ceil(in·b / 32)]: each row's codes + 2^(b-1) as one dense bit stream
  // (compressed-tensors pack_to_int32 since 2026; 2/4/8 bits: 32/b codes per word as before).
  const int64_t wpr = packed_words(w.in, b, PackScheme::Stream);
  std::vector<uint32_t> words(size_t(w.out * wpr));
  std::vector<int32_t> row(size_t(w.in));
  for (int64_t o = 0; o < w.out; ++o) {
    for (int64_t i = 0; i < w.in; ++i) row[size_t(i)] = ucode(w, size_t(o * w.in + i));
    pack_codes(row.data(), 1, w.in, b, PackScheme::Stream, words.data() + o * wpr, 1);
  }
  out.push_back(words_tensor(prefix + ".weight_packed", {w.out, wpr}, words));
  const Shape sshape = w.group == 0 ? Shape{1} : Shape{w.out, ng};
  out.push_back(float_tensor(prefix + ".weight_scale", DType::F32, sshape, w.scales));
  out.push_back(i64_tensor(prefix + ".weight_shape", {w.out, w.in}));
  if (!w.symmetric) {
    // weight_zero_point [ceil(out·b / 32), ng]: packed along out (packed_dim 0), dense.
    const int64_t zr = packed_words(w.out, b, PackScheme::Stream);
    std::vector<uint32_t> zw(size_t(zr * ng));
    std::vector<int32_t> col(size_t(w.out));
    for (int64_t g = 0; g < ng; ++g) {
      for (int64_t o = 0; o < w.out; ++o) col[size_t(o)] = uzero(w, o, g);
      pack_codes(col.data(), 1, w.out, b, PackScheme::Stream, zw.data() + g, ng);
    }
    out.push_back(words_tensor(prefix + ".weight_zero_point", {zr, ng}, zw));
  }
  if (!w.g_idx.empty())
    out.push_back(bytes_tensor(prefix + ".weight_g_idx", DType::I32, {w.in}, w.g_idx.data(),
                               w.g_idx.size() * 4));
  add_bias(out, prefix, w);
  return out;
}

namespace {

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

// How a pack-quantized tensor packs its n codes of `bits` bits along dimension `dim`, told by
// its shape: the dense bit stream of compressed-tensors since 2026 (ceil(n·b/32) words,
// PackScheme::Stream), or the older floor(32/b) codes per word (PackScheme::Fixed, what llmc
// wrote before; differs for 3/5/6/7 bits only). When both give that many words, `tie` (the
// weights: the current spec; zero points: what the weights use). A shape fitting neither reads
// as the current spec, whose shape check then names the tensor.
PackScheme ct_pack_scheme(const TensorRef& t, size_t dim, int64_t n, int bits, PackScheme tie) {
  if (t.info.shape.size() != 2) return PackScheme::Stream;
  const int64_t words = t.info.shape[dim];
  const bool stream = words == packed_words(n, bits, PackScheme::Stream);
  const bool fixed = words == packed_words(n, bits, PackScheme::Fixed);
  return stream && fixed ? tie : fixed ? PackScheme::Fixed : PackScheme::Stream;
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
  } else {  // block [bo, bi]
    read_block_scales(r, t, a.block_out, a.block_in, w);
  }
}

}  // namespace

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
    constexpr int64_t kMaxDim = int64_t(1) << 40;
    if (w.out <= 0 || w.in <= 0 || w.out > kMaxDim || w.in > kMaxDim)
      fail(origin, ": tensor ", sh.info.name, " holds an invalid shape");
    TensorRef pt = need(r, packed);
    const PackScheme ws = ct_pack_scheme(pt, 1, w.in, a.bits, PackScheme::Stream);
    const int64_t wpr = packed_words(w.in, a.bits, ws);
    expect_dtype(r, pt, {DType::I32});
    expect_shape(r, pt, {w.out, wpr});
    std::vector<uint32_t> words = read_words(r, pt);
    const int32_t off = 1 << (a.bits - 1);
    if (a.symmetric) w.q8.resize(size_t(w.out * w.in));
    else w.qu.resize(size_t(w.out * w.in));
    parallel_for(0, size_t(w.out), 16, [&](size_t lo, size_t hi) {
      std::vector<int32_t> buf(size_t(w.in));
      for (size_t o = lo; o < hi; ++o) {
        unpack_codes(words.data() + o * wpr, 1, w.in, a.bits, ws, buf.data(), 1);
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
        const PackScheme zs = ct_pack_scheme(zt, 0, w.out, a.bits, ws);
        const int64_t zr = packed_words(w.out, a.bits, zs);
        expect_shape(r, zt, {zr, ng});
        std::vector<uint32_t> zw = read_words(r, zt);
        std::vector<int32_t> col(size_t(w.out));
        for (int64_t gi = 0; gi < ng; ++gi) {
          unpack_codes(zw.data() + gi, ng, w.out, a.bits, zs, col.data(), 1);
          for (int64_t o = 0; o < w.out; ++o) w.zeros[size_t(o * ng + gi)] = col[size_t(o)];
        }
      } else {  // unpacked signed zero points (per-tensor)
        expect_dtype(r, zt, {DType::I8, DType::I32});
        if (size_t(zt.info.numel()) != w.zeros.size())
          fail(origin, ": tensor ", zt.info.name, " has shape ", shape_str(zt.info.shape),
               ", expected ", w.zeros.size(), " zero points");
        for (size_t k = 0; k < w.zeros.size(); ++k)
          w.zeros[k] = load_index(zt, k) + off;
      }
    }
    const std::string gname = prefix + ".weight_g_idx";
    if (r.has(gname)) w.g_idx = read_g_idx(r, gname, w.in);
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
        w.zeros[k] = load_index(zt, k) + 128;
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

namespace {

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

}  // namespace

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


Shape ct_shape(const TensorReader& r, const std::string& prefix, const json& qc) {
  if (!r.has(prefix + ".weight_packed")) return plain_shape(r, prefix, qc);
  TensorRef sh = need(r, prefix + ".weight_shape");
  expect_dtype(r, sh, {DType::I64, DType::I32});
  if (sh.info.numel() != 2) expect_shape(r, sh, {2});
  return {int64_t(load_as_f32(sh.info.dtype, sh.data, 0)), int64_t(load_as_f32(sh.info.dtype, sh.data, 1))};
}

}  // namespace llmc::layout_io
