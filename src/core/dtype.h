// core/dtype.h — element types and bit-exact conversions.
//
// One table (dtype_traits) describes every element type llmc reads or writes: its name, its
// size, its safetensors spelling and whether it is a float type. All conversions are bit-exact:
//  * float -> bf16/f16/fp8 round to nearest, ties to even, with correct subnormals;
//  * NaN stays NaN (bf16/f16 keep sign and upper payload, quiet bit set; fp8 e4m3fn gives
//    0x7F|sign, e5m2 0x7E|sign);
//  * casts to F8_E4M3 saturate to +-448 (like PyTorch's .to(float8_e4m3fn) after clamping);
//    casts to F8_E5M2 saturate finite values to +-57344 and keep infinities;
//  * casts to integer types round to nearest even and saturate; NaN gives 0.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace llmc {

enum class DType : uint8_t { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL };
inline constexpr int kNumDTypes = 12;

struct DTypeTraits {
  DType dtype;
  const char* name;             // llmc / Parquet spelling, e.g. "bf16"
  const char* safetensors;      // safetensors spelling, e.g. "BF16"
  size_t size;                  // bytes per element
  bool is_float;
};

const DTypeTraits& dtype_traits(DType t);
inline size_t dtype_size(DType t) { return dtype_traits(t).size; }
inline const char* dtype_name(DType t) { return dtype_traits(t).name; }
// Parses either spelling ("BF16" or "bf16"; also "F8_E4M3FN", "float8_e4m3fn", "bfloat16",
// "float16", "float32"). Returns false for unknown names.
bool parse_dtype(std::string_view s, DType* out);

// ---- scalar conversions ----
inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN: quiet
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float fp8e4m3_to_f32(uint8_t v);
uint8_t f32_to_fp8e4m3(float f);
float fp8e5m2_to_f32(uint8_t v);
uint8_t f32_to_fp8e5m2(float f);

// Reference encoder for a generic binary minifloat (1 sign bit, ebits, mbits), round to nearest
// even. Used to build and to test the fast paths. `ieee_inf`: the all-ones exponent encodes
// inf/NaN (f16, bf16, e5m2); otherwise (e4m3fn) only the all-ones pattern is NaN.
uint32_t minifloat_encode_ref(float f, int ebits, int mbits, bool ieee_inf, bool saturate);

// Element i of a buffer of type t, as float (integers converted exactly where representable).
float load_as_f32(DType t, const void* p, size_t i);
// Writes v (converted) as element i of a buffer of type t.
void store_from_f32(DType t, void* p, size_t i, float v);

// Bulk conversion of n elements, multithreaded for large n. src and dst must not overlap.
void convert(DType src_t, const void* src, DType dst_t, void* dst, size_t n);
void to_f32(DType src_t, const void* src, float* dst, size_t n);
// Index of the first NaN/Inf of v[0, n), or -1 (a parallel branch-free scan; the exact index
// is searched only inside the chunk that has one).
int64_t first_non_finite(const float* v, size_t n);

}  // namespace llmc
