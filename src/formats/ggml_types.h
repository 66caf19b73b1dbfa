// formats/ggml_types.h — ggml tensor types: one table row per type (name, ggml id, block size,
// bytes per block, encode, decode), with the exact block layouts of ggml (ggml-common.h):
//   F32 (4 B), F16 (2 B), BF16 (2 B)           one value per "block";
//   Q8_0  {f16 d; int8 qs[32]}                 x = d*q;                         34 B / 32
//   Q4_0  {f16 d; u8 qs[16]}                   x = d*(q-8), q of x[j] in qs[j]&15, x[j+16] in qs[j]>>4
//   Q4_1  {f16 d, m; u8 qs[16]}                x = d*q + m
//   Q5_0  {f16 d; u8 qh[4]; u8 qs[16]}         x = d*(q-16), 5th bit of x[j] = bit j of qh (LE u32)
//   Q5_1  {f16 d, m; u8 qh[4]; u8 qs[16]}      x = d*q + m
//   Q2_K  {u8 scales[16]; u8 qs[64]; f16 d, dmin}          16 x 16, x = d*(sc&15)*q - dmin*(sc>>4)
//   Q3_K  {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}  16 x 16, 6-bit signed scales (-32)
//   Q4_K  {f16 d, dmin; u8 scales[12]; u8 qs[128]}         8 x 32, 6-bit scales and mins
//   Q5_K  {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
//   Q6_K  {u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d}  16 x 16, x = d*sc*(q-32)
// (K-quants: 256 values per super-block; see ggml_types.cpp for the bit positions.)
//
// Contracts:
//  * encode(x, w, n, out): n a multiple of block_size; w (nullable) are per-value importance
//    weights (e.g. a Hessian diagonal) that the scale/min search minimises sum w*(x-x̂)^2 with
//    (uniform when null). Writes n/block_size*type_size bytes. decode is its exact inverse on the
//    layout: decode(encode(x)) is what ggml's dequantize_row gives for those bytes.
//  * Every quantized type's grid is affine per value: value_i = a_i * c_i + b_i with an unsigned
//    code c_i in [code_min, code_max]. grid(block, a, b) reads a_i, b_i (block_size each) from an
//    encoded block's scales; set_codes(block, c) rewrites the block's codes, keeping its scales,
//    so that decode gives a_i * c_i + b_i (up to the fp32 rounding of that product and sum).
//    Codes: Q8_0 int8 + 128 (1..255), Q4_0/Q5_0 as stored (value d*(c-8) / d*(c-16)), Q3_K
//    q + 4 (0..7), Q6_K q + 32 (0..63), the others as stored. GPTQ on ggml grids
//    (quant/gptq.h) encodes a block of its running weights, then rounds column by column onto
//    that grid. null for F32/F16/BF16.
//  * Encoders are llmc's own (search over candidate scales), not llama.cpp's; the bytes they write
//    follow the layout, so llama.cpp decodes them identically.
//  * ggml_type_by_id/name return nullptr for types not in the table.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace llmc {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
};

using GgmlEncodeFn = void (*)(const float* x, const float* w, int64_t n, uint8_t* out);
using GgmlDecodeFn = void (*)(const uint8_t* in, int64_t n, float* y);
using GgmlGridFn = void (*)(const uint8_t* block, float* a, float* b);
using GgmlSetCodesFn = void (*)(uint8_t* block, const int* codes);

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;       // "Q4_K"
  int block_size;         // values per block
  int type_size;          // bytes per block
  GgmlEncodeFn encode;
  GgmlDecodeFn decode;
  int code_min, code_max;  // quantized types: the unsigned code range of set_codes
  GgmlGridFn grid;         // null for F32/F16/BF16
  GgmlSetCodesFn set_codes;
  double bits_per_weight() const { return 8.0 * type_size / block_size; }
};

const GgmlTypeTraits* ggml_type_by_id(uint32_t id);
const GgmlTypeTraits* ggml_type_by_name(std::string_view name);  // case-insensitive
const GgmlTypeTraits& ggml_traits(GgmlType t);
int ggml_type_count();
const GgmlTypeTraits& ggml_type_at(int i);
// Bytes of n values (n a multiple of the block size; else throws llmc::Error).
uint64_t ggml_row_bytes(GgmlType t, uint64_t n);
// `rows` rows of `cols` values, each encoded alone (imp: per-column weights or null) into
// rows x ggml_row_bytes bytes / decoded back; rows in parallel (core/threads.h).
void ggml_encode_rows(const GgmlTypeTraits& t, const float* x, int64_t rows, int64_t cols, const float* imp,
                      uint8_t* out);
void ggml_decode_rows(const GgmlTypeTraits& t, const uint8_t* in, int64_t rows, int64_t cols, float* y);

}  // namespace llmc
