// quant/layouts_io.h — internal to the layout table (quant/layouts.h): the tensor writing /
// reading helpers every row uses, and the functions of each row, one file per layout:
//   layouts_ct.cpp    compressed-tensors (pack-/int-/float-/naive-quantized, format picker)
//   layouts_gptq.cpp  AutoGPTQ v1
//   layouts_awq.cpp   AutoAWQ GEMM
//   layouts_fp8.cpp   vLLM fp8 (read only)
//   layouts.cpp       the table and the public functions of layouts.h
// Nothing outside src/quant/layouts*.cpp includes this header.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/layouts.h"

namespace llmc::layout_io {

// ---- writing ----------------------------------------------------------------------------
EncodedTensor words_tensor(std::string name, Shape shape, const std::vector<uint32_t>& w);
// Float values converted to `dt`; a value that overflows or (being non-zero) underflows to 0 in
// dt is an error naming the tensor.
EncodedTensor float_tensor(std::string name, DType dt, Shape shape, const std::vector<float>& v);
EncodedTensor bytes_tensor(std::string name, DType dt, Shape shape, const void* p, size_t n);
EncodedTensor i64_tensor(std::string name, std::vector<int64_t> v);

// Unsigned code of element k: INT sym signed + 2^(b-1); INT asym as stored.
inline int32_t ucode(const QuantizedWeight& w, size_t k) {
  return w.symmetric ? int32_t(w.q8[k]) + (1 << (w.bits - 1)) : int32_t(w.qu[k]);
}
// Zero point of (o, g) in the unsigned convention (sym: 2^(b-1)).
inline int32_t uzero(const QuantizedWeight& w, int64_t o, int64_t g) {
  return w.symmetric ? (1 << (w.bits - 1)) : w.zeros[size_t(o * w.n_groups() + g)];
}
// Scales [out, ng] transposed to [ng, out].
std::vector<float> scales_t(const QuantizedWeight& w);
// g_idx empty or equal to column / group.
bool trivial_g_idx(const std::vector<int32_t>& g_idx, int64_t group);
void add_bias(std::vector<EncodedTensor>& out, const std::string& prefix, const QuantizedWeight& w);

// ---- reading (errors name r.origin() and the tensor) --------------------------------------
TensorRef need(const TensorReader& r, const std::string& name);
void expect_dtype(const TensorReader& r, const TensorRef& t, std::initializer_list<DType> ok);
void expect_shape(const TensorReader& r, const TensorRef& t, const Shape& s);
// Float tensor (f32/f16/bf16) as f32; every value must be finite.
std::vector<float> read_floats(const TensorReader& r, const TensorRef& t);
std::vector<uint32_t> read_words(const TensorReader& r, const TensorRef& t);
// Scalar float tensor (numel 1) > 0, e.g. input_scale.
float read_scalar(const TensorReader& r, const std::string& name);
// out/in given by the caller (>= 0) must agree with what the tensors say.
int64_t agree(const TensorReader& r, const std::string& what, int64_t given, int64_t found);
// Block scales [ceil(out/bo), ceil(in/bi)] expanded to groups of bi along in (w.out/w.in set).
void read_block_scales(const TensorReader& r, const TensorRef& t, int64_t bo, int64_t bi,
                       QuantizedWeight& w);
void read_bias(const TensorReader& r, const std::string& prefix, QuantizedWeight& w);
// Clears a trivial g_idx and validates the weight (errors prefixed with r.origin()).
void finish_decode(const TensorReader& r, const std::string& prefix, QuantizedWeight& w);
// "<prefix>.scales" [ng, out] (floats) and "<prefix>.qzeros" [ng, zcols] (int32 words), as the
// gptq and awq layouts store them.
struct GroupParams {
  std::vector<float> scales;
  std::vector<uint32_t> zero_words;
};
GroupParams read_group_params(const TensorReader& r, const std::string& prefix, int64_t ng,
                              int64_t zcols, int64_t out);
// An act-order index tensor (int32/int64, shape [in]).
std::vector<int32_t> read_g_idx(const TensorReader& r, const std::string& name, int64_t in);
// The 2-D shape of t, else an error.
Shape two_d(const TensorReader& r, const TensorRef& t);
// [out, in] of an unpacked "<prefix>.weight".
Shape plain_shape(const TensorReader& r, const std::string& prefix, const nlohmann::json& qc);

// ---- quantization_config fields -----------------------------------------------------------
int json_int(const nlohmann::json& j, const char* key, int def, const std::string& origin);
bool json_bool(const nlohmann::json& j, const char* key, bool def, const std::string& origin);
std::string json_str(const nlohmann::json& j, const char* key, const std::string& def);
std::string regex_escape(const std::string& s);

// ---- the rows' functions (see Layout in layouts.h for their contracts) --------------------
// compressed-tensors
std::string ct_pack_why(const QuantizedWeight& w);
std::string ct_int_why(const QuantizedWeight& w);
std::string ct_float_why(const QuantizedWeight& w);
std::string ct_any_why(const QuantizedWeight& w);
std::vector<EncodedTensor> ct_pack_encode(const std::string& prefix, const QuantizedWeight& w);
std::vector<EncodedTensor> ct_plain_encode(const std::string& prefix, const QuantizedWeight& w);
// The writable compressed-tensors format that holds w (the "compressed-tensors" row), or nullptr.
const Layout* ct_pick(const QuantizedWeight& w);
std::vector<EncodedTensor> ct_any_encode(const std::string& prefix, const QuantizedWeight& w);
QuantizedWeight ct_decode(const TensorReader& r, const std::string& prefix, int64_t out, int64_t in,
                          const nlohmann::json& qc);
nlohmann::json ct_config(const Layout& self, const QuantConfigSpec& spec);
Shape ct_shape(const TensorReader& r, const std::string& prefix, const nlohmann::json& qc);
// gptq
std::string gptq_why(const QuantizedWeight& w);
std::vector<EncodedTensor> gptq_encode(const std::string& prefix, const QuantizedWeight& w);
QuantizedWeight gptq_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                            int64_t in, const nlohmann::json& qc);
nlohmann::json gptq_config(const Layout& self, const QuantConfigSpec& spec);
Shape gptq_shape(const TensorReader& r, const std::string& prefix, const nlohmann::json& qc);
// awq
std::string awq_why(const QuantizedWeight& w);
std::vector<EncodedTensor> awq_encode(const std::string& prefix, const QuantizedWeight& w);
QuantizedWeight awq_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                           int64_t in, const nlohmann::json& qc);
nlohmann::json awq_config(const Layout& self, const QuantConfigSpec& spec);
Shape awq_shape(const TensorReader& r, const std::string& prefix, const nlohmann::json& qc);
// fp8 (read only)
QuantizedWeight fp8_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                           int64_t in, const nlohmann::json& qc);

// Element i of an integer index tensor (zero points, g_idx) as int32; a value that is not finite
// or does not fit in int32 is an llmc::Error naming the tensor.
inline int32_t load_index(const TensorRef& t, size_t i) {
  const float v = load_as_f32(t.info.dtype, t.data, i);
  if (!(v >= -2147483648.0f && v < 2147483648.0f))
    fail("tensor ", t.info.name, ": element ", i, " (", v, ") is not a valid index");
  return int32_t(v);
}

}  // namespace llmc::layout_io
