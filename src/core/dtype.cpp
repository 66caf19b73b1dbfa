#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/threads.h"

namespace llmc {

namespace {
constexpr DTypeTraits kTraits[kNumDTypes] = {
    {DType::F64, "f64", "F64", 8, true},      {DType::F32, "f32", "F32", 4, true},
    {DType::F16, "f16", "F16", 2, true},      {DType::BF16, "bf16", "BF16", 2, true},
    {DType::F8_E4M3, "f8_e4m3", "F8_E4M3", 1, true},
    {DType::F8_E5M2, "f8_e5m2", "F8_E5M2", 1, true},
    {DType::I64, "i64", "I64", 8, false},     {DType::I32, "i32", "I32", 4, false},
    {DType::I16, "i16", "I16", 2, false},     {DType::I8, "i8", "I8", 1, false},
    {DType::U8, "u8", "U8", 1, false},        {DType::BOOL, "bool", "BOOL", 1, false},
};

struct Alias { const char* name; DType t; };
constexpr Alias kAliases[] = {
    {"F8_E4M3FN", DType::F8_E4M3}, {"float8_e4m3fn", DType::F8_E4M3},
    {"float8_e5m2", DType::F8_E5M2}, {"bfloat16", DType::BF16}, {"float16", DType::F16},
    {"half", DType::F16},          {"float32", DType::F32},      {"float", DType::F32},
    {"float64", DType::F64},       {"int64", DType::I64},        {"int32", DType::I32},
    {"int16", DType::I16},         {"int8", DType::I8},          {"uint8", DType::U8},
    {"fp16", DType::F16},          {"fp32", DType::F32},
};

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

uint32_t decode_minifloat_to_f32_bits(uint32_t v, int ebits, int mbits, bool ieee_inf) {
  const uint32_t sign = (v >> (ebits + mbits)) & 1u;
  const uint32_t e = (v >> mbits) & ((1u << ebits) - 1);
  const uint32_t m = v & ((1u << mbits) - 1);
  const int bias = (1 << (ebits - 1)) - 1;
  float mag;
  const uint32_t emax = (1u << ebits) - 1;
  if (ieee_inf && e == emax) {
    mag = m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else if (!ieee_inf && e == emax && m == (1u << mbits) - 1) {
    mag = std::numeric_limits<float>::quiet_NaN();
  } else if (e == 0) {
    mag = std::ldexp(float(m), 1 - bias - mbits);
  } else {
    mag = std::ldexp(float(m | (1u << mbits)), int(e) - bias - mbits);
  }
  return f32_to_bits(mag) | (sign << 31);
}

struct Fp8Tables {
  std::array<float, 256> e4m3, e5m2;
  Fp8Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      e4m3[i] = bits_to_f32(decode_minifloat_to_f32_bits(i, 4, 3, false));
      e5m2[i] = bits_to_f32(decode_minifloat_to_f32_bits(i, 5, 2, true));
    }
  }
};
const Fp8Tables& fp8_tables() {
  static const Fp8Tables t;
  return t;
}
}  // namespace

const DTypeTraits& dtype_traits(DType t) {
  const auto i = static_cast<size_t>(t);
  LLMC_CHECK(i < kNumDTypes);
  return kTraits[i];
}

bool parse_dtype(std::string_view s, DType* out) {
  for (const auto& tr : kTraits) {
    if (s == tr.safetensors || s == tr.name) { *out = tr.dtype; return true; }
  }
  for (const auto& a : kAliases) {
    if (ieq(s, a.name)) { *out = a.t; return true; }
  }
  return false;
}

