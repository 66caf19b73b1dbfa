// quant/grid.cpp — the INT and fp8 e4m3 grids of the solvers (quant/grid.h).
#include "quant/grid.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/threads.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

float round_scale(const QuantGrid& g, float s) {
  if (!(s > 0.0f) || !std::isfinite(s)) return 1.0f;
  if (!g.fp16_scales) return s;
  float r = f16_to_f32(f32_to_f16(s));
  if (!(r > 0.0f)) r = 5.9604645e-08f;  // smallest fp16 subnormal
  if (!std::isfinite(r)) r = 65504.0f;
  return r;
}

void params_for_shrink(const QuantGrid& g, float lo, float hi, double shrink, float* scale,
                       int32_t* zero) {
  if (g.symmetric) {
    const double amax = std::max(std::fabs(double(lo)), std::fabs(double(hi))) * shrink;
    const double d = g.sym_full_range ? double(1 << (g.bits - 1)) - 0.5
                                      : double((1 << (g.bits - 1)) - 1);
    *scale = amax > 0 ? round_scale(g, float(amax / d)) : 1.0f;
    *zero = 0;
    return;
  }
  const double l = std::min(double(lo), 0.0) * shrink, h = std::max(double(hi), 0.0) * shrink;
  const int32_t qmax = (1 << g.bits) - 1;
  if (!(h - l > 0)) {
    *scale = 1.0f;
    *zero = 0;
    return;
  }
  const float s = round_scale(g, float((h - l) / qmax));
  *scale = s;
  *zero = std::clamp(int32_t(std::nearbyint(-l / double(s))), 0, qmax);
}

void check_int(const QuantGrid& g) {
  LLMC_CHECK(g.kind == QKind::INT, "group parameters of an fp8 grid are given by the caller");
  LLMC_CHECK(g.bits >= 2 && g.bits <= 8, "grid bits ", g.bits);
}

}  // namespace

QuantGrid fp8_e4m3_grid() {
  QuantGrid g;
  g.kind = QKind::FP8;
  g.bits = 8;
  g.symmetric = true;
  g.fp16_scales = false;
  g.search_steps = 0;
  return g;
}

void group_params_shrink(const QuantGrid& g, const float* v, int64_t n, double shrink,
                         float* scale, int32_t* zero) {
  check_int(g);
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  params_for_shrink(g, lo, hi, shrink, scale, zero);
}

double group_error(const QuantGrid& g, const float* v, int64_t n, const float* imp, float scale,
                   int32_t zero) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t q = grid_code(g, v[i], scale, zero);
    const double d = double(grid_value(g, q, scale, zero)) - double(v[i]);
    e += (imp ? double(imp[i]) : 1.0) * d * d;
  }
  return e;
}

void group_params(const QuantGrid& g, const float* v, int64_t n, const float* imp, float* scale,
                  int32_t* zero) {
  check_int(g);
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, v[i]);
    hi = std::max(hi, v[i]);
  }
  params_for_shrink(g, lo, hi, 1.0, scale, zero);
  if (g.search_steps <= 0 || !(hi > lo)) return;
  double best = group_error(g, v, n, imp, *scale, *zero);
  const double step = (1.0 - g.min_shrink) / g.search_steps;
  for (int k = 1; k <= g.search_steps; ++k) {
    float s;
    int32_t z;
    params_for_shrink(g, lo, hi, 1.0 - step * k, &s, &z);
    const double e = group_error(g, v, n, imp, s, z);
    if (e < best) {
      best = e;
      *scale = s;
      *zero = z;
    }
  }
}

QuantizedWeight grid_qweight(int64_t out, int64_t in, int64_t group, const QuantGrid& g) {
  LLMC_CHECK(group == -1 || group > 0 || (group == 0 && g.kind == QKind::FP8), "grid group ",
             group);
  QuantizedWeight qw;
  qw.kind = g.kind;
  qw.bits = g.bits;
  qw.symmetric = g.symmetric;
  qw.out = out;
  qw.in = in;
  qw.group = group;
  const int64_t ng = qw.n_groups();
  qw.scales.assign(size_t(group == 0 ? 1 : out * ng), 1.0f);
  if (g.kind == QKind::FP8 || g.symmetric) {
    assign_zeroed(qw.q8, size_t(out * in));
  } else {
    assign_zeroed(qw.qu, size_t(out * in));
    qw.zeros.assign(size_t(out * ng), 0);
  }
  return qw;
}

void set_grid_code(QuantizedWeight& qw, size_t k, int32_t c) {
  if (qw.kind == QKind::FP8) qw.q8[k] = int8_t(uint8_t(c));
  else if (qw.symmetric) qw.q8[k] = int8_t(c);
  else qw.qu[k] = uint8_t(c);
}

QuantizedWeight quantize_grid_rtn(const float* w, int64_t out, int64_t in, int64_t group,
                                  const QuantGrid& g, const float* imp) {
  LLMC_CHECK(group == -1 || group > 0, "grid group ", group);
  check_int(g);
  QuantizedWeight qw = grid_qweight(out, in, group, g);
  const int64_t gs = group > 0 ? group : in;
  const int64_t ng = qw.n_groups();
  const size_t grain = std::max<size_t>(1, size_t(16384 / std::max<int64_t>(in, 1)));
  parallel_for(0, size_t(out), grain, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t c0 = gi * gs, n = std::min(gs, in - c0);
        const float* v = w + r * in + c0;
        float s;
        int32_t z;
        group_params(g, v, n, imp ? imp + c0 : nullptr, &s, &z);
        qw.scales[r * ng + gi] = s;
        if (!g.symmetric) qw.zeros[r * ng + gi] = z;
        for (int64_t i = 0; i < n; ++i) set_grid_code(qw, r * in + c0 + i, grid_code(g, v[i], s, z));
      }
    }
  });
  return qw;
}

QuantizedWeight quantize_grid_fixed(const float* w, int64_t out, int64_t in, int64_t group,
                                    const QuantGrid& g, const std::vector<float>& scales,
                                    const std::vector<int32_t>& zeros) {
  QuantizedWeight qw = grid_qweight(out, in, group, g);
  LLMC_CHECK(scales.size() == qw.scales.size(), "grid scales ", scales.size(), " for ",
             qw.scales.size());
  LLMC_CHECK(zeros.size() == qw.zeros.size(), "grid zeros ", zeros.size(), " for ",
             qw.zeros.size());
  qw.scales = scales;
  qw.zeros = zeros;
  const int64_t gs = group > 0 ? group : in, ng = group == 0 ? 0 : qw.n_groups();
  parallel_for(0, size_t(out), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < in; ++c) {
        const size_t p = size_t(int64_t(r) * ng + c / gs);
        const float s = qw.scales[p];
        const int32_t z = qw.zeros.empty() ? 0 : qw.zeros[p];
        set_grid_code(qw, r * in + c, grid_code(g, w[r * in + c], s, z));
      }
  });
  return qw;
}

}  // namespace llmc
