// formats/ggml_types.cpp — ggml block layouts: decoders bit-exact to ggml's dequantize_row_*,
// encoders llmc's own weighted scale search (contracts in ggml_types.h).
#include "formats/ggml_types.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <strings.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"

namespace llmc {
namespace {

constexpr int QK_K = 256;

inline float h2f(const uint8_t* p) { uint16_t h; std::memcpy(&h, p, 2); return f16_to_f32(h); }
inline void f2h(uint8_t* p, float f) { const uint16_t h = f32_to_f16(f); std::memcpy(p, &h, 2); }
// The value the f16 field will hold.
inline float rt16(float f) { return f16_to_f32(f32_to_f16(f)); }
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
inline int nearest(float f) { return int(std::lrintf(f)); }
inline float wt(const float* w, int i) { return w ? w[i] : 1.0f; }

// Code packers (one per layout; the encoders and GPTQ's set_codes share them) and the 2-bit /
// K-nibble packings several layouts use.
void codes_q8_0(uint8_t* o, const int* c);
void codes_q4_0(uint8_t* o, const int* c);
void codes_q4_1(uint8_t* o, const int* c);
void codes_q5_0(uint8_t* o, const int* c);
void codes_q5_1(uint8_t* o, const int* c);
void codes_q2_k(uint8_t* o, const int* c);
void codes_q3_k(uint8_t* o, const int* c);
void codes_q4_k(uint8_t* o, const int* c);
void codes_q5_k(uint8_t* o, const int* c);
void codes_q6_k(uint8_t* o, const int* c);

// ---- scale searches (shared by every encoder) ----

// x ≈ d*q, q integer in [lo, hi]. Tries scales mapping the extreme value onto either end of the
// range (and nearby), refits d by weighted least squares for each rounding, keeps the best.
float search_sym(const float* x, const float* w, int n, int lo, int hi, int* L) {
  float amax = 0, xm = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); xm = x[i]; }
  if (amax == 0) { std::fill(L, L + n, 0); return 0; }
  float best_err = INFINITY, best_d = 0;
  int tmp[QK_K];
  for (int side = 0; side < 2; ++side) {
    const float end = side == 0 ? float(lo) : float(hi);  // xm -> lo (negative d) or hi
    for (int k = -6; k <= 6; ++k) {
      const float target = end * (1.0f + 0.04f * float(k)) + (side == 0 ? 0.0f : 0.0f);
      if (std::fabs(target) < 0.5f) continue;
      const float d0 = xm / target;
      double sxl = 0, sll = 0;
      for (int i = 0; i < n; ++i) {
        tmp[i] = clampi(nearest(x[i] / d0), lo, hi);
        sxl += double(wt(w, i)) * x[i] * tmp[i];
        sll += double(wt(w, i)) * tmp[i] * tmp[i];
      }
      if (sll <= 0) continue;
      const float d = float(sxl / sll);
      double err = 0;
      for (int i = 0; i < n; ++i) { const double e = x[i] - d * tmp[i]; err += wt(w, i) * e * e; }
      if (err < best_err) { best_err = float(err); best_d = d; std::copy(tmp, tmp + n, L); }
    }
  }
  return best_d;
}

