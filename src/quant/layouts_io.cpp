// quant/layouts_io.cpp — tensor writing/reading and config helpers shared by the layout rows.
#include "quant/layouts_io.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace llmc::layout_io {

using nlohmann::json;

// ------------------------------------------------------------------------------------------
// Writing helpers

EncodedTensor words_tensor(std::string name, Shape shape, const std::vector<uint32_t>& w) {
  EncodedTensor t{std::move(name), DType::I32, std::move(shape), {}};
  t.bytes.resize(w.size() * 4);
  std::memcpy(t.bytes.data(), w.data(), t.bytes.size());
  return t;
}

// Float values converted to `dt`; a value that overflows or (being non-zero) underflows to 0 in
// dt is an error naming the tensor.
EncodedTensor float_tensor(std::string name, DType dt, Shape shape, const std::vector<float>& v) {
  EncodedTensor t{std::move(name), dt, std::move(shape), {}};
  t.bytes.resize(v.size() * dtype_size(dt));
  for (size_t i = 0; i < v.size(); ++i) {
    store_from_f32(dt, t.bytes.data(), i, v[i]);
    const float back = load_as_f32(dt, t.bytes.data(), i);
    if (!std::isfinite(back) || (back == 0.0f && v[i] != 0.0f))
      fail("tensor ", t.name, ": value ", v[i], " at index ", i, " cannot be stored as ",
           dtype_name(dt));
  }
  return t;
}

EncodedTensor bytes_tensor(std::string name, DType dt, Shape shape, const void* p, size_t n) {
  EncodedTensor t{std::move(name), dt, std::move(shape), {}};
  t.bytes.resize(n);
  std::memcpy(t.bytes.data(), p, n);
  return t;
}

EncodedTensor i64_tensor(std::string name, std::vector<int64_t> v) {
  const int64_t n = int64_t(v.size());
  return bytes_tensor(std::move(name), DType::I64, {n}, v.data(), v.size() * 8);
}

// Scales [out, ng] transposed to [ng, out].
std::vector<float> scales_t(const QuantizedWeight& w) {
  const int64_t ng = w.n_groups();
  std::vector<float> t(size_t(ng * w.out));
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t g = 0; g < ng; ++g) t[size_t(g * w.out + o)] = w.scales[size_t(o * ng + g)];
  return t;
}

bool trivial_g_idx(const std::vector<int32_t>& g_idx, int64_t group) {
  if (g_idx.empty()) return true;
  if (group <= 0) return false;
  for (size_t c = 0; c < g_idx.size(); ++c)
    if (g_idx[c] != int32_t(int64_t(c) / group)) return false;
  return true;
}

void add_bias(std::vector<EncodedTensor>& out, const std::string& prefix, const QuantizedWeight& w) {
  if (!w.bias.empty())
    out.push_back(float_tensor(prefix + ".bias", DType::F32, {w.out}, w.bias));
}

// ------------------------------------------------------------------------------------------
// Reading helpers

TensorRef need(const TensorReader& r, const std::string& name) {
  if (!r.has(name)) fail(r.origin(), ": missing tensor ", name);
  return r.get(name);
}

void expect_dtype(const TensorReader& r, const TensorRef& t, std::initializer_list<DType> ok) {
  for (DType d : ok)
    if (t.info.dtype == d) return;
  std::string names;
  for (DType d : ok) names += (names.empty() ? "" : " or ") + std::string(dtype_traits(d).safetensors);
  fail(r.origin(), ": tensor ", t.info.name, " has dtype ", dtype_traits(t.info.dtype).safetensors,
       ", expected ", names);
}

void expect_shape(const TensorReader& r, const TensorRef& t, const Shape& s) {
  if (t.info.shape != s)
    fail(r.origin(), ": tensor ", t.info.name, " has shape ", shape_str(t.info.shape),
         ", expected ", shape_str(s));
}

// Float tensor (f32/f16/bf16) as f32; every value must be finite.
std::vector<float> read_floats(const TensorReader& r, const TensorRef& t) {
  expect_dtype(r, t, {DType::F32, DType::F16, DType::BF16});
  std::vector<float> v = t.to_f32();
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      fail(r.origin(), ": tensor ", t.info.name, " has a non-finite value at index ", i);
  return v;
}

