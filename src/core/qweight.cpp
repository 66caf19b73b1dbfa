// core/qweight.cpp — the reference decoder of QuantizedWeight and activation fake-quantization.
#include "core/qweight.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"

namespace llmc {

const char* act_quant_name(ActQuant a) {
  static const char* const names[] = {"none", "fp8_static_tensor", "fp8_dynamic_token",
                                      "fp8_dynamic_tensor", "int8_dynamic_token",
                                      "int8_static_tensor"};
  const size_t i = size_t(a);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "unknown";
}

int64_t QuantizedWeight::n_groups() const {
  if (group > 0) return (in + group - 1) / group;
  return 1;
}

int64_t QuantizedWeight::group_of(int64_t col) const {
  if (!g_idx.empty()) return g_idx[size_t(col)];
  if (group > 0) return col / group;
  return 0;
}

int32_t QuantizedWeight::code(int64_t o, int64_t i) const {
  const size_t k = size_t(o * in + i);
  if (kind == QKind::FP8) return int32_t(uint8_t(q8[k]));
  return symmetric ? int32_t(q8[k]) : int32_t(qu[k]);
}

void QuantizedWeight::validate(const std::string& what) const {
  if (out <= 0 || in <= 0) fail(what, ": quantized weight has invalid shape [", out, ", ", in, "]");
  if (kind == QKind::FP8) {
    if (bits != 8) fail(what, ": fp8 weights have 8 bits, not ", bits);
    if (!symmetric) fail(what, ": fp8 weights cannot be asymmetric");
  } else if (bits < 2 || bits > 8) {
    fail(what, ": integer weights must have 2..8 bits, not ", bits);
  }
  if (group < -1) fail(what, ": invalid group size ", group);
  const size_t n = size_t(out * in);
  const bool use_u = kind == QKind::INT && !symmetric;
  const size_t have = use_u ? qu.size() : q8.size();
  if (have != n)
    fail(what, ": expected ", n, " codes for [", out, ", ", in, "], found ", have);
  if (kind == QKind::INT) {
    const int32_t lo = symmetric ? -(1 << (bits - 1)) : 0;
    const int32_t hi = symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
    // Range first (vectorizable min/max), the offending element only on failure.
    int32_t mn = 0, mx = 0;
    if (use_u) {
      uint8_t a = 255, b = 0;
      for (size_t k = 0; k < n; ++k) a = std::min(a, qu[k]), b = std::max(b, qu[k]);
      mn = n ? a : 0;
      mx = n ? b : 0;
    } else {
      int8_t a = 127, b = -128;
      for (size_t k = 0; k < n; ++k) a = std::min(a, q8[k]), b = std::max(b, q8[k]);
      mn = n ? a : 0;
      mx = n ? b : 0;
    }
    if (mn < lo || mx > hi) {
      for (size_t k = 0; k < n; ++k) {
        const int32_t c = use_u ? int32_t(qu[k]) : int32_t(q8[k]);
        if (c < lo || c > hi)
          fail(what, ": code ", c, " at element ", k, " is outside [", lo, ", ", hi, "] for ",
               bits, "-bit ", symmetric ? "symmetric" : "asymmetric", " weights");
      }
    }
  }
  const size_t ns = group == 0 ? 1 : size_t(out * n_groups());
  if (scales.size() != ns) fail(what, ": expected ", ns, " scales, found ", scales.size());
  for (size_t k = 0; k < ns; ++k) {
    if (!std::isfinite(scales[k])) fail(what, ": scale ", k, " is ", scales[k], " (not finite)");
  }
  if (use_u) {
    if (zeros.size() != ns) fail(what, ": expected ", ns, " zero points, found ", zeros.size());
  } else if (!zeros.empty()) {
    fail(what, ": zero points are only valid for asymmetric integer weights");
  }
  if (!g_idx.empty()) {
    if (group <= 0) fail(what, ": g_idx needs a positive group size");
    if (g_idx.size() != size_t(in))
      fail(what, ": g_idx has ", g_idx.size(), " entries, expected ", in);
    const int64_t ng = n_groups();
    for (size_t c = 0; c < g_idx.size(); ++c) {
      if (g_idx[c] < 0 || g_idx[c] >= ng)
        fail(what, ": g_idx[", c, "] = ", g_idx[c], " is outside [0, ", ng, ")");
    }
  }
  if (!bias.empty() && bias.size() != size_t(out))
    fail(what, ": bias has ", bias.size(), " entries, expected ", out);
  if (act == ActQuant::FP8StaticTensor || act == ActQuant::INT8StaticTensor) {
    if (!std::isfinite(input_scale) || input_scale <= 0.0f)
      fail(what, ": static activation quantization needs a finite input_scale > 0, found ",
           input_scale);
  }
}

void QuantizedWeight::dequantize_rows(int64_t r0, int64_t r1, float* dst) const {
  const size_t n = size_t(out * in);
  const bool use_u = kind == QKind::INT && !symmetric;
  LLMC_CHECK((use_u ? qu.size() : q8.size()) == n, "codes of a [", out, ", ", in, "] weight");
  const int64_t ng = n_groups();
  LLMC_CHECK(scales.size() == (group == 0 ? 1u : size_t(out * ng)), "scale count");
  LLMC_CHECK(!use_u || zeros.size() == scales.size(), "zero point count");
  LLMC_CHECK(0 <= r0 && r0 <= r1 && r1 <= out, "dequantize rows [", r0, ", ", r1, ") of ", out);
  if (r0 == r1) return;
  // Column -> group (index into a row's scales); all zero for per-channel / per-tensor.
  const bool grouped = group > 0 || !g_idx.empty();
  std::vector<int32_t> gmap;
  if (grouped) {
    gmap.resize(size_t(in));
    for (int64_t c = 0; c < in; ++c) gmap[size_t(c)] = int32_t(group_of(c));
  }
  float lut[256];
  if (kind == QKind::FP8)
    for (int v = 0; v < 256; ++v) lut[v] = fp8e4m3_to_f32(uint8_t(v));
  const int64_t row_stride = group == 0 ? 0 : ng;
  const size_t grain = std::max<size_t>(1, size_t(65536 / std::max<int64_t>(in, 1)));
  parallel_for(size_t(r0), size_t(r1), grain, [&](size_t lo, size_t hi) {
    for (size_t o = lo; o < hi; ++o) {
      const float* s = scales.data() + o * row_stride;
      float* d = dst + (o - size_t(r0)) * size_t(in);
      const size_t base = o * size_t(in);
      if (!grouped) {  // one scale (and zero) per row: a loop the compiler vectorizes
        const float s0 = s[0];
        if (kind == QKind::FP8) {
          for (int64_t i = 0; i < in; ++i) d[i] = lut[uint8_t(q8[base + i])] * s0;
        } else if (!use_u) {
          for (int64_t i = 0; i < in; ++i) d[i] = float(q8[base + i]) * s0;
        } else {
          const int32_t z0 = zeros[o * row_stride];
          for (int64_t i = 0; i < in; ++i) d[i] = float(int32_t(qu[base + i]) - z0) * s0;
        }
      } else if (kind == QKind::FP8) {
        for (int64_t i = 0; i < in; ++i) d[i] = lut[uint8_t(q8[base + i])] * s[gmap[i]];
      } else if (!use_u) {
        for (int64_t i = 0; i < in; ++i) d[i] = float(q8[base + i]) * s[gmap[i]];
      } else {
        const int32_t* z = zeros.data() + o * row_stride;
        for (int64_t i = 0; i < in; ++i) {
          const int32_t g = gmap[i];
          d[i] = float(int32_t(qu[base + i]) - z[g]) * s[g];
        }
      }
    }
  });
}

std::vector<float> QuantizedWeight::dequantize() const {
  dequantize_rows(0, 0, nullptr);  // checks the sizes before allocating
  std::vector<float> w(size_t(out * in));
  dequantize_rows(0, out, w.data());
  return w;
}

namespace {

constexpr float kFp8Max = 448.0f;
constexpr float kInt8Max = 127.0f;

float abs_max(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// Scale for an abs-max; an all-zero range (or a non-finite one, which fake-quantization
// cannot represent anyway) falls back to 1.
float scale_for(float amax, float qmax) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 1.0f;
  const float s = amax / qmax;
  return s > 0.0f ? s : 1.0f;
}

void fq_fp8(float* x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) x[i] = fp8e4m3_to_f32(f32_to_fp8e4m3(x[i] / scale)) * scale;
}

void fq_int8(float* x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) {
    float q = std::nearbyint(x[i] / scale);
    if (std::isnan(q)) q = 0.0f;
    q = std::min(127.0f, std::max(-128.0f, q));
    x[i] = q * scale;
  }
}