// x ≈ s*q + o, q integer in [0, hi], s >= 0; with `neg_offset` o is kept <= 0 (K-quant mins).
// Returns s and writes o.
float search_affine(const float* x, const float* w, int n, int hi, bool neg_offset, float* offset, int* L) {
  float mn = x[0], mx = x[0];
  for (int i = 1; i < n; ++i) { mn = std::min(mn, x[i]); mx = std::max(mx, x[i]); }
  if (neg_offset) mn = std::min(mn, 0.0f);
  if (mx <= mn) { std::fill(L, L + n, 0); *offset = mn; return 0; }
  float best_err = INFINITY, best_s = (mx - mn) / float(hi), best_o = mn;
  int tmp[QK_K];
  double sw = 0;
  for (int i = 0; i < n; ++i) sw += wt(w, i);
  for (int k = -4; k <= 10; ++k) {
    const float is = (float(hi) + 0.1f * float(k)) / (mx - mn);
    double sl = 0, sll = 0, sx = 0, sxl = 0;
    for (int i = 0; i < n; ++i) {
      tmp[i] = clampi(nearest(is * (x[i] - mn)), 0, hi);
      const double wi = wt(w, i);
      sl += wi * tmp[i]; sll += wi * tmp[i] * tmp[i]; sx += wi * x[i]; sxl += wi * x[i] * tmp[i];
    }
    const double det = sw * sll - sl * sl;
    double s, o;
    if (det > 0) { s = (sw * sxl - sl * sx) / det; o = (sll * sx - sl * sxl) / det; }
    else continue;
    if (neg_offset && o > 0) { o = 0; s = sll > 0 ? sxl / sll : 0; }
    if (s < 0) continue;
    double err = 0;
    for (int i = 0; i < n; ++i) { const double e = x[i] - (s * tmp[i] + o); err += wt(w, i) * e * e; }
    if (err < best_err) { best_err = float(err); best_s = float(s); best_o = float(o); std::copy(tmp, tmp + n, L); }
  }
  if (best_err == INFINITY)
    for (int i = 0; i < n; ++i) L[i] = clampi(nearest((x[i] - mn) / best_s), 0, hi);
  *offset = best_o;
  return best_s;
}

// Final codes for a fixed (stored) scale/offset.
void requant(const float* x, int n, float d, float o, int lo, int hi, int* L) {
  for (int i = 0; i < n; ++i) L[i] = d != 0 ? clampi(nearest((x[i] - o) / d), lo, hi) : clampi(0, lo, hi);
}

// ---- float types ----
void enc_f32(const float* x, const float*, int64_t n, uint8_t* o) { std::memcpy(o, x, size_t(n) * 4); }
void dec_f32(const uint8_t* in, int64_t n, float* y) { std::memcpy(y, in, size_t(n) * 4); }
void enc_f16(const float* x, const float*, int64_t n, uint8_t* o) { convert(DType::F32, x, DType::F16, o, size_t(n)); }
void dec_f16(const uint8_t* in, int64_t n, float* y) { to_f32(DType::F16, in, y, size_t(n)); }
void enc_bf16(const float* x, const float*, int64_t n, uint8_t* o) { convert(DType::F32, x, DType::BF16, o, size_t(n)); }
void dec_bf16(const uint8_t* in, int64_t n, float* y) { to_f32(DType::BF16, in, y, size_t(n)); }

// ---- Q8_0: {f16 d; int8 qs[32]} ----
void enc_q8_0(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[32];
  for (int64_t b = 0; b < n / 32; ++b, x += 32, o += 34, w = w ? w + 32 : w) {
    const float d = rt16(search_sym(x, w, 32, -127, 127, L));
    requant(x, 32, d, 0, -127, 127, L);
    f2h(o, d);
    for (int& l : L) l += 128;
    codes_q8_0(o, L);
  }
}
void codes_q8_0(uint8_t* o, const int* c) {
  for (int i = 0; i < 32; ++i) o[2 + i] = uint8_t(int8_t(c[i] - 128));
}
void grid_q8_0(const uint8_t* in, float* a, float* b) {
  const float d = h2f(in);
  std::fill(a, a + 32, d);
  std::fill(b, b + 32, -128.0f * d);
}
void dec_q8_0(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 34, y += 32) {
    const float d = h2f(in);
    for (int i = 0; i < 32; ++i) y[i] = d * float(int8_t(in[2 + i]));
  }
}

// ---- Q4_0 / Q4_1 / Q5_0 / Q5_1: nibble j holds x[j] (low) and x[j+16] (high) ----
void pack_nibbles(const int* L, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = uint8_t((L[j] & 15) | ((L[j + 16] & 15) << 4));
}
void pack_qh(const int* L, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < 32; ++j) h |= uint32_t((L[j] >> 4) & 1) << j;
  std::memcpy(qh, &h, 4);
}
int nib(const uint8_t* qs, int i) { return i < 16 ? qs[i] & 15 : qs[i - 16] >> 4; }
int hbit(const uint8_t* qh, int i) { uint32_t h; std::memcpy(&h, qh, 4); return int((h >> i) & 1); }