uint32_t minifloat_encode_ref(float f, int ebits, int mbits, bool ieee_inf, bool saturate) {
  const int bias = (1 << (ebits - 1)) - 1;
  const uint32_t sign = std::signbit(f) ? 1u : 0u;
  const uint32_t sbit = sign << (ebits + mbits);
  const uint32_t emax = (1u << ebits) - 1;
  const uint32_t mmask = (1u << mbits) - 1;
  // Largest finite encoding.
  const uint32_t max_e = ieee_inf ? emax - 1 : emax;
  const uint32_t max_m = ieee_inf ? mmask : mmask - 1;
  const double max_val = std::ldexp(double(max_m | (1u << mbits)), int(max_e) - bias - mbits);
  if (std::isnan(f)) {
    if (ieee_inf) {
      // Keep the top payload bits when the source is float (quiet bit set).
      uint32_t payload = (f32_to_bits(f) >> (23 - mbits)) & mmask;
      payload |= 1u << (mbits - 1);
      return sbit | (emax << mbits) | payload;
    }
    return sbit | (emax << mbits) | mmask;
  }
  double a = std::fabs(double(f));
  if (std::isinf(f)) {
    if (ieee_inf) return sbit | (emax << mbits);
    return sbit | (max_e << mbits) | max_m;  // saturating formats without inf
  }
  if (saturate && a > max_val) a = max_val;
  if (a == 0) return sbit;
  int e2;
  std::frexp(a, &e2);  // a = fr * 2^e2, fr in [0.5,1): unbiased exponent e2-1
  int exp_unb = e2 - 1;
  const int min_norm = 1 - bias;
  const int qexp = (exp_unb < min_norm ? min_norm : exp_unb) - mbits;
  const double q = std::nearbyint(std::ldexp(a, -qexp));  // ties to even (default mode)
  const double val = std::ldexp(q, qexp);
  if (val > max_val) {
    if (ieee_inf) return sbit | (emax << mbits);  // overflow to inf
    return sbit | (emax << mbits) | mmask;          // NaN (non-saturating e4m3fn)
  }
  if (val < std::ldexp(1.0, min_norm)) return sbit | uint32_t(q);  // subnormal (or 0)
  std::frexp(val, &e2);
  exp_unb = e2 - 1;
  const uint32_t mant = uint32_t(std::ldexp(val, mbits - exp_unb)) & mmask;
  return sbit | (uint32_t(exp_unb + bias) << mbits) | mant;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu;
  if (e == 0x1f) return bits_to_f32(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    if (m == 0) return bits_to_f32(sign);
    float v = float(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
    return sign ? -v : v;
  }
  return bits_to_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {                                   // below 2^-14: subnormal in f16
    // value * 2^24 rounded to nearest even gives the subnormal mantissa; the float add
    // performs exactly that rounding.
    const float v = bits_to_f32(a) + 0.5f;                  // 0.5 = 2^-1: ulp at 2^-1 is 2^-24
    return uint16_t(sign | (f32_to_bits(v) - 0x3f000000u));
  }
  uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return uint16_t(sign | (r >> 13));
}

float fp8e4m3_to_f32(uint8_t v) { return fp8_tables().e4m3[v]; }
float fp8e5m2_to_f32(uint8_t v) { return fp8_tables().e5m2[v]; }

uint8_t f32_to_fp8e4m3(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7f);
  if (a >= 0x43e00000u) return uint8_t(sign | 0x7e);  // >= 448 (incl. inf): saturate
  if (a < 0x3c800000u) {                               // < 2^-6: subnormal, quantum 2^-9
    const float q = std::nearbyint(bits_to_f32(a) * 512.0f);  // exact scaling, RNE
    return uint8_t(sign | uint32_t(q));                       // q in [0, 8]; 8 = min normal
  }
  uint32_t r = a - (120u << 23);  // rebias 127 -> 7
  r += 0x7ffffu + ((r >> 20) & 1u);
  return uint8_t(sign | (r >> 20));
}

uint8_t f32_to_fp8e5m2(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint8_t(sign | 0x7e);
  if (a == 0x7f800000u) return uint8_t(sign | 0x7c);
  if (a >= 0x47600000u) return uint8_t(sign | 0x7b);  // >= 57344: saturate
  if (a < 0x38800000u) {                              // < 2^-14: subnormal, quantum 2^-16
    const float q = std::nearbyint(bits_to_f32(a) * 65536.0f);
    return uint8_t(sign | uint32_t(q));
  }
  uint32_t r = a - (112u << 23);
  r += 0xfffffu + ((r >> 21) & 1u);
  return uint8_t(sign | (r >> 21));
}

