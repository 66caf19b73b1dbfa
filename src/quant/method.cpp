// quant/method.cpp — the method table, spec resolution and the BlockJob helpers.
#include "quant/method.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string_view>

#include "core/error.h"
#include "core/threads.h"
#include "model/arch.h"
#include "quant/method_awq.h"
#include "quant/method_gptq.h"
#include "quant/method_simple.h"
#include "quant/rtn.h"

// Rows are designated initializers that name only the fields they set (the others keep the
// defaults of MethodInfo / MethodOpt), as ggml's type_traits rows do.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace llmc {

namespace {

using Kind = MethodOpt::Kind;
constexpr double kIntMax = 2147483647.0;

MethodOpt opt_int(const char* key, int64_t def, double lo, double hi = kIntMax,
                  const char* only_with = nullptr) {
  return {.key = key, .kind = Kind::Int, .def = def, .lo = lo, .hi = hi, .only_with = only_with};
}
MethodOpt opt_bool(const char* key, bool def, const char* only_with = nullptr) {
  return {.key = key, .kind = Kind::Bool, .def = def, .only_with = only_with};
}
MethodOpt opt_choice(const char* key, std::vector<std::string> choices,
                     const char* only_with = nullptr) {  // default: the first choice
  const std::string def = choices.front();
  return {.key = key, .kind = Kind::Choice, .def = def, .choices = std::move(choices),
          .only_with = only_with};
}

// GPTQ's keys (quant/method_gptq.h); AWQ takes them for --method-opt solver=gptq.
std::vector<MethodOpt> gptq_opts(const char* only_with) {
  return {opt_choice("act_order", {"permute", "static", "dynamic"}, only_with),
          opt_int("mse", 20, 0, 1000, only_with),
          opt_int("block_size", 128, 1, kIntMax, only_with),
          opt_bool("sym_full_range", true, only_with)};
}
std::vector<MethodOpt> with(std::vector<MethodOpt> a, const std::vector<MethodOpt>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
// fp8_static / fp8_dynamic (quant/method_fp8.cpp).
std::vector<MethodOpt> fp8_opts(bool is_static) {
  std::vector<MethodOpt> o = {opt_choice("weights", {"gptq_aa", "gptq", "rtn"}),
                              opt_int("search_rows", 2048, 1),
                              opt_bool("report_errors", true)};
  if (is_static) o.push_back(opt_bool("search", true));
  return o;
}

// The block pipeline never runs a GGUF row (quantize_model hands it to quantize_gguf).
std::unique_ptr<BlockQuantizer> gguf_not_a_block_method(const QuantSpec& s) {
  fail("method ", s.method, " writes GGUF through quantize_gguf, not the block pipeline");
}
MethodInfo gguf_row(const char* name, const char* preset, int bits, const char* description) {
  MethodInfo m;
  m.name = name;
  m.default_bits = bits;
  m.allowed_bits = {bits};
  m.default_group = 0;
  m.layouts = {"gguf"};
  m.opts = {opt_choice("rounding", {"gptq", "hdiag", "imatrix", "rtn"})};
  m.calibration_for = [](const QuantSpec& s) { return method_opt<std::string>(s, "rounding") != "rtn"; };
  m.uses = kUsesDamp;  // GPTQ rounding's damping
  m.uses_only_with = "rounding=gptq";
  m.gguf_preset = preset;
  m.description = description;
  m.factory = gguf_not_a_block_method;
  return m;
}

std::vector<MethodInfo> build_table() {
  return {
      // ---- simple PTQ backend (weight-only, round to nearest) ----
      {.name = "int8",
       .aios_backend = "ptq",
       .default_bits = 8,
       .allowed_bits = {8},
       .default_group = -1,
       .group_configurable = true,
       .layouts = {"pack-quantized"},
       .description = "W8A16: int8 weights, per-channel symmetric (absmax/127), round to nearest",
       .factory = make_int_rtn_quantizer},
      {.name = "int2",
       .aios_backend = "ptq",
       .default_bits = 2,
       .allowed_bits = {2},
       .default_group = 64,
       .group_configurable = true,
       .default_symmetric = false,
       .layouts = {"pack-quantized"},
       .description =
           "W2A16: 2-bit weights, group 64 asymmetric, per-group MSE clip search, round to nearest",
       .factory = make_int_rtn_quantizer},
      {.name = "fp16",
       .aios_backend = "ptq",
       .default_bits = 16,
       .allowed_bits = {16},
       .layouts = {},
       .dense_dtype = DType::F16,
       .description = "plain float16 checkpoint (every float tensor cast to fp16), no quantization",
       .factory = make_dense_quantizer},
      // ---- FP8 / INT8 with activation quantization (compressed-tensors) ----
      {.name = "fp8_static",
       .aios_backend = "angelslim",
       .default_bits = 8,
       .allowed_bits = {8},
       .default_group = 0,
       .uses = kUsesDamp | kUsesTrueSequential,
       .uses_only_with = "weights!=rtn",
       .opts = fp8_opts(/*is_static=*/true),
       .needs_calibration = true,
       .layouts = {"float-quantized"},
       .description =
           "W8A8 FP8 e4m3: per-tensor weight scale with GPTQ rounding, static per-tensor input "
           "scale from calibration data",
       .factory = make_fp8_static_quantizer},
      {.name = "fp8_dynamic",
       .aios_backend = "angelslim",
       .default_bits = 8,
       .allowed_bits = {8},
       .default_group = -1,
       .uses = kUsesDamp | kUsesTrueSequential,
       .uses_only_with = "weights!=rtn",
       .opts = fp8_opts(/*is_static=*/false),
       .needs_calibration = true,
       .calibration_for = fp8_dynamic_needs_calibration,
       .layouts = {"float-quantized"},
       .description =
           "W8A8 FP8 e4m3: per-channel weight scale (GPTQ rounding on calibration data; "
           "--method-opt weights=rtn needs none), dynamic per-token activations",
       .factory = make_fp8_dynamic_quantizer},
      {.name = "int8_dynamic",
       .aios_backend = "angelslim",
       .default_bits = 8,
       .allowed_bits = {8},
       .default_group = -1,
       .layouts = {"int-quantized"},
       .description =
           "W8A8 int8: per-channel symmetric weights (absmax/127), dynamic per-token symmetric "
           "int8 activations",
       .factory = make_int8_dynamic_quantizer},
      // ---- GPTQ / AWQ (weight-only, calibrated; quant/method_gptq.h, quant/method_awq.h) ----
      {.name = "int4_gptq",
       .aios_backend = "angelslim",
       .default_bits = 4,
       .allowed_bits = {2, 3, 4, 8},
       .default_group = 128,
       .group_configurable = true,
       .symmetry_configurable = true,
       // Act-order that costs nothing at inference (static groups, down_proj permutation folded
       // into gate/up rows: no g_idx); measured better at every width (docs/methods.md).
       .default_act_order = true,
       .uses = kUsesDamp | kUsesActOrder | kUsesTrueSequential,
       .opts = with({opt_choice("solver", {"gptq", "rtn"})}, gptq_opts(nullptr)),
       .needs_calibration = true,
       .layouts = {"gptq", "compressed-tensors", "pack-quantized"},
       .default_layout = gptq_default_layout,
       .description =
           "GPTQ: Hessian-guided int weights (default 4-bit, group 128, symmetric), "
           "true-sequential, act-order without g_idx; --asym writes compressed-tensors",
       .factory = make_gptq_quantizer},
      {.name = "int4_awq",
       .aios_backend = "angelslim",
       .default_bits = 4,
       .allowed_bits = {2, 3, 4, 8},
       .default_group = 128,
       .group_configurable = true,
       .default_symmetric = false,
       .symmetry_configurable = true,
       .uses = kUsesDamp | kUsesActOrder | kUsesTrueSequential,
       .uses_only_with = "solver=gptq",
       .opts = with({opt_int("grid", 20, 1, 1000), opt_int("clip_steps", 20, 0, 1000),
                     {.key = "max_shrink", .kind = Kind::Number, .def = 0.5, .lo = 0, .hi = 1,
                      .hi_open = true},
                     opt_int("loss_tokens", 2048, 1), opt_choice("loss", {"module", "linear"}),
                     opt_choice("solver", {"clip", "gptq"}), opt_bool("duo", true)},
                    gptq_opts("solver=gptq")),
       .needs_calibration = true,
       .layouts = {"awq", "compressed-tensors", "pack-quantized"},
       .default_layout = awq_default_layout,
       .description =
           "AWQ: activation-aware per-channel scales folded into norms/linears, per-group "
           "clipping search, int weights (default 4-bit, group 128, asymmetric)",
       .factory = make_awq_quantizer},
      // ---- GGUF presets (llama.cpp; quant/gguf_quant.h, mixes in docs/methods.md) ----
      gguf_row("q8_0", "Q8_0", 8, "GGUF Q8_0: every matrix (embeddings and output too) 8-bit, 32-value blocks"),
      gguf_row("q6_k", "Q6_K", 6, "GGUF Q6_K: every matrix Q6_K (6.56 bpw), Q8_0 where rows are not 256-multiples"),
      gguf_row("q5_k_m", "Q5_K_M", 5, "GGUF Q5_K_M: Q5_K, Q6_K for output and half the attn_v/ffn_down"),
      gguf_row("q4_k_m", "Q4_K_M", 4, "GGUF Q4_K_M: Q4_K, Q6_K for output and half the attn_v/ffn_down"),
      gguf_row("q3_k_m", "Q3_K_M", 3, "GGUF Q3_K_M: Q3_K, Q4_K/Q5_K attn_v, ffn_down, attn_output, Q6_K output"),
      gguf_row("q3_k", "Q3_K", 3, "GGUF uniform Q3_K: every matrix (embeddings and output too) Q3_K"),
      gguf_row("q2_k", "Q2_K", 2, "GGUF Q2_K: Q2_K, Q3_K attn_v/ffn_down/attn_output, Q6_K output"),
  };
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

std::string fmt_num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.10g", v);
  return b;
}

// "key=value" / "key!=value" (MethodOpt::only_with, MethodInfo::uses_only_with) against the
// spec's --method-opt values (defaults from the row).
bool condition_holds(const MethodInfo& m, const nlohmann::json& extra, const char* cond) {
  if (!cond) return true;
  const std::string c = cond;
  const size_t ne = c.find("!="), eq = c.find('=');
  const bool negate = ne != std::string::npos;
  const std::string key = c.substr(0, negate ? ne : eq);
  const std::string want = c.substr(negate ? ne + 2 : eq + 1);
  nlohmann::json v;
  if (extra.contains(key)) {
    v = extra.at(key);
  } else {
    for (const MethodOpt& o : m.opts)
      if (key == o.key) v = o.def;
  }
  const bool is = v.is_string() && v.get<std::string>() == want;
  return negate ? !is : is;
}

std::string condition_text(const char* cond) {
  const std::string c = cond;
  const size_t ne = c.find("!=");
  if (ne != std::string::npos)
    return "--method-opt " + c.substr(0, ne) + " other than " + c.substr(ne + 2);
  return "--method-opt " + c;
}

// Checks one --method-opt value against its row entry.
void check_method_opt(const MethodInfo& m, const MethodOpt& o, const nlohmann::json& v) {
  const std::string what = "method " + m.name + ": --method-opt " + o.key;
  switch (o.kind) {
    case Kind::Bool:
      if (!v.is_boolean()) fail(what, " must be true or false, got ", v.dump());
      return;
    case Kind::Choice: {
      const bool ok = v.is_string() && std::find(o.choices.begin(), o.choices.end(),
                                                 v.get<std::string>()) != o.choices.end();
      if (!ok) fail(what, " must be one of ", join(o.choices), ", got ", v.dump());
      return;
    }
    case Kind::Int:
    case Kind::Number: {
      const bool is_int = v.is_number_integer();
      if (o.kind == Kind::Int ? !is_int : !v.is_number())
        fail(what, " must be ", o.kind == Kind::Int ? "an integer" : "a number", ", got ",
             v.dump());
      const double x = v.get<double>();
      const bool ok = x >= o.lo && (o.hi_open ? x < o.hi : x <= o.hi);
      if (!ok) {
        if (o.hi >= kIntMax) fail(what, " must be >= ", fmt_num(o.lo), ", got ", v.dump());
        fail(what, " must be in [", fmt_num(o.lo), ", ", fmt_num(o.hi), o.hi_open ? ")" : "]",
             ", got ", v.dump());
      }
      return;
    }
  }
}

// A generic option given to a method that does not read it.
void check_uses(const MethodInfo& m, const nlohmann::json& extra, unsigned flag, bool given,
                const char* option) {
  if (!given) return;
  if (!(m.uses & flag))
    fail(option, " is not used by method ", m.name, "; leave it out");
  if (!condition_holds(m, extra, m.uses_only_with))
    fail(option, " is used by method ", m.name, " only with ", condition_text(m.uses_only_with));
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

std::vector<std::string> aios_methods(const std::string& backend) {
  std::vector<std::string> v;
  for (const auto& m : method_table())
    if (m.aios_backend && backend == m.aios_backend) v.push_back(m.name);
  return v;
}

const MethodInfo& find_method(const std::string& name) {
  for (const auto& m : method_table())
    if (m.name == name) return m;
  fail("unknown quantization method '", name, "' (known: ", method_names(), ")");
}

const MethodOpt& find_method_opt(const QuantSpec& spec, const char* key) {
  const MethodInfo& m = find_method(spec.method);
  for (const MethodOpt& o : m.opts)
    if (std::string_view(key) == o.key) return o;
  fail("method ", m.name, " has no option '", key, "'");
}

void check_method_options(const MethodInfo& m, const nlohmann::json& extra) {
  if (!extra.is_object()) fail("method options must be key/value pairs");
  std::vector<std::string> keys;
  for (const MethodOpt& o : m.opts) keys.push_back(o.key);
  for (const auto& [k, v] : extra.items()) {
    const MethodOpt* o = nullptr;
    for (const MethodOpt& x : m.opts)
      if (k == x.key) o = &x;
    if (!o) {
      if (keys.empty()) fail("method ", m.name, " takes no --method-opt (got '", k, "')");
      fail("method ", m.name, " has no option '", k, "' (known: ", join(keys), ")");
    }
    check_method_opt(m, *o, v);
    if (!condition_holds(m, extra, o->only_with))
      fail("method ", m.name, ": --method-opt ", k, " is used only with ",
           condition_text(o->only_with));
  }
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
    std::vector<std::string> allowed;
    for (int b : m.allowed_bits) allowed.push_back(std::to_string(b));
    fail("method ", m.name, " does not support --bits ", s.bits, ": --bits must be ",
         allowed.size() == 1 ? "" : "one of ", join(allowed));
  }
  s.group = m.default_group;
  if (o.group) {
    if (!m.group_configurable)
      fail("--group-size is not accepted by method ", m.name, ": it has a fixed granularity (",
           m.default_group == 0 ? "per tensor" : "per channel", ")");
    if (*o.group == 0 || *o.group < -1)
      fail("--group-size must be a positive group size or -1 (per channel), got ", *o.group);
    s.group = *o.group;
  }
  s.symmetric = m.default_symmetric;
  if (o.symmetric) {
    if (!m.symmetry_configurable)
      fail("--", *o.symmetric ? "sym" : "asym", " is not accepted by method ", m.name,
           ": it is always ", m.default_symmetric ? "symmetric" : "asymmetric");
    s.symmetric = *o.symmetric;
  }
  if (o.layout.empty()) {
    s.layout = m.layouts.empty() ? std::string() : m.layouts.front();
    if (m.default_layout) s.layout = m.default_layout(s);
  } else {
    if (std::find(m.layouts.begin(), m.layouts.end(), o.layout) == m.layouts.end()) {
      fail("method ", m.name, " cannot write layout '", o.layout, "' (",
           m.layouts.empty() ? std::string("it writes a plain dense checkpoint")
                             : "supported: " + join(m.layouts),
           ")");
    }
    s.layout = o.layout;
  }
  s.seed = o.seed;
  const nlohmann::json& extra = o.extra.is_null() ? nlohmann::json::object() : o.extra;
  check_method_options(m, extra);
  check_uses(m, extra, kUsesDamp, o.damp.has_value(), "--damp");
  check_uses(m, extra, kUsesActOrder, o.act_order.has_value(),
             o.act_order.value_or(true) ? "--act-order" : "--no-act-order");
  check_uses(m, extra, kUsesTrueSequential, o.true_sequential.has_value(),
             o.true_sequential.value_or(true) ? "--true-sequential" : "--no-true-sequential");
  if (o.damp) {
    if (!(*o.damp >= 0.0 && *o.damp < 1.0))
      fail("--damp must be in [0, 1) (a fraction of mean(diag H)), got ", *o.damp);
    s.damp = *o.damp;
  }
  if (o.act_order) s.act_order = *o.act_order;
  if (o.true_sequential) s.true_sequential = *o.true_sequential;
  s.moe_all_experts = o.moe_all_experts;
  if (o.moe_min_tokens) {
    if (*o.moe_min_tokens < 1) fail("--moe-min-tokens must be >= 1, got ", *o.moe_min_tokens);
    s.moe_min_tokens = *o.moe_min_tokens;
  }
  s.extra = extra;
  return s;
}

// ---------------------------------------------------------------------------------------------
// BlockJob

BlockJob::BlockJob(Model& m, int l, const QuantSpec& s, BlockWeights& w)
    : model(m), layer(l), spec(s), weights(w) {
  // Default: what the block layout quantizes (MoE routers stay dense).
  ignored = [this](LinearSlot x) { return !layout().at(x).quantize; };
  quantized.resize(size_t(layout().size()));
  report.resize(size_t(layout().size()));
}

std::string BlockJob::module_name(LinearSlot s) const {
  const ArchSpec& a = arch_for(model.config().architecture, "model");
  return std::string(a.layer_prefix) + std::to_string(layer) + "." + layout().at(s).name;
}

std::vector<LinearSlot> BlockJob::modules() const {
  std::vector<LinearSlot> v;
  for (int i = 0; i < num_modules(); ++i) v.push_back(LinearSlot(i));
  return v;
}

std::vector<LinearSlot> BlockJob::active(const InputGroup& g) const {
  std::vector<LinearSlot> v;
  for (int i : g.members)
    if (!ignored(LinearSlot(i))) v.push_back(LinearSlot(i));
  return v;
}

void BlockJob::note_expert(int e, int64_t tokens, const std::string& stats) {
  const size_t n = size_t(std::max(0, layout().num_experts));
  LLMC_CHECK(e >= 0 && size_t(e) < n, "note_expert: expert ", e);
  expert_tokens.resize(n, -1);
  expert_stats.resize(n);
  expert_tokens[size_t(e)] = tokens;
  expert_stats[size_t(e)] = stats;
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
  if (!model.run_block_device(layer, dev_inputs, dev_out, n_samples, seq, batch, nullptr, -1,
                              num_modules())) {
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
    if (model.run_block_device(layer, dev_inputs, nullptr, n_samples, seq, b, &th, int(slot),
                               int(slot))) {
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

void BlockJob::for_groups(const std::vector<int>& groups,
                          const std::function<void(int, const backend::MatView&)>& fn,
                          const std::function<void(int)>& reset) {
  const BlockLayout& L = layout();
  std::vector<int> key(size_t(L.size()), -1);  // module -> group whose input it reports
  std::vector<int> experts;
  for (int g : groups) {
    const InputGroup& ig = L.groups.at(size_t(g));
    key[size_t(ig.members.front())] = g;
    if (ig.expert >= 0) experts.push_back(ig.expert);
  }
  if (experts.empty() && groups.size() == 1) {
    const int g = groups.front();
    for_each_input(LinearSlot(L.groups[size_t(g)].members.front()),
                   [&](const backend::MatView& x) { fn(g, x); });
    return;
  }
  auto run_with = [&](const std::vector<bool>& want) {
    LinearHook hook = [&](int, LinearSlot s, const backend::MatView& x) {
      const int g = key[size_t(s)];
      if (g >= 0 && (want.empty() || want[size_t(g)])) fn(g, x);
    };
    run(&hook);
  };
  if (experts.empty()) {
    run_with({});
    return;
  }
  const std::vector<int64_t> c0 = model.routed_tokens(layer);
  std::vector<bool> all(size_t(L.num_experts), false);
  if (spec.moe_all_experts)
    for (int e : experts) all[size_t(e)] = true;
  model.set_expert_observation(all);
  try {
    run_with({});
  } catch (...) {
    model.set_expert_observation({});
    throw;
  }
  model.set_expert_observation({});
  const std::vector<int64_t> c1 = model.routed_tokens(layer);
  std::vector<bool> starved(size_t(L.num_experts), false), again(L.groups.size(), false);
  bool any = false;
  for (int g : groups) {
    const int e = L.groups[size_t(g)].expert;
    if (e < 0) continue;
    const int64_t n = c1[size_t(e)] - c0[size_t(e)];
    const bool low = !spec.moe_all_experts && n < std::max<int64_t>(1, spec.moe_min_tokens);
    note_expert(e, n, spec.moe_all_experts ? "all-tokens (--moe-calib all-experts)"
                      : low               ? "all-tokens (fallback: fewer than --moe-min-tokens)"
                                          : "routed");
    if (!low) continue;
    starved[size_t(e)] = true;
    again[size_t(g)] = any = true;
    reset(g);
  }
  if (!any) return;
  model.set_expert_observation(starved);
  try {
    run_with(again);
  } catch (...) {
    model.set_expert_observation({});
    throw;
  }
  model.set_expert_observation({});
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
  if (simulate) weights.linear[int(s)] = std::make_shared<SimQuantLinear>(qw);
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