void enc_q4_0(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[32];
  for (int64_t b = 0; b < n / 32; ++b, x += 32, o += 18, w = w ? w + 32 : w) {
    const float d = rt16(search_sym(x, w, 32, -8, 7, L));
    requant(x, 32, d, 0, -8, 7, L);
    for (int& l : L) l += 8;
    f2h(o, d);
    codes_q4_0(o, L);
  }
}
void codes_q4_0(uint8_t* o, const int* c) { pack_nibbles(c, o + 2); }
void grid_q4_0(const uint8_t* in, float* a, float* b) {
  const float d = h2f(in);
  std::fill(a, a + 32, d);
  std::fill(b, b + 32, -8.0f * d);
}
void dec_q4_0(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 18, y += 32) {
    const float d = h2f(in);
    for (int i = 0; i < 32; ++i) y[i] = d * float(nib(in + 2, i) - 8);
  }
}
void enc_q4_1(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[32];
  for (int64_t b = 0; b < n / 32; ++b, x += 32, o += 20, w = w ? w + 32 : w) {
    float m;
    const float d = rt16(search_affine(x, w, 32, 15, false, &m, L));
    m = rt16(m);
    requant(x, 32, d, m, 0, 15, L);
    f2h(o, d);
    f2h(o + 2, m);
    codes_q4_1(o, L);
  }
}
void codes_q4_1(uint8_t* o, const int* c) { pack_nibbles(c, o + 4); }
void grid_q4_1(const uint8_t* in, float* a, float* b) {
  std::fill(a, a + 32, h2f(in));
  std::fill(b, b + 32, h2f(in + 2));
}
void dec_q4_1(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 20, y += 32) {
    const float d = h2f(in), m = h2f(in + 2);
    for (int i = 0; i < 32; ++i) y[i] = d * float(nib(in + 4, i)) + m;
  }
}
void enc_q5_0(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[32];
  for (int64_t b = 0; b < n / 32; ++b, x += 32, o += 22, w = w ? w + 32 : w) {
    const float d = rt16(search_sym(x, w, 32, -16, 15, L));
    requant(x, 32, d, 0, -16, 15, L);
    for (int& l : L) l += 16;
    f2h(o, d);
    codes_q5_0(o, L);
  }
}
void codes_q5_0(uint8_t* o, const int* c) {
  pack_qh(c, o + 2);
  pack_nibbles(c, o + 6);
}
void grid_q5_0(const uint8_t* in, float* a, float* b) {
  const float d = h2f(in);
  std::fill(a, a + 32, d);
  std::fill(b, b + 32, -16.0f * d);
}
void dec_q5_0(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 22, y += 32) {
    const float d = h2f(in);
    for (int i = 0; i < 32; ++i) y[i] = d * float((nib(in + 6, i) | (hbit(in + 2, i) << 4)) - 16);
  }
}
void enc_q5_1(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[32];
  for (int64_t b = 0; b < n / 32; ++b, x += 32, o += 24, w = w ? w + 32 : w) {
    float m;
    const float d = rt16(search_affine(x, w, 32, 31, false, &m, L));
    m = rt16(m);
    requant(x, 32, d, m, 0, 31, L);
    f2h(o, d);
    f2h(o + 2, m);
    codes_q5_1(o, L);
  }
}
void codes_q5_1(uint8_t* o, const int* c) {
  pack_qh(c, o + 4);
  pack_nibbles(c, o + 8);
}
void grid_q5_1(const uint8_t* in, float* a, float* b) {
  std::fill(a, a + 32, h2f(in));
  std::fill(b, b + 32, h2f(in + 2));
}
void dec_q5_1(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / 32; ++b, in += 24, y += 32) {
    const float d = h2f(in), m = h2f(in + 2);
    for (int i = 0; i < 32; ++i) y[i] = d * float(nib(in + 8, i) | (hbit(in + 4, i) << 4)) + m;
  }
}

