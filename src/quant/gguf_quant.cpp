// quant/gguf_quant.cpp — GGUF presets and the GGUF quantize run (contracts in gguf_quant.h).
#include "quant/gguf_quant.h"

#include <chrono>

#include "calib/calib_data.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "model/model.h"
#include "quant/hessian.h"
#include "tokenizer/tokenizer.h"

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

// The imatrix: for every linear (GGUF name) the diagonal of its input Hessian Σ x xᵀ over the
// calibration tokens, from the unquantized model (one HessianAccumulator per distinct input:
// q/k/v share one, gate/up share one), and for `output.weight` the final-normed hidden states.
std::map<std::string, std::vector<float>> collect_imatrix(const Checkpoint& ck, const QuantizeOptions& opt,
                                                          const QuantSpec& spec, QuantizeResult& res) {
  auto tok_it = ck.aux_files.find("tokenizer.json");
  if (tok_it == ck.aux_files.end())
    fail(opt.input.string(), ": no tokenizer.json (needed to tokenize calibration data for ", spec.method, ")");
  const Tokenizer tok = Tokenizer::from_json_text(tok_it->second, (opt.input / "tokenizer.json").string());
  std::unique_ptr<Model> model = Model::load(ck);
  const ModelConfig& cfg = model->config();
  std::string origin;
  const CalibWindows w = load_calibration_windows(opt.calibration_data, tok, opt.num_samples, opt.seq_len, spec.seed,
                                                  cfg.max_position_embeddings, &origin);
  log_info(cat("calibration: ", w.num_samples, " windows x ", w.seq_len, " tokens from ", origin));
  res.num_samples = w.num_samples;
  res.seq_len = w.seq_len;
  const int64_t H = cfg.hidden_size, per = int64_t(w.seq_len) * H;
  std::vector<float> x(w.ids.size() * size_t(H));
  model->embed(w.ids.data(), int64_t(w.ids.size()), x.data());
  std::map<std::string, std::vector<float>> imx;
  auto diag = [](const HessianAccumulator& a) {
    const std::vector<double> h = a.sum();
    std::vector<float> d(size_t(a.cols()));
    double mean = 0;
    for (int64_t j = 0; j < a.cols(); ++j) mean += (d[size_t(j)] = float(h[size_t(j * a.cols() + j)]));
    mean /= double(std::max<int64_t>(1, a.cols()));
    for (float& v : d) v += float(1e-6 * mean + 1e-30);  // never all-zero weights
    return d;
  };
  const int batch = std::max(1, opt.batch);
  Progress prog("imatrix", uint64_t(cfg.num_layers), "block");
  for (int i = 0; i < cfg.num_layers; ++i) {
    const BlockLayout& L = model->layout(i);
    std::map<int, HessianAccumulator> acc;  // by input group (one Hessian per shared input)
    std::vector<int> first(L.groups.size(), -1);  // the module whose hook call is counted
    for (int s = 0; s < L.size(); ++s)
      if (first[size_t(L.modules[size_t(s)].group)] < 0) first[size_t(L.modules[size_t(s)].group)] = s;
    const LinearHook hook = [&](int, LinearSlot s, const backend::MatView& v) {
      const int g = L.at(s).group;
      if (first[size_t(g)] != int(s)) return;  // the same rows, seen once
      acc.try_emplace(g, v.cols).first->second.add(v);
    };
    for (int s0 = 0; s0 < w.num_samples; s0 += batch) {
      const int n = std::min(batch, w.num_samples - s0);
      model->run_block(i, x.data() + int64_t(s0) * per, n, w.seq_len, &hook);
    }
    for (int s = 0; s < L.size(); ++s) {
      auto it = acc.find(L.modules[size_t(s)].group);
      if (it == acc.end()) continue;
      const std::string hf = cat("model.layers.", i, ".", L.modules[size_t(s)].name, ".weight");
      imx[gguf_tensor_name(hf)] = diag(it->second);
    }
    model->release_block(i);
    prog.step();
  }
  prog.finish();
  model->final_norm(x.data(), int64_t(w.ids.size()));
  HessianAccumulator out(H);
  out.add(x.data(), int64_t(w.ids.size()));
  imx["output.weight"] = diag(out);
  return imx;
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
  const std::string rounding = method_opt<std::string>(spec, "rounding");
  std::map<std::string, std::vector<float>> imx;
  if (rounding == "imatrix" || rounding == "hdiag") {
    go.importance_times_magnitude = rounding == "imatrix";
    const double tc = now_s();
    imx = collect_imatrix(ck, opt, spec, res);
    res.seconds_stats = now_s() - tc;
    go.importance = [&imx](const GgufTensorSite& s) -> const float* {
      auto it = imx.find(s.output_role ? std::string("output.weight") : s.gguf_name);
      return it == imx.end() || int64_t(it->second.size()) != s.shape.back() ? nullptr : it->second.data();
    };
  }
  AtomicPath ap(opt.output);
  const GgufWriteStats st = write_gguf_model(ck, ap.temp(), go);
  ap.commit();
  for (const TensorInfo& t : ck.tensors->list()) res.bf16_bytes += uint64_t(t.numel()) * 2;
  res.out_bytes = st.bytes;
  for (const auto& [name, type] : st.types)
    if (name.find(".weight") != std::string::npos && ggml_type_by_name(type)->block_size > 1) ++res.quantized_linears;
  res.seconds_write = st.seconds;
  res.quantize_seconds = res.seconds_stats + st.seconds;
  res.seconds = now_s() - t0;
  res.peak_rss = peak_rss_bytes();
  res.vllm_why_not = "a GGUF file is for llama.cpp (and Ollama, LM Studio), not vLLM's safetensors loaders";
  res.report = {{"method", method.name},
                {"gguf", {{"preset", preset->name}, {"rounding", rounding}, {"types", st.types},
                          {"type_counts", st.type_counts}}},
                {"bytes", st.bytes},
                {"bf16_bytes", res.bf16_bytes}};
  return res;
}

}  // namespace llmc
