// quant/method.cpp — the method table, spec resolution and the BlockJob helpers.
#include "quant/method.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/threads.h"
#include "model/arch.h"
#include "quant/method_awq.h"
#include "quant/method_gptq.h"
#include "quant/method_simple.h"
#include "quant/rtn.h"

namespace llmc {

namespace {

std::vector<MethodInfo> build_table() {
  std::vector<MethodInfo> t;
  // ---- simple PTQ backend (weight-only, round to nearest) ----
  {
    MethodInfo m;
    m.name = "int8";
    m.default_bits = 8;
    m.allowed_bits = {8};
    m.default_group = -1;
    m.group_configurable = true;
    m.layouts = {"pack-quantized"};
    m.description = "W8A16: int8 weights, per-channel symmetric (absmax/127), round to nearest";
    m.factory = make_int_rtn_quantizer;
    t.push_back(m);
  }
  {
    MethodInfo m;
    m.name = "int2";
    m.default_bits = 2;
    m.allowed_bits = {2};
    m.default_group = 64;
    m.group_configurable = true;
    m.default_symmetric = false;
    m.layouts = {"pack-quantized"};
    m.description =
        "W2A16: 2-bit weights, group 64 asymmetric, per-group MSE clip search, round to nearest";
    m.factory = make_int_rtn_quantizer;
    t.push_back(m);
  }
  {
    MethodInfo m;
    m.name = "fp16";
    m.default_bits = 16;
    m.allowed_bits = {16};
    m.layouts = {};
    m.dense_dtype = DType::F16;
    m.description = "plain float16 checkpoint (every float tensor cast to fp16), no quantization";
    m.factory = make_dense_quantizer;
    t.push_back(m);
  }
  // ---- FP8 / INT8 with activation quantization (compressed-tensors) ----
  {
    MethodInfo m;
    m.name = "fp8_static";
    m.default_bits = 8;
    m.allowed_bits = {8};
    m.default_group = 0;
    m.needs_calibration = true;
    m.layouts = {"float-quantized"};
    m.description =
        "W8A8 FP8 e4m3: per-tensor weight scale with GPTQ rounding, static per-tensor input "
        "scale from calibration data";
    m.factory = make_fp8_static_quantizer;
    t.push_back(m);
  }
  {
    MethodInfo m;
    m.name = "fp8_dynamic";
    m.default_bits = 8;
    m.allowed_bits = {8};
    m.default_group = -1;
    m.layouts = {"float-quantized"};
    m.needs_calibration = true;
    m.calibration_for = fp8_dynamic_needs_calibration;
    m.description =
        "W8A8 FP8 e4m3: per-channel weight scale (GPTQ rounding on calibration data; "
        "--method-opt weights=rtn needs none), dynamic per-token activations";
    m.factory = make_fp8_dynamic_quantizer;
    t.push_back(m);
  }
  {
    MethodInfo m;
    m.name = "int8_dynamic";
    m.default_bits = 8;
    m.allowed_bits = {8};
    m.default_group = -1;
    m.layouts = {"int-quantized"};
    m.description =
        "W8A8 int8: per-channel symmetric weights (absmax/127), dynamic per-token symmetric "
        "int8 activations";
    m.factory = make_int8_dynamic_quantizer;
    t.push_back(m);
  }
  // ---- GPTQ / AWQ (weight-only, calibrated; quant/method_gptq.h, quant/method_awq.h) ----
  {
    MethodInfo m;
    m.name = "int4_gptq";
    m.default_bits = 4;
    m.allowed_bits = {2, 3, 4, 8};
    m.default_group = 128;
    m.group_configurable = true;
    m.symmetry_configurable = true;
    // Act-order that costs nothing at inference (static groups, down_proj permutation folded
    // into gate/up rows: no g_idx); measured better at every width (docs/methods.md).
    m.default_act_order = true;
    m.needs_calibration = true;
    m.layouts = {"gptq", "compressed-tensors", "pack-quantized"};
    m.default_layout = gptq_default_layout;
    m.description =
        "GPTQ: Hessian-guided int weights (default 4-bit, group 128, symmetric), true-sequential, "
        "act-order without g_idx; --asym writes compressed-tensors";
    m.factory = make_gptq_quantizer;
    t.push_back(m);
  }
  {
    MethodInfo m;
    m.name = "int4_awq";
    m.default_bits = 4;
    m.allowed_bits = {2, 3, 4, 8};
    m.default_group = 128;
    m.group_configurable = true;
    m.default_symmetric = false;
    m.symmetry_configurable = true;
    m.needs_calibration = true;
    m.layouts = {"awq", "compressed-tensors", "pack-quantized"};
    m.default_layout = awq_default_layout;
    m.description =
        "AWQ: activation-aware per-channel scales folded into norms/linears, per-group clipping "
        "search, int weights (default 4-bit, group 128, asymmetric)";
    m.factory = make_awq_quantizer;
    t.push_back(m);
  }
  return t;
}

}  // namespace

const std::vector<MethodInfo>& method_table() {
  static const std::vector<MethodInfo> t = build_table();
  return t;
}

std::string method_names() {
  std::string s;
  for (const auto& m : method_table()) s += (s.empty() ? "" : ", ") + m.name;
  return s;
}

const MethodInfo& find_method(const std::string& name) {
  for (const auto& m : method_table())
    if (m.name == name) return m;
  fail("unknown quantization method '", name, "' (known: ", method_names(), ")");
}

bool needs_calibration(const MethodInfo& m, const QuantSpec& s) {
  return m.calibration_for ? m.calibration_for(s) : m.needs_calibration;
}

QuantSpec resolve_spec(const MethodInfo& m, const QuantOverrides& o) {
  QuantSpec s;
  s.method = m.name;
  s.act_order = m.default_act_order;
  s.bits = o.bits.value_or(m.default_bits);
  if (std::find(m.allowed_bits.begin(), m.allowed_bits.end(), s.bits) == m.allowed_bits.end()) {
    std::string allowed;
    for (int b : m.allowed_bits) allowed += (allowed.empty() ? "" : ", ") + std::to_string(b);
    fail("method ", m.name, " does not support --bits ", s.bits, " (supported: ", allowed, ")");
  }
  s.group = m.default_group;
  if (o.group) {
    if (!m.group_configurable && *o.group != m.default_group)
      fail("method ", m.name, " has a fixed granularity; --group-size is not accepted");
    if (*o.group == 0 || *o.group < -1)
      fail("--group-size must be a positive group size or -1 (per channel), got ", *o.group);
    s.group = *o.group;
  }
  s.symmetric = m.default_symmetric;
  if (o.symmetric) {
    if (!m.symmetry_configurable && *o.symmetric != m.default_symmetric)
      fail("method ", m.name, " is always ", m.default_symmetric ? "symmetric" : "asymmetric",
           "; --", *o.symmetric ? "sym" : "asym", " is not accepted");
    s.symmetric = *o.symmetric;
  }
  if (o.layout.empty()) {
    s.layout = m.layouts.empty() ? std::string() : m.layouts.front();
    if (m.default_layout) s.layout = m.default_layout(s);
  } else {
    if (std::find(m.layouts.begin(), m.layouts.end(), o.layout) == m.layouts.end()) {
      std::string known;
      for (const auto& l : m.layouts) known += (known.empty() ? "" : ", ") + l;
      fail("method ", m.name, " cannot write layout '", o.layout, "' (",
           known.empty() ? std::string("it writes a plain dense checkpoint") : "supported: " + known,
           ")");
    }
    s.layout = o.layout;
  }
  s.seed = o.seed;
  if (o.damp) {
    if (!(*o.damp >= 0.0 && *o.damp < 10.0)) fail("--damp must be in [0, 10), got ", *o.damp);
    s.damp = *o.damp;
  }
  if (o.act_order) s.act_order = *o.act_order;
  if (o.true_sequential) s.true_sequential = *o.true_sequential;
  if (!o.extra.is_null() && !o.extra.empty()) {
    if (!o.extra.is_object()) fail("method options must be key/value pairs");
    s.extra = o.extra;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// BlockJob

BlockJob::BlockJob(Model& m, int l, const QuantSpec& s, BlockWeights& w)
    : model(m), layer(l), spec(s), weights(w), ignored([](LinearSlot) { return false; }) {}

std::string BlockJob::module_name(LinearSlot s) const {
  const ArchSpec& a = arch_for(model.config().architecture, "model");
  return std::string(a.layer_prefix) + std::to_string(layer) + "." + linear_slot_name(s);
}

DenseLinear& BlockJob::dense(LinearSlot s) const {
  auto* d = dynamic_cast<DenseLinear*>(weights.linear[int(s)].get());
  if (!d) fail(module_name(s), ": expected a dense (unquantized) weight");
  return *d;
}

void BlockJob::check_finite(LinearSlot s) const {
  const DenseLinear& d = dense(s);
  llmc::check_finite(d.weight().data(), int64_t(d.weight().size()), module_name(s) + ".weight");
}

namespace {
// Thrown by for_each_input's hook to end a CPU block run early; never escapes BlockJob.
struct StopRun {};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Wraps a hook so its time counts as statistics (GPU work synchronized at its boundaries).
LinearHook timed_hook(const LinearHook* hook, bool device, double* seconds) {
  if (!hook || !*hook) return nullptr;
  return [hook, device, seconds](int layer, LinearSlot s, const backend::MatView& x) {
    if (device) backend::dev::sync();
    const double t = now_s();
    (*hook)(layer, s, x);
    if (device) backend::dev::sync();
    *seconds += now_s() - t;
  };
}

// Host copy of samples [first, first + count) of the device inputs (CPU fallback).
std::vector<float> download_samples(const float* dev, int64_t per, int first, int count) {
  std::vector<float> h(size_t(count) * size_t(per));
  std::vector<float> tmp;
  const backend::MatView v{dev + int64_t(first) * per, count, per, backend::Device::CUDA};
  const float* p = backend::host_rows(v, &tmp);
  std::copy(p, p + h.size(), h.begin());
  return h;
}
}  // namespace

void BlockJob::run(const LinearHook* hook, std::vector<float>* out, const float* x, int first,
                   int count) {
  if (count < 0) count = n_samples - first;
  const int64_t h = hidden();
  const int64_t per = int64_t(seq) * h;
  const double t0 = now_s(), s0 = seconds_stats;
  std::vector<float> fallback;  // host copy of device inputs when the block cannot run there
  if (!x && !inputs && dev_inputs) {
    LLMC_CHECK(seq > 0 && first >= 0 && count >= 0 && first + count <= n_samples,
               "block run outside the calibration samples");
    const LinearHook th = timed_hook(hook, true, &seconds_stats);
    bool ok;
    if (out) {
      backend::DeviceArray tmp(std::max<int64_t>(1, int64_t(count) * per));
      ok = model.run_block_device(layer, dev_inputs + int64_t(first) * per, tmp.data(), count,
                                  seq, batch, th ? &th : nullptr);
      if (ok) {
        out->resize(size_t(count) * per);
        tmp.download(out->data(), int64_t(count) * per);
      }
    } else {
      ok = model.run_block_device(layer, dev_inputs + int64_t(first) * per, nullptr, count, seq,
                                  batch, th ? &th : nullptr);
    }
    if (ok) {
      seconds_forward += now_s() - t0 - (seconds_stats - s0);
      return;
    }
    fallback = download_samples(dev_inputs, per, first, count);
    x = fallback.data();
    first = 0;
  }
  if (!x) x = inputs;
  LLMC_CHECK(x != nullptr && seq > 0 && first >= 0 && count >= 0, "block run without inputs");
  const LinearHook th = timed_hook(hook, false, &seconds_stats);
  if (out) out->assign(size_t(count) * per, 0.0f);
  const int b = std::max(1, batch);
  std::vector<float> buf;
  for (int c0 = 0; c0 < count; c0 += b) {
    const int n = std::min(b, count - c0);
    const float* src = x + size_t(first + c0) * per;
    buf.assign(src, src + size_t(n) * per);
    model.run_block(layer, buf.data(), n, seq, th ? &th : nullptr);
    if (out) std::copy(buf.begin(), buf.end(), out->begin() + size_t(c0) * per);
  }
  seconds_forward += now_s() - t0 - (seconds_stats - s0);
}

void BlockJob::forward_device(float* dev_out) {
  LLMC_CHECK(dev_inputs != nullptr && seq > 0, "forward_device without device inputs");
  const double t0 = now_s();
  const int64_t per = int64_t(seq) * hidden();
  if (!model.run_block_device(layer, dev_inputs, dev_out, n_samples, seq, batch)) {
    std::vector<float> y;
    run(nullptr, &y);
    backend::dev::upload_async(dev_out, y.data(), int64_t(n_samples) * per);
  }
  backend::dev::sync();
  seconds_forward += now_s() - t0;
}

void BlockJob::for_each_input(LinearSlot slot,
                              const std::function<void(const backend::MatView&)>& fn) {
  LLMC_CHECK(has_inputs() && seq > 0, "for_each_input without calibration inputs");
  const double t0 = now_s(), s0 = seconds_stats;
  const int64_t per = int64_t(seq) * hidden();
  const int b = std::max(1, batch);
  if (on_device()) {
    LinearHook hook = [&](int, LinearSlot s, const backend::MatView& x) {
      if (s == slot) fn(x);
    };
    const LinearHook th = timed_hook(&hook, true, &seconds_stats);
    if (model.run_block_device(layer, dev_inputs, nullptr, n_samples, seq, b, &th, int(slot))) {
      seconds_forward += now_s() - t0 - (seconds_stats - s0);
      return;
    }
  }
  std::vector<float> fallback;
  const float* src_all = inputs;
  if (!src_all) {
    fallback = download_samples(dev_inputs, per, 0, n_samples);
    src_all = fallback.data();
  }
  std::vector<float> buf;
  LinearHook hook = [&](int, LinearSlot s, const backend::MatView& x) {
    if (s != slot) return;
    const double t = now_s();
    fn(x);
    seconds_stats += now_s() - t;
    throw StopRun{};
  };
  for (int c0 = 0; c0 < n_samples; c0 += b) {
    const int n = std::min(b, n_samples - c0);
    const float* src = src_all + size_t(c0) * per;
    buf.assign(src, src + size_t(n) * per);
    try {
      model.run_block(layer, buf.data(), n, seq, &hook);
    } catch (const StopRun&) {
    }
  }
  seconds_forward += now_s() - t0 - (seconds_stats - s0);
}

void BlockJob::commit(LinearSlot s, QuantizedWeight qw, nlohmann::json rep) {
  LLMC_CHECK(!ignored(s), "method quantized an ignored slot ", module_name(s));
  const Linear& cur = *weights.linear[int(s)];
  if (qw.out != cur.out_features() || qw.in != cur.in_features())
    fail(module_name(s), ": quantized weight is [", qw.out, ", ", qw.in, "] but the layer is [",
         cur.out_features(), ", ", cur.in_features(), "]");
  if (qw.bias.empty()) {
    if (auto* d = dynamic_cast<const DenseLinear*>(&cur)) qw.bias = d->bias();
  }
  weights.linear[int(s)] = std::make_shared<SimQuantLinear>(qw);
  quantized[int(s)] = std::move(qw);
  report[int(s)] = std::move(rep);
}

// ---------------------------------------------------------------------------------------------
// SimQuantLinear

SimQuantLinear::SimQuantLinear(std::vector<float> w, int64_t out, int64_t in, ActQuant act,
                               float input_scale, std::vector<float> bias)
    : w_(std::move(w)), b_(std::move(bias)), out_(out), in_(in), act_(act),
      input_scale_(input_scale) {
  LLMC_CHECK(int64_t(w_.size()) == out * in, "SimQuantLinear weight size");
  LLMC_CHECK(b_.empty() || int64_t(b_.size()) == out, "SimQuantLinear bias size");
}

SimQuantLinear::SimQuantLinear(const QuantizedWeight& qw)
    : SimQuantLinear(qw.dequantize(), qw.out, qw.in, qw.act, qw.input_scale, qw.bias) {}

void SimQuantLinear::forward(const float* x, int64_t rows, float* y) const {
  const float* src = x;
  std::vector<float> xq;
  if (act_ != ActQuant::None) {
    xq.assign(x, x + rows * in_);
    quantize_activations(act_, input_scale_, xq.data(), rows, in_);
    src = xq.data();
  }
  gemm_xwt(src, rows, in_, w_.data(), out_, y);
  if (!b_.empty()) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out_; ++o) y[r * out_ + o] += b_[o];
  }
}

}  // namespace llmc