// ---- K-quants with mins (Q2_K, Q4_K, Q5_K): sub-block (scale, min) search, then 2-level
// quantization of the scales and mins against f16 d and dmin. ----
struct ScaleMin {
  int ls[16], lm[16];
  float d, dmin;
};
// nsub sub-blocks of `sub` values; codes 0..hi; scales/mins quantized to 0..smax.
ScaleMin kquant_scale_min(const float* x, const float* w, int nsub, int sub, int hi, int smax, int* L) {
  float sc[16], mn[16], best_sc = 0, best_mn = 0;
  for (int j = 0; j < nsub; ++j) {
    float off;
    sc[j] = search_affine(x + j * sub, w ? w + j * sub : nullptr, sub, hi, true, &off, L + j * sub);
    mn[j] = -off;
    best_sc = std::max(best_sc, sc[j]);
    best_mn = std::max(best_mn, mn[j]);
  }
  ScaleMin r;
  r.d = rt16(best_sc / float(smax));
  r.dmin = rt16(best_mn / float(smax));
  for (int j = 0; j < nsub; ++j) {
    r.ls[j] = r.d > 0 ? clampi(nearest(sc[j] / r.d), 0, smax) : 0;
    r.lm[j] = r.dmin > 0 ? clampi(nearest(mn[j] / r.dmin), 0, smax) : 0;
    requant(x + j * sub, sub, r.d * float(r.ls[j]), -r.dmin * float(r.lm[j]), 0, hi, L + j * sub);
  }
  return r;
}

// Q4_K/Q5_K 12-byte scale packing (get_scale_min_k4 in ggml).
void pack_k4(const int* ls, const int* lm, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) { s[j] = uint8_t(ls[j]); s[j + 4] = uint8_t(lm[j]); }
    else {
      s[j + 4] = uint8_t((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      s[j - 4] |= uint8_t((ls[j] >> 4) << 6);
      s[j] |= uint8_t((lm[j] >> 4) << 6);
    }
  }
}
void unpack_k4(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
  else { *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

void enc_q2_k(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[QK_K];
  for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, o += 84, w = w ? w + QK_K : w) {
    const ScaleMin r = kquant_scale_min(x, w, 16, 16, 3, 15, L);
    for (int j = 0; j < 16; ++j) o[j] = uint8_t(r.ls[j] | (r.lm[j] << 4));
    codes_q2_k(o, L);
    f2h(o + 80, r.d);
    f2h(o + 82, r.dmin);
  }
}
// 2-bit codes of 256 values: two halves of 128, byte l of a half holds values l, l+32, l+64, l+96.
void pack_2bit(const int* c, uint8_t* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l)
      qs[h * 32 + l] = uint8_t(c[h * 128 + l] | (c[h * 128 + l + 32] << 2) | (c[h * 128 + l + 64] << 4) |
                               (c[h * 128 + l + 96] << 6));
}
void codes_q2_k(uint8_t* o, const int* c) { pack_2bit(c, o + 16); }
void grid_q2_k(const uint8_t* in, float* a, float* b) {
  const float d = h2f(in + 80), dmin = h2f(in + 82);
  for (int i = 0; i < QK_K; ++i) {
    a[i] = d * float(in[i / 16] & 0xF);
    b[i] = -(dmin * float(in[i / 16] >> 4));
  }
}
void dec_q2_k(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / QK_K; ++b, in += 84, y += QK_K) {
    const float d = h2f(in + 80), dmin = h2f(in + 82);
    const uint8_t* qs = in + 16;
    for (int i = 0; i < QK_K; ++i) {
      const int h = i / 128, r = i % 128, shift = 2 * (r / 32), l = r % 32;
      const uint8_t sc = in[i / 16];
      y[i] = d * float(sc & 0xF) * float((qs[h * 32 + l] >> shift) & 3) - dmin * float(sc >> 4);
    }
  }
}

