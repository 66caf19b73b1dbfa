// backend/cpu/vmath.h — small inline vector-math helpers on GCC/Clang vector extensions (8 x fp32;
// AVX when the build targets it, pairs of SSE registers otherwise), with scalar tails.
// fast_exp has a relative error below 3e-7 on its domain; the vector and scalar versions perform
// the same operations.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace llmc::cpu {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// exp(x) for fp32: x = n·ln2 + r, |r| <= ln2/2, e^r by a degree-7 Taylor polynomial, times 2^n
// built in the exponent bits. Inputs are clamped to [-87, 88] (exp(-87) ~ 1.6e-38 stands in
// for smaller results). T is float or v8f.
template <typename T, typename I>
inline T exp_impl(T x, T lo, T hi) {
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const T n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const T r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  T p = r * (1.0f / 5040.0f) + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  I bits;
  if constexpr (sizeof(T) == 4) {
    bits = (int32_t(n) + 127) << 23;
  } else {
    bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  }
  T scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline float fast_exp(float x) { return exp_impl<float, int32_t>(x, -87.0f, 88.0f); }
inline v8f fast_exp(v8f x) { return exp_impl<v8f, v8i>(x, splat8(-87.0f), splat8(88.0f)); }

inline double sum_squares(const float* x, int64_t n) {
  v4d a0 = {}, a1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f v = load8(x + i);
    const v4d lo = __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), v4d);
    const v4d hi = __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), v4d);
    a0 += lo * lo;
    a1 += hi * hi;
  }
  double s = 0;
  for (; i < n; ++i) s += double(x[i]) * double(x[i]);
  const v4d a = a0 + a1;
  return s + ((a[0] + a[1]) + (a[2] + a[3]));
}

inline float max_value(const float* x, int64_t n) {
  float r = -INFINITY;
  int64_t i = 0;
  if (n >= 8) {
    v8f m = load8(x);
    for (i = 8; i + 8 <= n; i += 8) {
      const v8f v = load8(x + i);
      m = v > m ? v : m;
    }
    for (int l = 0; l < 8; ++l) r = std::max(r, m[l]);
  }
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}

// sum(exp(x - shift)): exp in fp32, accumulated in double.
inline double sum_exp_shifted(const float* x, int64_t n, float shift) {
  v4d a0 = {}, a1 = {};
  const v8f s8 = splat8(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f e = fast_exp(load8(x + i) - s8);
    a0 += __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1, 2, 3), v4d);
    a1 += __builtin_convertvector(__builtin_shufflevector(e, e, 4, 5, 6, 7), v4d);
  }
  double s = 0;
  for (; i < n; ++i) s += fast_exp(x[i] - shift);
  const v4d a = a0 + a1;
  return s + ((a[0] + a[1]) + (a[2] + a[3]));
}

// sum(exp(x - shift) * (x - y)) in double (the cross term of a KL divergence).
inline double sum_exp_shifted_times_diff(const float* x, const float* y, int64_t n, float shift) {
  v4d a0 = {}, a1 = {};
  const v8f s8 = splat8(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f xv = load8(x + i), yv = load8(y + i);
    const v8f e = fast_exp(xv - s8);
    const v4d e0 = __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1, 2, 3), v4d);
    const v4d e1 = __builtin_convertvector(__builtin_shufflevector(e, e, 4, 5, 6, 7), v4d);
    const v4d d0 = __builtin_convertvector(__builtin_shufflevector(xv, xv, 0, 1, 2, 3), v4d) -
                   __builtin_convertvector(__builtin_shufflevector(yv, yv, 0, 1, 2, 3), v4d);
    const v4d d1 = __builtin_convertvector(__builtin_shufflevector(xv, xv, 4, 5, 6, 7), v4d) -
                   __builtin_convertvector(__builtin_shufflevector(yv, yv, 4, 5, 6, 7), v4d);
    a0 += e0 * d0;
    a1 += e1 * d1;
  }
  double s = 0;
  for (; i < n; ++i) s += double(fast_exp(x[i] - shift)) * (double(x[i]) - double(y[i]));
  const v4d a = a0 + a1;
  return s + ((a[0] + a[1]) + (a[2] + a[3]));
}

// x <- softmax(x) over n values, fp32 (sum in double).
inline void softmax_inplace(float* x, int64_t n) {
  const float mx = max_value(x, n);
  const v8f m8 = splat8(mx);
  v4d a0 = {}, a1 = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f e = fast_exp(load8(x + i) - m8);
    store8(x + i, e);
    a0 += __builtin_convertvector(__builtin_shufflevector(e, e, 0, 1, 2, 3), v4d);
    a1 += __builtin_convertvector(__builtin_shufflevector(e, e, 4, 5, 6, 7), v4d);
  }
  double s = 0;
  for (; i < n; ++i) s += (x[i] = fast_exp(x[i] - mx));
  const v4d a = a0 + a1;
  s += (a[0] + a[1]) + (a[2] + a[3]);
  const float inv = float(1.0 / s);
  for (i = 0; i < n; ++i) x[i] *= inv;
}

// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]; out may alias gate or up.
inline void silu_mul_range(const float* gate, const float* up, float* out, int64_t n) {
  const v8f one = splat8(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f g = load8(gate + i);
    store8(out + i, g / (one + fast_exp(-g)) * load8(up + i));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + fast_exp(-gate[i])) * up[i];
}

}  // namespace llmc::cpu
