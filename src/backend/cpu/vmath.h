// backend/cpu/vmath.h — small inline vector-math helpers written so the compiler vectorizes them
// (independent lanes, no branches). fast_exp has a relative error below 2e-7 on its domain.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace llmc::cpu {

// exp(x) for fp32: x = n·ln2 + r, |r| <= ln2/2, e^r by a degree-7 Taylor polynomial, times 2^n
// built in the exponent bits. Inputs are clamped to [-87, 88] (exp(-87) ~ 1.6e-38 stands in
// for smaller results).
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline double sum_squares(const float* x, int64_t n) {
  constexpr int L = 8;
  double acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += double(x[i + l]) * double(x[i + l]);
  double s = 0;
  for (; i < n; ++i) s += double(x[i]) * double(x[i]);
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

inline float max_value(const float* x, int64_t n) {
  constexpr int L = 16;
  float m[L];
  for (int l = 0; l < L; ++l) m[l] = -INFINITY;
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) m[l] = std::max(m[l], x[i + l]);
  float r = -INFINITY;
  for (; i < n; ++i) r = std::max(r, x[i]);
  for (int l = 0; l < L; ++l) r = std::max(r, m[l]);
  return r;
}

// sum(exp(x - shift)), lanes in fp32, total in double.
inline double sum_exp_shifted(const float* x, int64_t n, float shift) {
  constexpr int L = 16;
  float acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += fast_exp(x[i + l] - shift);
  double s = 0;
  for (; i < n; ++i) s += fast_exp(x[i] - shift);
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

inline double sum_plain(const float* x, int64_t n) {
  constexpr int L = 16;
  float acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) acc[l] += x[i + l];
  double s = 0;
  for (; i < n; ++i) s += x[i];
  for (int l = 0; l < L; ++l) s += acc[l];
  return s;
}

// x <- softmax(x) over n values, fp32.
inline void softmax_inplace(float* x, int64_t n) {
  const float mx = max_value(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i] - mx);
  const float inv = float(1.0 / sum_plain(x, n));
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace llmc::cpu