void enc_q4_k(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[QK_K];
  for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, o += 144, w = w ? w + QK_K : w) {
    const ScaleMin r = kquant_scale_min(x, w, 8, 32, 15, 63, L);
    f2h(o, r.d);
    f2h(o + 2, r.dmin);
    pack_k4(r.ls, r.lm, o + 4);
    codes_q4_k(o, L);
  }
}
// chunks of 64: low nibbles hold sub-block 2c, high nibbles 2c+1
void pack_k_nibbles(const int* c, uint8_t* qs) {
  for (int k = 0; k < 4; ++k)
    for (int l = 0; l < 32; ++l) qs[k * 32 + l] = uint8_t((c[k * 64 + l] & 15) | ((c[k * 64 + 32 + l] & 15) << 4));
}
void codes_q4_k(uint8_t* o, const int* c) { pack_k_nibbles(c, o + 16); }
// Q4_K/Q5_K: value = d*sc*q - dmin*m per sub-block of 32.
void grid_k4(const uint8_t* in, float* a, float* b) {
  const float d = h2f(in), dmin = h2f(in + 2);
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    unpack_k4(j, in + 4, &sc, &m);
    std::fill(a + 32 * j, a + 32 * j + 32, d * float(sc));
    std::fill(b + 32 * j, b + 32 * j + 32, -(dmin * float(m)));
  }
}
void dec_q4_k(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / QK_K; ++b, in += 144, y += QK_K) {
    const float d = h2f(in), dmin = h2f(in + 2);
    const uint8_t* qs = in + 16;
    for (int i = 0; i < QK_K; ++i) {
      int sc, m;
      unpack_k4(i / 32, in + 4, &sc, &m);
      const int c = i / 64, l = i % 32, hi = (i / 32) & 1;
      const int q = hi ? qs[c * 32 + l] >> 4 : qs[c * 32 + l] & 0xF;
      y[i] = d * float(sc) * float(q) - dmin * float(m);
    }
  }
}

void enc_q5_k(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[QK_K];
  for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, o += 176, w = w ? w + QK_K : w) {
    const ScaleMin r = kquant_scale_min(x, w, 8, 32, 31, 63, L);
    f2h(o, r.d);
    f2h(o + 2, r.dmin);
    pack_k4(r.ls, r.lm, o + 4);
    codes_q5_k(o, L);
  }
}
void codes_q5_k(uint8_t* o, const int* c) {
  uint8_t* qh = o + 16;
  std::memset(qh, 0, 32);
  for (int i = 0; i < QK_K; ++i)  // sub-block s's 5th bits are bit s of qh[l]
    if (c[i] & 16) qh[i % 32] |= uint8_t(1 << (i / 32));
  pack_k_nibbles(c, o + 48);
}
void dec_q5_k(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / QK_K; ++b, in += 176, y += QK_K) {
    const float d = h2f(in), dmin = h2f(in + 2);
    const uint8_t* qh = in + 16;
    const uint8_t* qs = in + 48;
    for (int i = 0; i < QK_K; ++i) {
      int sc, m;
      unpack_k4(i / 32, in + 4, &sc, &m);
      const int c = i / 64, l = i % 32, hi = (i / 32) & 1;
      const int q = (hi ? qs[c * 32 + l] >> 4 : qs[c * 32 + l] & 0xF) | (((qh[l] >> (i / 32)) & 1) << 4);
      y[i] = d * float(sc) * float(q) - dmin * float(m);
    }
  }
}

// ---- symmetric K-quants (Q3_K, Q6_K): 16 sub-blocks of 16, signed sub-block scales quantized
// against one f16 d (the largest-magnitude scale maps to the negative end). ----
void ksym_scales(const float* x, const float* w, int lo, int hi, int slo, int shi, int* ls, float* d, int* L) {
  float sc[16], smax = 0;
  for (int j = 0; j < 16; ++j) {
    sc[j] = search_sym(x + 16 * j, w ? w + 16 * j : nullptr, 16, lo, hi, L + 16 * j);
    if (std::fabs(sc[j]) > std::fabs(smax)) smax = sc[j];
  }
  *d = rt16(smax / float(slo));
  for (int j = 0; j < 16; ++j) {
    ls[j] = *d != 0 ? clampi(nearest(sc[j] / *d), slo, shi) : 0;
    requant(x + 16 * j, 16, *d * float(ls[j]), 0, lo, hi, L + 16 * j);
  }
}

