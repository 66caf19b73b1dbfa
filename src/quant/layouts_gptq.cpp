// quant/layouts_gptq.cpp — the AutoGPTQ v1 row. See layouts.h and docs/formats.md.
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
  two_d(r, qt);
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
  auto [s, qz] = read_group_params(r, prefix, ng, zc, w.out);
  std::vector<uint32_t> qw = read_words(r, qt);
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
    w.g_idx = read_g_idx(r, gname, w.in);
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
  // vLLM matches them (re.match) against its module names, where q/k/v and gate/up are one
  // fused module (qkv_proj, gate_up_proj): those names are listed too (spec.fused_ignore).
  json dyn = json::object();
  for (const auto* names : {&spec.ignore, &spec.fused_ignore})
    for (const auto& n : *names) {
      if (n == "lm_head") continue;
      dyn["-:" + (n.rfind("re:", 0) == 0 ? n.substr(3) : ".*" + regex_escape(n) + "$")] =
          json::object();
    }
  if (!dyn.empty()) c["dynamic"] = dyn;
  return c;
}


Shape gptq_shape(const TensorReader& r, const std::string& prefix, const json& qc) {
  const Shape s = two_d(r, need(r, prefix + ".qweight"));
  const int b = json_int(qc, "bits", 4, r.origin());
  if (b <= 0) fail(r.origin(), ": gptq bits must be positive");
  return {s[1], s[0] * 32 / b};
}

}  // namespace llmc::layout_io