std::vector<uint32_t> read_words(const TensorReader& r, const TensorRef& t) {
  expect_dtype(r, t, {DType::I32});
  std::vector<uint32_t> w(size_t(t.info.numel()));
  if (!w.empty()) std::memcpy(w.data(), t.data, w.size() * 4);  // an empty tensor has no data pointer
  return w;
}

// Scalar float tensor (numel 1), e.g. input_scale.
float read_scalar(const TensorReader& r, const std::string& name) {
  TensorRef t = need(r, name);
  if (t.info.numel() != 1)
    fail(r.origin(), ": tensor ", name, " has shape ", shape_str(t.info.shape), ", expected [1]");
  const float v = read_floats(r, t)[0];
  if (!(v > 0.0f)) fail(r.origin(), ": tensor ", name, " is ", v, ", expected a value > 0");
  return v;
}

// out/in given by the caller (>= 0) must agree with what the tensors say.
int64_t agree(const TensorReader& r, const std::string& what, int64_t given, int64_t found) {
  if (given >= 0 && given != found)
    fail(r.origin(), ": ", what, " is ", found, " in the checkpoint, but the model expects ", given);
  return found;
}

void read_block_scales(const TensorReader& r, const TensorRef& t, int64_t bo, int64_t bi,
                       QuantizedWeight& w) {
  const int64_t rb = (w.out + bo - 1) / bo;
  const int64_t cb = (w.in + bi - 1) / bi;
  expect_shape(r, t, {rb, cb});
  const std::vector<float> s = read_floats(r, t);
  w.group = bi;
  w.scales.resize(size_t(w.out * cb));
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t g = 0; g < cb; ++g) w.scales[size_t(o * cb + g)] = s[size_t((o / bo) * cb + g)];
}

void read_bias(const TensorReader& r, const std::string& prefix, QuantizedWeight& w) {
  const std::string name = prefix + ".bias";
  if (!r.has(name)) return;
  TensorRef t = r.get(name);
  expect_shape(r, t, {w.out});
  w.bias = read_floats(r, t);
}

void finish_decode(const TensorReader& r, const std::string& prefix, QuantizedWeight& w) {
  if (trivial_g_idx(w.g_idx, w.group)) w.g_idx.clear();
  try {
    w.validate(prefix);
  } catch (const Error& e) {
    fail(r.origin(), ": ", e.what());
  }
}

int json_int(const json& j, const char* key, int def, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number_integer()) fail(origin, ": quantization_config.", key, " is not an integer");
  return j[key].get<int>();
}

bool json_bool(const json& j, const char* key, bool def, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) fail(origin, ": quantization_config.", key, " is not a boolean");
  return j[key].get<bool>();
}

std::string json_str(const json& j, const char* key, const std::string& def) {
  if (!j.contains(key) || !j[key].is_string()) return def;
  return j[key].get<std::string>();
}

std::string regex_escape(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string o;
  for (char c : s) {
    if (special.find(c) != std::string::npos) o += '\\';
    o += c;
  }
  return o;
}

GroupParams read_group_params(const TensorReader& r, const std::string& prefix, int64_t ng,
                              int64_t zcols, int64_t out) {
  TensorRef zt = need(r, prefix + ".qzeros");
  expect_dtype(r, zt, {DType::I32});
  expect_shape(r, zt, {ng, zcols});
  TensorRef st = need(r, prefix + ".scales");
  expect_shape(r, st, {ng, out});
  return {read_floats(r, st), read_words(r, zt)};
}

std::vector<int32_t> read_g_idx(const TensorReader& r, const std::string& name, int64_t in) {
  TensorRef gt = r.get(name);
  expect_dtype(r, gt, {DType::I32, DType::I64});
  expect_shape(r, gt, {in});
  std::vector<int32_t> g(static_cast<size_t>(in));
  for (int64_t i = 0; i < in; ++i) g[size_t(i)] = load_index(gt, size_t(i));
  return g;
}

Shape two_d(const TensorReader& r, const TensorRef& t) {
  if (t.info.shape.size() != 2)
    fail(r.origin(), ": tensor ", t.info.name, " has shape ", shape_str(t.info.shape), ", expected 2-D");
  return t.info.shape;
}

Shape plain_shape(const TensorReader& r, const std::string& prefix, const json&) {
  return two_d(r, need(r, prefix + ".weight"));
}

}  // namespace llmc::layout_io
