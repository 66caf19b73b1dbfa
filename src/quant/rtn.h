// quant/rtn.h — round-to-nearest quantizers of a dense fp32 weight [out, in] into the canonical
// QuantizedWeight (core/qweight.h). Used by the simple methods, as GPTQ's fallback and as the
// per-group parameter rule of the solvers.
//
// Conventions:
//  * INT symmetric:  s = absmax / (2^(b-1) - 1), q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)
//    (int8: absmax/127, so absmax is representable and nothing clips).
//  * INT asymmetric: range [min(w, 0), max(w, 0)], s = (max - min) / (2^b - 1),
//    z = clamp(round(-min / s), 0, 2^b - 1), q = clamp(round(w / s) + z, 0, 2^b - 1).
//  * FP8 e4m3: s = absmax / 448 per tensor (group 0) or per output channel (group -1).
//  * A group (or row, or tensor) that is all zero gets s = 1 (never a division by zero).
//  * `clip_search` (INT only): for each group, scale the range by the shrink factor in
//    {1, 0.95, ..., 0.5} minimizing the group's squared rounding error (ties: least shrink).
//  * Rounding is to nearest, ties to even (std::nearbyint in the default FE mode).
//  * check_finite throws llmc::Error naming `name` at the first NaN/Inf.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "core/qweight.h"

namespace llmc {

void check_finite(const float* w, int64_t n, const std::string& name);

QuantizedWeight quantize_int_rtn(const float* w, int64_t out, int64_t in, int bits, int64_t group,
                                 bool symmetric, bool clip_search = false);
// max |w_i| over w[0, n) (in parallel; exact, so independent of the thread count).
float abs_max(const float* w, size_t n);
// The scales of quantize_fp8_rtn: group 0 {tensor_scale when > 0, else absmax/448}; group -1
// absmax/448 of each row. A zero (or non-finite) scale becomes 1.
std::vector<float> fp8_rtn_scales(const float* w, int64_t out, int64_t in, int64_t group,
                                  float tensor_scale = 0.0f);
// group 0: per tensor (scale = tensor_scale when > 0, else absmax/448); -1: per channel.
QuantizedWeight quantize_fp8_rtn(const float* w, int64_t out, int64_t in, int64_t group,
                                 float tensor_scale = 0.0f);

// Scale (and zero for asymmetric) of one group of n values with the conventions above.
void int_group_params(const float* v, int64_t n, int bits, bool symmetric, float* scale,
                      int32_t* zero);
// The code range of the INT grid: [-2^(b-1), 2^(b-1) - 1] (symmetric) or [0, 2^b - 1].
inline void int_code_range(int bits, bool symmetric, float* qmin, float* qmax) {
  *qmin = symmetric ? -float(1 << (bits - 1)) : 0.0f;
  *qmax = symmetric ? float((1 << (bits - 1)) - 1) : float((1 << bits) - 1);
}
// clamp(rint(v / scale) + zero, qmin, qmax): the one rounding rule (inline, with the range
// hoisted by the caller, so row loops vectorize).
inline int32_t int_round_code(float v, float scale, float zero, float qmin, float qmax) {
  return int32_t(std::clamp(std::nearbyint(v / scale) + zero, qmin, qmax));
}
// One value quantized with (scale, zero): returns the integer code.
inline int32_t int_quantize_value(float v, float scale, int32_t zero, int bits, bool symmetric) {
  float qmin, qmax;
  int_code_range(bits, symmetric, &qmin, &qmax);
  return int_round_code(v, scale, float(zero), qmin, qmax);
}

}  // namespace llmc