void enc_q3_k(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[QK_K], ls[16];
  for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, o += 110, w = w ? w + QK_K : w) {
    float d;
    ksym_scales(x, w, -4, 3, -32, 31, ls, &d, L);
    uint8_t* sc = o + 96;
    std::memset(sc, 0, 12);
    for (int j = 0; j < 16; ++j) {
      const int l = ls[j] + 32;
      if (j < 8) sc[j] = uint8_t(l & 0xF);
      else sc[j - 8] |= uint8_t((l & 0xF) << 4);
      sc[j % 4 + 8] |= uint8_t((l >> 4) << (2 * (j / 4)));
    }
    for (int& l : L) l += 4;
    codes_q3_k(o, L);
    f2h(o + 108, d);
  }
}
// Codes 0..7: bit 2 in hmask (set: no -4), bits 0-1 in qs.
void codes_q3_k(uint8_t* o, const int* c) {
  uint8_t* hm = o;
  std::memset(hm, 0, 32);
  int low[QK_K];
  for (int i = 0; i < QK_K; ++i) {
    if (c[i] > 3) hm[i % 32] |= uint8_t(1 << (i / 32));
    low[i] = c[i] & 3;
  }
  pack_2bit(low, o + 32);
}
void grid_q3_k(const uint8_t* in, float* a, float* b) {
  const uint8_t* sc = in + 96;
  const float d = h2f(in + 108);
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
    const int high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    const float s = d * float((low | (high << 4)) - 32);
    std::fill(a + 16 * j, a + 16 * j + 16, s);
    std::fill(b + 16 * j, b + 16 * j + 16, -4.0f * s);
  }
}
void dec_q3_k(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / QK_K; ++b, in += 110, y += QK_K) {
    const uint8_t* hm = in;
    const uint8_t* qs = in + 32;
    const uint8_t* sc = in + 96;
    const float d = h2f(in + 108);
    for (int i = 0; i < QK_K; ++i) {
      const int j = i / 16;
      const int low = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
      const int high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
      const int s = (low | (high << 4)) - 32;
      const int h = i / 128, r = i % 128, shift = 2 * (r / 32), l = r % 32;
      const int q = ((qs[h * 32 + l] >> shift) & 3) - ((hm[i % 32] >> (i / 32)) & 1 ? 0 : 4);
      y[i] = d * float(s) * float(q);
    }
  }
}

void enc_q6_k(const float* x, const float* w, int64_t n, uint8_t* o) {
  int L[QK_K], ls[16];
  for (int64_t b = 0; b < n / QK_K; ++b, x += QK_K, o += 210, w = w ? w + QK_K : w) {
    float d;
    ksym_scales(x, w, -32, 31, -128, 127, ls, &d, L);
    for (int& l : L) l += 32;
    codes_q6_k(o, L);
    for (int j = 0; j < 16; ++j) o[192 + j] = uint8_t(int8_t(ls[j]));
    f2h(o + 208, d);
  }
}
void codes_q6_k(uint8_t* o, const int* c) {
  uint8_t* ql = o;
  uint8_t* qh = o + 128;
  std::memset(ql, 0, 128);
  std::memset(qh, 0, 64);
  for (int i = 0; i < QK_K; ++i) {
    const int q = c[i], h = i / 128, r = i % 128, l = r % 32, k = r / 32;  // k: which of 4 quarters
    // quarters 0,1 use low nibbles of ql[l], ql[l+32]; quarters 2,3 the high nibbles
    const int qli = h * 64 + l + (k & 1) * 32;
    ql[qli] |= uint8_t((q & 0xF) << ((k >> 1) * 4));
    qh[h * 32 + l] |= uint8_t((q >> 4) << (2 * k));
  }
}
void grid_q6_k(const uint8_t* in, float* a, float* b) {
  const float d = h2f(in + 208);
  for (int j = 0; j < 16; ++j) {
    const float s = d * float(int8_t(in[192 + j]));
    std::fill(a + 16 * j, a + 16 * j + 16, s);
    std::fill(b + 16 * j, b + 16 * j + 16, -32.0f * s);
  }
}
void dec_q6_k(const uint8_t* in, int64_t n, float* y) {
  for (int64_t b = 0; b < n / QK_K; ++b, in += 210, y += QK_K) {
    const uint8_t* ql = in;
    const uint8_t* qh = in + 128;
    const float d = h2f(in + 208);
    for (int i = 0; i < QK_K; ++i) {
      const int h = i / 128, r = i % 128, l = r % 32, k = r / 32;
      const int lo = (ql[h * 64 + l + (k & 1) * 32] >> ((k >> 1) * 4)) & 0xF;
      const int q = (lo | (((qh[h * 32 + l] >> (2 * k)) & 3) << 4)) - 32;
      y[i] = d * float(int8_t(in[192 + i / 16])) * float(q);
    }
  }
}

