// core/qweight.h — llmc's canonical in-memory form of one quantized linear weight, before it is
// packed into an on-disk layout (quant/layouts.h) and after a layout is unpacked by the loader.
//
// Conventions (every method and layout agrees on these):
//  * Weight W is [out, in] row-major, as in HF Linear.
//  * kind INT, symmetric:  q signed in [-2^(b-1), 2^(b-1)-1],       W ≈ q · s
//    kind INT, asymmetric: q unsigned in [0, 2^b - 1], zero z same range, W ≈ (q - z) · s
//    kind FP8: q holds float8_e4m3fn bytes,                          W ≈ fp8(q) · s
//  * Scales/zeros are [out, n_groups] with n_groups = ceil(in / group) for group > 0,
//    1 for per-channel (group == -1) and a single value for per-tensor (group == 0).
//  * g_idx (optional, act-order with static groups): group of each input column, size in.
//  * dequantize() is the one reference decoder: every layout's unpack must reproduce it
//    bit-exactly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmc {

enum class QKind : uint8_t { INT, FP8 };

// How the linear's input activations are quantized at inference (simulated by the loader).
enum class ActQuant : uint8_t {
  None,             // weight-only
  FP8StaticTensor,  // fp8 e4m3, one calibrated scale per tensor (input_scale)
  FP8DynamicToken,  // fp8 e4m3, per-token scale computed at run time
  FP8DynamicTensor, // fp8 e4m3, per-tensor scale computed at run time
  INT8DynamicToken, // int8 symmetric, per-token scale computed at run time
  INT8StaticTensor, // int8 symmetric, one calibrated scale per tensor (input_scale; read only)
};

// "none", "fp8_static_tensor", ... (for reports and errors).
const char* act_quant_name(ActQuant a);

struct QuantizedWeight {
  QKind kind = QKind::INT;
  int bits = 8;
  bool symmetric = true;
  int64_t out = 0, in = 0;
  int64_t group = -1;               // >0 group size along in; -1 per-channel; 0 per-tensor
  std::vector<int8_t> q8;           // codes when bits <= 8 (INT sym: signed; FP8: raw bytes)
  std::vector<uint8_t> qu;          // codes for INT asymmetric (unsigned)
  std::vector<float> scales;        // [out, n_groups] or [1]
  std::vector<int32_t> zeros;       // [out, n_groups] (asymmetric only)
  std::vector<int32_t> g_idx;       // optional, size in
  std::vector<float> bias;          // optional, size out (kept in fp32/bf16 on disk)
  ActQuant act = ActQuant::None;
  float input_scale = 0.0f;         // FP8StaticTensor only

  int64_t n_groups() const;
  int64_t group_of(int64_t col) const;  // honours g_idx
  std::vector<float> dequantize() const;  // [out, in]
  // Rows [r0, r1) of dequantize() into dst ([r1 - r0, in]); the same values. Checks the code,
  // scale and zero sizes (also when r0 == r1, without writing).
  void dequantize_rows(int64_t r0, int64_t r1, float* dst) const;
  // Checks the invariants above (code vector and range, scale/zero/g_idx sizes, finite scales,
  // bits in [2, 8] for INT and 8 for FP8); throws llmc::Error naming `what`.
  void validate(const std::string& what) const;
  // Code of element (o, i) as an integer: signed for INT symmetric, unsigned for INT
  // asymmetric, the raw byte for FP8.
  int32_t code(int64_t o, int64_t i) const;
};

// Fake-quantizes activation rows in place as `act` prescribes (used by the loader's Linear
// and by calibration error searches). `static_scale` is used by the static kinds.
//  * fp8:  scale = amax / 448 (per token or per tensor; static: given), x -> fp8(x / scale) * scale
//          with the saturating f32_to_fp8e4m3;
//  * int8: scale = amax / 127 (per token; static: given), x -> clamp(rint(x / scale), -128, 127)
//          * scale, round half to even.
//  An all-zero row/tensor uses scale 1. A static scale that is not finite and > 0 throws.
void quantize_activations(ActQuant act, float static_scale, float* x, int64_t rows, int64_t cols);

}  // namespace llmc