void per_row(float* x, int64_t rows, int64_t cols, float qmax, void (*fq)(float*, int64_t, float)) {
  const size_t grain = std::max<size_t>(1, size_t(16384 / std::max<int64_t>(cols, 1)));
  parallel_for(0, size_t(rows), grain, [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; ++r) {
      float* row = x + r * cols;
      fq(row, cols, scale_for(abs_max(row, cols), qmax));
    }
  });
}

void whole(float* x, int64_t rows, int64_t cols, float scale,
           void (*fq)(float*, int64_t, float)) {
  const size_t grain = std::max<size_t>(1, size_t(16384 / std::max<int64_t>(cols, 1)));
  parallel_for(0, size_t(rows), grain, [&](size_t lo, size_t hi) {
    fq(x + lo * cols, int64_t(hi - lo) * cols, scale);
  });
}

void check_static(float s, ActQuant act) {
  if (!std::isfinite(s) || s <= 0.0f)
    fail("activation quantization ", act_quant_name(act),
         ": static input scale must be finite and > 0, got ", s);
}

}  // namespace

void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  switch (act) {
    case ActQuant::None:
      return;
    case ActQuant::FP8StaticTensor:
      check_static(static_scale, act);
      whole(x, rows, cols, static_scale, fq_fp8);
      return;
    case ActQuant::FP8DynamicToken:
      per_row(x, rows, cols, kFp8Max, fq_fp8);
      return;
    case ActQuant::FP8DynamicTensor: {
      // abs-max over the whole tensor, reduced per chunk of rows.
      std::vector<float> part(size_t(rows), 0.0f);
      parallel_for(0, size_t(rows), 64, [&](size_t lo, size_t hi) {
        for (size_t r = lo; r < hi; ++r) part[r] = abs_max(x + r * cols, cols);
      });
      float amax = 0.0f;
      for (float m : part) amax = std::max(amax, m);
      whole(x, rows, cols, scale_for(amax, kFp8Max), fq_fp8);
      return;
    }
    case ActQuant::INT8DynamicToken:
      per_row(x, rows, cols, kInt8Max, fq_int8);
      return;
    case ActQuant::INT8StaticTensor:
      check_static(static_scale, act);
      whole(x, rows, cols, static_scale, fq_int8);
      return;
  }
  fail("unknown activation quantization kind ", int(act));
}

}  // namespace llmc