const GgmlTypeTraits kTypes[] = {
    {GgmlType::F32, "F32", 1, 4, enc_f32, dec_f32, 0, 0, nullptr, nullptr},
    {GgmlType::F16, "F16", 1, 2, enc_f16, dec_f16, 0, 0, nullptr, nullptr},
    {GgmlType::BF16, "BF16", 1, 2, enc_bf16, dec_bf16, 0, 0, nullptr, nullptr},
    {GgmlType::Q8_0, "Q8_0", 32, 34, enc_q8_0, dec_q8_0, 1, 255, grid_q8_0, codes_q8_0},
    {GgmlType::Q4_0, "Q4_0", 32, 18, enc_q4_0, dec_q4_0, 0, 15, grid_q4_0, codes_q4_0},
    {GgmlType::Q4_1, "Q4_1", 32, 20, enc_q4_1, dec_q4_1, 0, 15, grid_q4_1, codes_q4_1},
    {GgmlType::Q5_0, "Q5_0", 32, 22, enc_q5_0, dec_q5_0, 0, 31, grid_q5_0, codes_q5_0},
    {GgmlType::Q5_1, "Q5_1", 32, 24, enc_q5_1, dec_q5_1, 0, 31, grid_q5_1, codes_q5_1},
    {GgmlType::Q2_K, "Q2_K", 256, 84, enc_q2_k, dec_q2_k, 0, 3, grid_q2_k, codes_q2_k},
    {GgmlType::Q3_K, "Q3_K", 256, 110, enc_q3_k, dec_q3_k, 0, 7, grid_q3_k, codes_q3_k},
    {GgmlType::Q4_K, "Q4_K", 256, 144, enc_q4_k, dec_q4_k, 0, 15, grid_k4, codes_q4_k},
    {GgmlType::Q5_K, "Q5_K", 256, 176, enc_q5_k, dec_q5_k, 0, 31, grid_k4, codes_q5_k},
    {GgmlType::Q6_K, "Q6_K", 256, 210, enc_q6_k, dec_q6_k, 0, 63, grid_q6_k, codes_q6_k},
};

}  // namespace

const GgmlTypeTraits* ggml_type_by_id(uint32_t id) {
  for (const auto& t : kTypes)
    if (uint32_t(t.type) == id) return &t;
  return nullptr;
}
const GgmlTypeTraits* ggml_type_by_name(std::string_view name) {
  for (const auto& t : kTypes)
    if (name.size() == std::strlen(t.name) && strncasecmp(name.data(), t.name, name.size()) == 0) return &t;
  return nullptr;
}
const GgmlTypeTraits& ggml_traits(GgmlType t) {
  const GgmlTypeTraits* p = ggml_type_by_id(uint32_t(t));
  LLMC_CHECK(p != nullptr);
  return *p;
}
int ggml_type_count() { return int(sizeof kTypes / sizeof kTypes[0]); }
const GgmlTypeTraits& ggml_type_at(int i) { return kTypes[i]; }
void ggml_encode_rows(const GgmlTypeTraits& t, const float* x, int64_t rows, int64_t cols, const float* imp,
                      uint8_t* out) {
  const size_t rb = size_t(ggml_row_bytes(t.type, uint64_t(cols)));
  parallel_for(0, size_t(rows), 4, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) t.encode(x + r * size_t(cols), imp, cols, out + r * rb);
  });
}
void ggml_decode_rows(const GgmlTypeTraits& t, const uint8_t* in, int64_t rows, int64_t cols, float* y) {
  const size_t rb = size_t(ggml_row_bytes(t.type, uint64_t(cols)));
  parallel_for(0, size_t(rows), 16, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) t.decode(in + r * rb, cols, y + r * size_t(cols));
  });
}

uint64_t ggml_row_bytes(GgmlType t, uint64_t n) {
  const GgmlTypeTraits& tt = ggml_traits(t);
  if (n % uint64_t(tt.block_size) != 0)
    fail(tt.name, ": ", n, " values are not a multiple of the block size ", tt.block_size);
  return n / uint64_t(tt.block_size) * uint64_t(tt.type_size);
}

}  // namespace llmc
