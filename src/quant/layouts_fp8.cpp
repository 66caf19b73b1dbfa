// quant/layouts_fp8.cpp — the vLLM fp8 row (read only). See layouts.h and docs/formats.md.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "quant/layouts_io.h"
#include "quant/packing.h"

namespace llmc::layout_io {

using nlohmann::json;

// ==========================================================================================
// vLLM fp8 (read only)

QuantizedWeight fp8_decode(const TensorReader& r, const std::string& prefix, int64_t out,
                           int64_t in, const json& qc) {
  const std::string origin = r.origin();
  TensorRef wt = need(r, prefix + ".weight");
  expect_dtype(r, wt, {DType::F8_E4M3});
  two_d(r, wt);
  QuantizedWeight w;
  w.kind = QKind::FP8;
  w.bits = 8;
  w.out = agree(r, prefix + " out_features", out, wt.info.shape[0]);
  w.in = agree(r, prefix + " in_features", in, wt.info.shape[1]);
  w.q8.resize(size_t(w.out * w.in));
  if (!w.q8.empty()) std::memcpy(w.q8.data(), wt.data, w.q8.size());  // empty: no data pointer
  const json& bs = qc.contains("weight_block_size") ? qc["weight_block_size"] : json();
  const bool block = bs.is_array();
  if (block) {
    if (bs.size() != 2 || !bs[0].is_number_integer() || !bs[1].is_number_integer() ||
        bs[0].get<int64_t>() <= 0 || bs[1].get<int64_t>() <= 0)
      fail(origin, ": fp8 weight_block_size must be two positive integers");
    const std::string inv = prefix + ".weight_scale_inv";
    const std::string sname = r.has(inv) ? inv : prefix + ".weight_scale";
    read_block_scales(r, need(r, sname), bs[0].get<int64_t>(), bs[1].get<int64_t>(), w);
  } else {
    TensorRef t = need(r, prefix + ".weight_scale");
    std::vector<float> s = read_floats(r, t);
    if (s.size() == 1) {
      w.group = 0;
    } else if (int64_t(s.size()) == w.out) {
      w.group = -1;
    } else {
      expect_shape(r, t, {1});
    }
    w.scales = s;
  }
  const std::string scheme = json_str(qc, "activation_scheme", "dynamic");
  if (scheme == "static") {
    w.act = ActQuant::FP8StaticTensor;
    w.input_scale = read_scalar(r, prefix + ".input_scale");
  } else if (scheme == "dynamic") {
    // vLLM: per-tensor dynamic for per-tensor weights; per-token-group (1 x block) for block
    // weights, simulated here per token.
    w.act = block ? ActQuant::FP8DynamicToken : ActQuant::FP8DynamicTensor;
  } else {
    fail(origin, ": fp8 activation_scheme '", scheme, "' is not supported (static, dynamic)");
  }
  read_bias(r, prefix, w);
  finish_decode(r, prefix, w);
  return w;
}


}  // namespace llmc::layout_io
