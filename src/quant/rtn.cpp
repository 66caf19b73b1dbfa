// quant/rtn.cpp — round-to-nearest quantizers (conventions in quant/rtn.h).
#include "quant/rtn.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threads.h"

namespace llmc {

void check_finite(const float* w, int64_t n, const std::string& name) {
  const int64_t i = first_non_finite(w, size_t(n));
  if (i >= 0)
    fail(name, ": weight element ", i, " is ", std::isnan(w[i]) ? "NaN" : "Inf",
         " (non-finite weights cannot be quantized)");
}

namespace {

// Scale/zero for a range [lo, hi] (lo <= 0 <= hi for asymmetric).
void params_for_range(float lo, float hi, int bits, bool sym, float* scale, int32_t* zero) {
  if (sym) {
    const float amax = std::max(std::fabs(lo), std::fabs(hi));
    const float s = amax / float((1 << (bits - 1)) - 1);
    *scale = (s > 0.0f && std::isfinite(s)) ? s : 1.0f;
    *zero = 0;
    return;
  }
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  const int32_t qmax = (1 << bits) - 1;
  float s = (hi - lo) / float(qmax);
  if (!(s > 0.0f) || !std::isfinite(s)) {
    *scale = 1.0f;
    *zero = 0;
    return;
  }
  *scale = s;
  *zero = std::clamp(int32_t(std::nearbyint(-lo / s)), 0, qmax);
}

double group_sq_error(const float* v, int64_t n, float s, int32_t z, int bits, bool sym) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t q = int_quantize_value(v[i], s, z, bits, sym);
    const float d = float(q - z) * s - v[i];
    e += double(d) * d;
  }
  return e;
}

}  // namespace

void int_group_params(const float* v, int64_t n, int bits, bool symmetric, float* scale,
                      int32_t* zero) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  params_for_range(lo, hi, bits, symmetric, scale, zero);
}

QuantizedWeight quantize_int_rtn(const float* w, int64_t out, int64_t in, int bits, int64_t group,
                                 bool symmetric, bool clip_search) {
  LLMC_CHECK(bits >= 2 && bits <= 8, "int bits ", bits);
  LLMC_CHECK(group == -1 || group > 0, "int group ", group);
  QuantizedWeight qw;
  qw.kind = QKind::INT;
  qw.bits = bits;
  qw.symmetric = symmetric;
  qw.out = out;
  qw.in = in;
  qw.group = group;
  const int64_t gs = group > 0 ? group : in;
  const int64_t ng = (in + gs - 1) / gs;
  qw.scales.assign(size_t(out * ng), 1.0f);
  if (symmetric) assign_zeroed(qw.q8, size_t(out * in));
  else {
    assign_zeroed(qw.qu, size_t(out * in));
    qw.zeros.assign(size_t(out * ng), 0);
  }
  parallel_for(0, size_t(out), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < ng; ++g) {
        const float* v = w + r * in + g * gs;
        const int64_t n = std::min(gs, in - g * gs);
        float lo = 0.0f, hi = 0.0f;
        for (int64_t i = 0; i < n; ++i) {
          lo = std::min(lo, v[i]);
          hi = std::max(hi, v[i]);
        }
        float s;
        int32_t z;
        params_for_range(lo, hi, bits, symmetric, &s, &z);
        if (clip_search && (hi > lo)) {
          double best = group_sq_error(v, n, s, z, bits, symmetric);
          for (int k = 1; k <= 10; ++k) {
            const float f = 1.0f - 0.05f * float(k);
            float s2;
            int32_t z2;
            params_for_range(lo * f, hi * f, bits, symmetric, &s2, &z2);
            const double e = group_sq_error(v, n, s2, z2, bits, symmetric);
            if (e < best) {
              best = e;
              s = s2;
              z = z2;
            }
          }
        }
        qw.scales[r * ng + g] = s;
        if (!symmetric) qw.zeros[r * ng + g] = z;
        float qmin, qmax;
        int_code_range(bits, symmetric, &qmin, &qmax);
        const float zf = float(z);
        if (symmetric) {
          int8_t* dst = qw.q8.data() + r * in + g * gs;
          for (int64_t i = 0; i < n; ++i) dst[i] = int8_t(int_round_code(v[i], s, zf, qmin, qmax));
        } else {
          uint8_t* dst = qw.qu.data() + r * in + g * gs;
          for (int64_t i = 0; i < n; ++i) dst[i] = uint8_t(int_round_code(v[i], s, zf, qmin, qmax));
        }
      }
    }
  });
  return qw;
}

float abs_max(const float* w, size_t n) {
  constexpr size_t kChunk = size_t(1) << 16;
  const size_t nc = (n + kChunk - 1) / kChunk;
  std::vector<float> m(nc, 0.0f);
  parallel_for(0, nc, 1, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      float x = 0.0f;
      for (size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) x = std::max(x, std::fabs(w[i]));
      m[c] = x;
    }
  });
  float x = 0.0f;
  for (float y : m) x = std::max(x, y);
  return x;
}

std::vector<float> fp8_rtn_scales(const float* w, int64_t out, int64_t in, int64_t group,
                                  float tensor_scale) {
  LLMC_CHECK(group == 0 || group == -1, "fp8 group ", group);
  auto scale_of = [](float amax) {
    const float s = amax / 448.0f;
    return (s > 0.0f && std::isfinite(s)) ? s : 1.0f;
  };
  if (group == 0)
    return {tensor_scale > 0.0f ? tensor_scale : scale_of(abs_max(w, size_t(out * in)))};
  std::vector<float> s(size_t(out), 1.0f);
  parallel_for(0, size_t(out), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      float amax = 0.0f;
      for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(w[r * in + i]));
      s[r] = scale_of(amax);
    }
  });
  return s;
}

QuantizedWeight quantize_fp8_rtn(const float* w, int64_t out, int64_t in, int64_t group,
                                 float tensor_scale) {
  LLMC_CHECK(group == 0 || group == -1, "fp8 group ", group);
  QuantizedWeight qw;
  qw.kind = QKind::FP8;
  qw.bits = 8;
  qw.symmetric = true;
  qw.out = out;
  qw.in = in;
  qw.group = group;
  assign_zeroed(qw.q8, size_t(out * in));
  qw.scales = fp8_rtn_scales(w, out, in, group, tensor_scale);
  parallel_for(0, size_t(out), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float s = qw.scales[group == 0 ? 0 : r];
      for (int64_t i = 0; i < in; ++i)
        qw.q8[r * in + i] = int8_t(f32_to_fp8e4m3(w[r * in + i] / s));
    }
  });
  return qw;
}

}  // namespace llmc
