// quant/grid.h — the quantization grids the solvers round onto: GPTQ (quant/gptq.h), AWQ
// (quant/awq.h) and fp8's GPTQ rounding (quant/method_fp8.cpp) all use these, and the CUDA
// solver (backend/cuda/gptq_solver.cu) mirrors them on the device.
//
// Grid kinds (QuantGrid::kind)
//  * INT (bits 2..8): the group parameter rules below; codes via quant/rtn.h int_quantize_value
//    (round half to even, clamp); value float(q - z) · s (z = 0 when symmetric), exactly as
//    QuantizedWeight::dequantize.
//  * FP8 (e4m3): code = f32_to_fp8e4m3(v / s) (saturating, round half to even), value
//    fp8e4m3_to_f32(code) · s. Its scales are chosen by the caller (per tensor or per channel,
//    quant/rtn.h quantize_fp8_rtn); group_params does not apply.
//
// Group parameters (INT: group_params)
//  * Asymmetric: range [min(v, 0), max(v, 0)] · shrink, s = (hi - lo) / (2^b - 1),
//    z = clamp(round(-lo / s), 0, 2^b - 1).
//  * Symmetric: s = amax · shrink / d with d = 2^(b-1) - 0.5 when `sym_full_range` (GPTQ's
//    grid: the code -2^(b-1) is used, +amax rounds to 2^(b-1) - 1) or d = 2^(b-1) - 1 (llmc's
//    RTN convention, quant/rtn.h).
//  * search_steps > 0: shrink ∈ {1, 1 - δ, ..., min_shrink} (δ = (1 - min_shrink) / steps) is
//    chosen per group minimizing Σ imp_i (v_i - deq_i)² (imp = 1 when not given; summed in
//    fp64); ties keep the least shrink. search_steps == 0: shrink = 1.
//  * Scales are rounded to fp16 when `fp16_scales` (the gptq/awq layouts store fp16), BEFORE
//    the codes are chosen, so stored scales reproduce the quantizer's weights bit for bit.
//    A zero range gives s = 1; an fp16 underflow gives the smallest fp16 subnormal, an
//    overflow 65504.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "quant/qweight.h"
#include "quant/rtn.h"

namespace llmc {

struct QuantGrid {
  QKind kind = QKind::INT;
  int bits = 4;                 // INT 2..8; FP8: 8
  bool symmetric = true;        // FP8: true (no zero point)
  bool sym_full_range = true;
  bool fp16_scales = true;
  int search_steps = 0;
  double min_shrink = 0.5;
};

// The fp8 e4m3 grid (kind FP8, bits 8, symmetric, fp32 scales, no search).
QuantGrid fp8_e4m3_grid();

// One value to its code with (scale, zero), and a code back to its value (see above).
inline int32_t grid_code(const QuantGrid& g, float v, float scale, int32_t zero) {
  if (g.kind == QKind::FP8) return int32_t(f32_to_fp8e4m3(v / scale));
  return int_quantize_value(v, scale, zero, g.bits, g.symmetric);
}
inline float grid_value(const QuantGrid& g, int32_t code, float scale, int32_t zero) {
  if (g.kind == QKind::FP8) return fp8e4m3_to_f32(uint8_t(code)) * scale;
  return float(code - zero) * scale;
}
// v - grid_value(code): one expression per kind, so that where the target fuses multiply-add
// the residual is fma(-value/scale, scale, v) (rounded once), as the solvers have always had it;
// the CUDA solver computes exactly that.
inline float grid_residual(const QuantGrid& g, float v, int32_t code, float scale, int32_t zero) {
  if (g.kind == QKind::FP8) return v - fp8e4m3_to_f32(uint8_t(code)) * scale;
  return v - float(code - zero) * scale;
}

// Scale and zero (0 for symmetric) of one group of n values; imp may be null. INT only.
void group_params(const QuantGrid& g, const float* v, int64_t n, const float* imp, float* scale,
                  int32_t* zero);
// Parameters of one group with its range scaled by `shrink` (no search). INT only.
void group_params_shrink(const QuantGrid& g, const float* v, int64_t n, double shrink,
                         float* scale, int32_t* zero);
// Squared (importance-weighted) rounding error of one group with (scale, zero), in fp64.
double group_error(const QuantGrid& g, const float* v, int64_t n, const float* imp, float scale,
                   int32_t zero);

// A QuantizedWeight of the grid's kind for w [out, in] with all codes 0 and scales 1:
// scales/zeros [out, n_groups] (group > 0 or -1) or one scale (group 0, FP8 only).
QuantizedWeight grid_qweight(int64_t out, int64_t in, int64_t group, const QuantGrid& g);
// Stores code c at flat index k (q8 for INT symmetric and FP8 bytes, qu for INT asymmetric).
void set_grid_code(QuantizedWeight& qw, size_t k, int32_t c);

// Plain round-to-nearest of w [out, in] on an INT grid (the GPTQ fallback and the AWQ
// quantizer). imp (size in, may be null) weights the per-group search.
QuantizedWeight quantize_grid_rtn(const float* w, int64_t out, int64_t in, int64_t group,
                                  const QuantGrid& g, const float* imp = nullptr);
// Round-to-nearest with the parameters given: scales (and zeros for INT asymmetric) laid out as
// grid_qweight's. Any kind; the fp8 GPTQ fallback.
QuantizedWeight quantize_grid_fixed(const float* w, int64_t out, int64_t in, int64_t group,
                                    const QuantGrid& g, const std::vector<float>& scales,
                                    const std::vector<int32_t>& zeros = {});

}  // namespace llmc
