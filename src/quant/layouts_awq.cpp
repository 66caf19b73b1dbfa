// quant/layouts_awq.cpp — the AutoAWQ GEMM row. See layouts.h and docs/formats.md.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "quant/layouts_io.h"
#include "quant/packing.h"

namespace llmc::layout_io {

using nlohmann::json;

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
  two_d(r, qt);
  QuantizedWeight w;
  w.kind = QKind::INT;
  w.bits = 4;
  w.symmetric = false;
  w.in = agree(r, prefix + " in_features", in, qt.info.shape[0]);
  w.out = agree(r, prefix + " out_features", out, qt.info.shape[1] * 8);
  w.group = gs;
  if (w.in % gs) fail(origin, ": ", prefix, ": in_features ", w.in, " not divisible by group ", gs);
  const int64_t ng = w.n_groups(), oc = w.out / 8;
  auto [s, qz] = read_group_params(r, prefix, ng, oc, w.out);
  std::vector<uint32_t> qw = read_words(r, qt);
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
  // vLLM skips a module when a listed name is a substring of its name, where q/k/v and gate/up
  // are one fused module: those names are listed too (spec.fused_ignore).
  json skip = json::array();
  for (const auto& n : spec.ignore) skip.push_back(n);
  for (const auto& n : spec.fused_ignore) skip.push_back(n);
  c["modules_to_not_convert"] = spec.ignore.empty() ? json() : skip;
  return c;
}


Shape awq_shape(const TensorReader& r, const std::string& prefix, const json&) {
  const Shape s = two_d(r, need(r, prefix + ".qweight"));
  return {s[1] * 8, s[0]};
}

}  // namespace llmc::layout_io
