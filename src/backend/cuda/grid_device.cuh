// backend/cuda/grid_device.cuh — quant/grid.cpp's INT and fp8 e4m3 grid rules (and
// core/dtype.cpp's fp16/fp8 conversions) written for the device, bit for bit: the one device
// copy, shared by the GPTQ solver (gptq_solver.cu) and the search kernels (quant_search.cu).
// Internal to src/backend/cuda.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

namespace llmc::backend::cuda {

struct GridDev {
  int fp8, bits, symmetric, sym_full_range, fp16_scales, search_steps;
  double min_shrink;
};

// core/dtype.cpp f32_to_fp8e4m3, bit for bit (saturating, round half to even).
inline __device__ int32_t fp8_code(float f) {
  const uint32_t u = __float_as_uint(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return int32_t(sign | 0x7fu);
  if (a >= 0x43e00000u) return int32_t(sign | 0x7eu);
  if (a < 0x3c800000u) {
    const float q = rintf(__uint_as_float(a) * 512.0f);
    return int32_t(sign | uint32_t(q));
  }
  uint32_t r = a - (120u << 23);
  r += 0x7ffffu + ((r >> 20) & 1u);
  return int32_t(sign | (r >> 20));
}

// float8_e4m3fn byte to float (exact).
inline __device__ float fp8_value(int32_t c) {
  const uint32_t b = uint32_t(c) & 0xffu;
  const uint32_t e = (b >> 3) & 0xfu, m = b & 7u;
  float v;
  if (e == 15u && m == 7u) v = __uint_as_float(0x7fc00000u);
  else if (e == 0u) v = float(m) * (1.0f / 512.0f);
  else v = ldexpf(1.0f + float(m) * 0.125f, int(e) - 7);
  return (b & 0x80u) ? -v : v;
}

inline __device__ int32_t grid_code(const GridDev& g, float v, float s, int32_t z) {
  if (g.fp8) return fp8_code(v / s);
  const int32_t qmin = g.symmetric ? -(1 << (g.bits - 1)) : 0;
  const int32_t qmax = g.symmetric ? (1 << (g.bits - 1)) - 1 : (1 << g.bits) - 1;
  const float q = rintf(v / s) + float(z);
  return int32_t(fminf(fmaxf(q, float(qmin)), float(qmax)));
}

inline __device__ float grid_value(const GridDev& g, int32_t c, float s, int32_t z) {
  if (g.fp8) return fp8_value(c) * s;
  return float(c - z) * s;
}

// quant/grid.h grid_residual: v - value(c), rounded once.
inline __device__ float grid_residual(const GridDev& g, float v, int32_t c, float s, int32_t z) {
  if (g.fp8) return fmaf(-fp8_value(c), s, v);
  return fmaf(-float(c - z), s, v);
}

inline __device__ float round_scale(const GridDev& g, float s) {
  if (!(s > 0.0f) || !isfinite(s)) return 1.0f;
  if (!g.fp16_scales) return s;
  float r = __half2float(__float2half_rn(s));
  if (!(r > 0.0f)) r = 5.9604645e-08f;  // smallest fp16 subnormal
  if (!isfinite(r)) r = 65504.0f;
  return r;
}

inline __device__ void params_for_shrink(const GridDev& g, float lo, float hi, double shrink,
                                  float* scale, int32_t* zero) {
  if (g.symmetric) {
    const double amax = fmax(fabs(double(lo)), fabs(double(hi))) * shrink;
    const double d = g.sym_full_range ? double(1 << (g.bits - 1)) - 0.5
                                      : double((1 << (g.bits - 1)) - 1);
    *scale = amax > 0 ? round_scale(g, float(amax / d)) : 1.0f;
    *zero = 0;
    return;
  }
  const double l = fmin(double(lo), 0.0) * shrink, h = fmax(double(hi), 0.0) * shrink;
  const int32_t qmax = (1 << g.bits) - 1;
  if (!(h - l > 0)) {
    *scale = 1.0f;
    *zero = 0;
    return;
  }
  const float s = round_scale(g, float((h - l) / qmax));
  *scale = s;
  *zero = min(max(int32_t(rint(-l / double(s))), 0), qmax);
}

// Butterfly reductions: every lane ends with the same value.
inline __device__ double warp_sum(double v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

}  // namespace llmc::backend::cuda
