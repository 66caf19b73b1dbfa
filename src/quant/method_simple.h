// quant/method_simple.h — factories of the simple methods in the table (quant/method.cpp):
// round-to-nearest weight quantization (int8, int2, int8_dynamic) and the dense fp16 output
// (method_simple.cpp), and the fp8 methods (fp8_static, fp8_dynamic: method_fp8.cpp).
#pragma once
#include <initializer_list>
#include <memory>

#include "quant/method.h"

namespace llmc {

// Weight-only INT, round to nearest: bits/group/symmetry from the spec; for bits <= 3 each
// group's range is shrunk by an MSE search (quant/rtn.h clip_search).
std::unique_ptr<BlockQuantizer> make_int_rtn_quantizer(const QuantSpec& spec);
// FP8 e4m3 weights per output channel (GPTQ rounding on calibration data unless
// --method-opt weights=rtn), dynamic per-token fp8 activations (method_fp8.cpp).
std::unique_ptr<BlockQuantizer> make_fp8_dynamic_quantizer(const QuantSpec& spec);
bool fp8_dynamic_needs_calibration(const QuantSpec& spec);
// INT8 per-channel symmetric weights, dynamic per-token symmetric int8 activations.
std::unique_ptr<BlockQuantizer> make_int8_dynamic_quantizer(const QuantSpec& spec);
// Leaves every weight dense (the writer casts to MethodInfo::dense_dtype).
std::unique_ptr<BlockQuantizer> make_dense_quantizer(const QuantSpec& spec);
// FP8 e4m3 per-tensor weights (one scale shared by q/k/v and by gate/up, as vLLM's fused layers
// need) and a static per-tensor input scale per shared input, chosen among clipping ratios of
// the calibration abs-max by the squared error of the linears' outputs against the unquantized
// layer (see docs/methods.md).
std::unique_ptr<BlockQuantizer> make_fp8_static_quantizer(const QuantSpec& spec);


}  // namespace llmc