namespace {
template <typename I>
I sat_int(float v) {
  if (std::isnan(v)) return 0;
  const double r = std::nearbyint(double(v));
  if (r <= double(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (r >= double(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return I(r);
}
}  // namespace

float load_as_f32(DType t, const void* p, size_t i) {
  switch (t) {
    case DType::F64: return float(static_cast<const double*>(p)[i]);
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F8_E4M3: return fp8e4m3_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::F8_E5M2: return fp8e5m2_to_f32(static_cast<const uint8_t*>(p)[i]);
    case DType::I64: return float(static_cast<const int64_t*>(p)[i]);
    case DType::I32: return float(static_cast<const int32_t*>(p)[i]);
    case DType::I16: return float(static_cast<const int16_t*>(p)[i]);
    case DType::I8: return float(static_cast<const int8_t*>(p)[i]);
    case DType::U8: return float(static_cast<const uint8_t*>(p)[i]);
    case DType::BOOL: return static_cast<const uint8_t*>(p)[i] ? 1.0f : 0.0f;
  }
  return 0;
}

void store_from_f32(DType t, void* p, size_t i, float v) {
  switch (t) {
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::F32: static_cast<float*>(p)[i] = v; break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    case DType::F8_E4M3: static_cast<uint8_t*>(p)[i] = f32_to_fp8e4m3(v); break;
    case DType::F8_E5M2: static_cast<uint8_t*>(p)[i] = f32_to_fp8e5m2(v); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = sat_int<int64_t>(v); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = sat_int<int32_t>(v); break;
    case DType::I16: static_cast<int16_t*>(p)[i] = sat_int<int16_t>(v); break;
    case DType::I8: static_cast<int8_t*>(p)[i] = sat_int<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(p)[i] = sat_int<uint8_t>(v); break;
    case DType::BOOL: static_cast<uint8_t*>(p)[i] = (v != 0.0f) ? 1 : 0; break;
  }
}

namespace {
void convert_range(DType st, const void* src, DType dt, void* dst, size_t b, size_t e) {
  if (st == dt) {
    const size_t sz = dtype_size(st);
    std::memcpy(static_cast<char*>(dst) + b * sz, static_cast<const char*>(src) + b * sz,
                (e - b) * sz);
    return;
  }
  if (dt == DType::F32) {
    float* d = static_cast<float*>(dst);
    if (st == DType::BF16) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = b; i < e; ++i) d[i] = bf16_to_f32(s[i]);
      return;
    }
    if (st == DType::F16) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = b; i < e; ++i) d[i] = f16_to_f32(s[i]);
      return;
    }
    for (size_t i = b; i < e; ++i) d[i] = load_as_f32(st, src, i);
    return;
  }
  if (st == DType::F32 && dt == DType::BF16) {
    const float* s = static_cast<const float*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (size_t i = b; i < e; ++i) d[i] = f32_to_bf16(s[i]);
    return;
  }
  const bool wide_int = (st == DType::I64 || st == DType::I32) &&
                        (dt == DType::I64 || dt == DType::I32 || dt == DType::F64);
  if (wide_int || st == DType::F64) {
    // Go through double so 32/64-bit integers and f64 keep their precision.
    for (size_t i = b; i < e; ++i) {
      double v;
      switch (st) {
        case DType::I64: v = double(static_cast<const int64_t*>(src)[i]); break;
        case DType::I32: v = double(static_cast<const int32_t*>(src)[i]); break;
        default: v = static_cast<const double*>(src)[i]; break;
      }
      if (dt == DType::F64) static_cast<double*>(dst)[i] = v;
      else if (dt == DType::I64 && st != DType::F64) static_cast<int64_t*>(dst)[i] = int64_t(v);
      else if (dt == DType::I32 && st == DType::I64) {
        const int64_t x = static_cast<const int64_t*>(src)[i];
        static_cast<int32_t*>(dst)[i] = int32_t(x < INT32_MIN ? INT32_MIN : x > INT32_MAX ? INT32_MAX : x);
      } else store_from_f32(dt, dst, i, float(v));
    }
    return;
  }
  for (size_t i = b; i < e; ++i) store_from_f32(dt, dst, i, load_as_f32(st, src, i));
}
}  // namespace

void convert(DType st, const void* src, DType dt, void* dst, size_t n) {
  if (n == 0) return;  // empty tensors may have null data pointers
  constexpr size_t kGrain = 1 << 16;
  if (n < 2 * kGrain) { convert_range(st, src, dt, dst, 0, n); return; }
  parallel_for(0, n, kGrain, [&](size_t b, size_t e) { convert_range(st, src, dt, dst, b, e); });
}

void to_f32(DType st, const void* src, float* dst, size_t n) { convert(st, src, DType::F32, dst, n); }

int64_t first_non_finite(const float* v, size_t n) {
  constexpr size_t kChunk = size_t(1) << 18;
  const size_t nc = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> first(nc, -1);
  parallel_for(0, nc, 1, [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      const size_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
      float acc = 0.0f;  // x - x is 0 for finite x, NaN otherwise
      for (size_t i = lo; i < hi; ++i) acc += v[i] - v[i];
      if (acc == 0.0f) continue;
      for (size_t i = lo; i < hi; ++i)
        if (!std::isfinite(v[i])) {
          first[c] = int64_t(i);
          break;
        }
    }
  });
  for (int64_t f : first)
    if (f >= 0) return f;
  return -1;
}

}  // namespace llmc
