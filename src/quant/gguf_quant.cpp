// quant/gguf_quant.cpp — GGUF presets and the GGUF quantize run (contracts in gguf_quant.h).
#include "quant/gguf_quant.h"

#include <chrono>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"

namespace llmc {
namespace {

bool ends_with(const std::string& s, const char* suf) {
  const std::string t = suf;
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
bool is(const GgufTensorSite& s, const char* part) { return ends_with(s.gguf_name, part); }
// llama.cpp's use_more_bits: the first and last eighth of the blocks and every third between.
bool more_bits(const GgufTensorSite& s) {
  const int i = s.layer, n = s.n_layers;
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

GgmlType q8_0(const GgufTensorSite&) { return GgmlType::Q8_0; }
GgmlType q6_k(const GgufTensorSite&) { return GgmlType::Q6_K; }
GgmlType q5_k_m(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if ((is(s, ".attn_v.weight") || is(s, ".ffn_down.weight")) && more_bits(s)) return GgmlType::Q6_K;
  return GgmlType::Q5_K;
}
GgmlType q4_k_m(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if ((is(s, ".attn_v.weight") || is(s, ".ffn_down.weight")) && more_bits(s)) return GgmlType::Q6_K;
  return GgmlType::Q4_K;
}
GgmlType q3_k_m(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if (is(s, ".attn_v.weight")) return s.layer < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
  if (is(s, ".ffn_down.weight")) return s.layer < s.n_layers / 16 ? GgmlType::Q5_K : GgmlType::Q4_K;
  if (is(s, ".attn_output.weight")) return GgmlType::Q4_K;
  return GgmlType::Q3_K;
}
GgmlType q2_k(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if (is(s, ".attn_v.weight") || is(s, ".ffn_down.weight") || is(s, ".attn_output.weight")) return GgmlType::Q3_K;
  return GgmlType::Q2_K;
}

constexpr GgufPreset kPresets[] = {
    {"Q8_0", GgufFileType::MOSTLY_Q8_0, q8_0},       {"Q6_K", GgufFileType::MOSTLY_Q6_K, q6_k},
    {"Q5_K_M", GgufFileType::MOSTLY_Q5_K_M, q5_k_m}, {"Q4_K_M", GgufFileType::MOSTLY_Q4_K_M, q4_k_m},
    {"Q3_K_M", GgufFileType::MOSTLY_Q3_K_M, q3_k_m}, {"Q2_K", GgufFileType::MOSTLY_Q2_K, q2_k},
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

const GgufPreset* find_gguf_preset(const std::string& name) {
  for (const GgufPreset& p : kPresets)
    if (name == p.name) return &p;
  return nullptr;
}

GgmlType gguf_row_fallback(GgmlType t, int64_t row) {
  if (row % ggml_traits(t).block_size == 0) return t;
  switch (t) {
    case GgmlType::Q2_K: case GgmlType::Q3_K: return GgmlType::Q4_0;
    case GgmlType::Q4_K: return GgmlType::Q5_0;
    case GgmlType::Q5_K: return GgmlType::Q5_1;
    case GgmlType::Q6_K: return GgmlType::Q8_0;
    default: return t;
  }
}

QuantizeResult quantize_gguf(const QuantizeOptions& opt, const Checkpoint& ck, const MethodInfo& method,
                             const QuantSpec& spec) {
  const double t0 = now_s();
  const GgufPreset* preset = find_gguf_preset(method.gguf_preset ? method.gguf_preset : "");
  LLMC_CHECK(preset != nullptr, "method ", method.name, " has no GGUF preset");
  QuantizeResult res;
  res.output = opt.output;
  res.method = method.name;
  res.layout = spec.layout;
  res.layers = int(ck.config.value("num_hidden_layers", 0));
  GgufWriteOptions go;
  go.file_type = preset->file_type;
  go.progress = !quiet();
  go.choose = [preset](const GgufTensorSite& s) { return gguf_row_fallback(preset->choose(s), s.shape.back()); };
  AtomicPath ap(opt.output);
  const GgufWriteStats st = write_gguf_model(ck, ap.temp(), go);
  ap.commit();
  for (const TensorInfo& t : ck.tensors->list()) res.bf16_bytes += uint64_t(t.numel()) * 2;
  res.out_bytes = st.bytes;
  for (const auto& [name, type] : st.types)
    if (name.find(".weight") != std::string::npos && ggml_type_by_name(type)->block_size > 1) ++res.quantized_linears;
  res.quantize_seconds = res.seconds_write = st.seconds;
  res.seconds = now_s() - t0;
  res.peak_rss = peak_rss_bytes();
  res.vllm_why_not = "a GGUF file is for llama.cpp (and Ollama, LM Studio), not vLLM's safetensors loaders";
  res.report = {{"method", method.name},
                {"gguf", {{"preset", preset->name}, {"types", st.types}, {"type_counts", st.type_counts}}},
                {"bytes", st.bytes},
                {"bf16_bytes", res.bf16_bytes}};
  return res;
}

}  // namespace llmc
