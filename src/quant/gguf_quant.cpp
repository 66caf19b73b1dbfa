// quant/gguf_quant.cpp — GGUF presets and the GGUF quantize run (contracts in gguf_quant.h).
#include "quant/gguf_quant.h"

#include <chrono>
#include <functional>
#include <numeric>
#include <queue>

#include "calib/calib_data.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/threads.h"
#include "core/dtype.h"
#include "model/model.h"
#include "formats/gguf.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "tokenizer/tokenizer.h"

namespace llmc {
namespace {

bool is(const GgufTensorSite& s, GgufRole r) { return s.role == r; }
// llama.cpp's use_more_bits: the first and last eighth of the blocks and every third between.
bool more_bits(const GgufTensorSite& s) {
  const int i = s.layer, n = s.n_layers;
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

GgmlType q8_0(const GgufTensorSite&) { return GgmlType::Q8_0; }
GgmlType q6_k(const GgufTensorSite&) { return GgmlType::Q6_K; }
GgmlType q5_k_m(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if ((is(s, GgufRole::AttnV) || is(s, GgufRole::FfnDown)) && more_bits(s)) return GgmlType::Q6_K;
  return GgmlType::Q5_K;
}
GgmlType q4_k_m(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if ((is(s, GgufRole::AttnV) || is(s, GgufRole::FfnDown)) && more_bits(s)) return GgmlType::Q6_K;
  return GgmlType::Q4_K;
}
GgmlType q3_k_m(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if (is(s, GgufRole::AttnV)) return s.layer < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
  if (is(s, GgufRole::FfnDown)) return s.layer < s.n_layers / 16 ? GgmlType::Q5_K : GgmlType::Q4_K;
  if (is(s, GgufRole::AttnOutput)) return GgmlType::Q4_K;
  return GgmlType::Q3_K;
}
GgmlType q3_k(const GgufTensorSite&) { return GgmlType::Q3_K; }
GgmlType q2_k(const GgufTensorSite& s) {
  if (s.output_role) return GgmlType::Q6_K;
  if (is(s, GgufRole::AttnV) || is(s, GgufRole::FfnDown) || is(s, GgufRole::AttnOutput)) return GgmlType::Q3_K;
  return GgmlType::Q2_K;
}

constexpr GgufPreset kPresets[] = {
    {"Q8_0", GgufFileType::MOSTLY_Q8_0, q8_0},       {"Q6_K", GgufFileType::MOSTLY_Q6_K, q6_k},
    {"Q5_K_M", GgufFileType::MOSTLY_Q5_K_M, q5_k_m}, {"Q4_K_M", GgufFileType::MOSTLY_Q4_K_M, q4_k_m},
    {"Q3_K_M", GgufFileType::MOSTLY_Q3_K_M, q3_k_m}, {"Q3_K", GgufFileType::MOSTLY_Q3_K_S, q3_k},
    {"Q2_K", GgufFileType::MOSTLY_Q2_K, q2_k},
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One calibration pass of the unquantized model: for every linear the input Hessian over the
// calibration tokens (one HessianAccumulator per distinct input: q/k/v share one, gate/up share
// one), handed to `on` with the linear's HF weight name once its block has run; then the final
// normed hidden states' for the output-role tensor (lm_head, or the tied embeddings).
using OnHessian = std::function<void(const std::string& hf_weight, const HessianAccumulator&)>;
void calibration_pass(const Checkpoint& ck, const QuantizeOptions& opt, const QuantSpec& spec, QuantizeResult& res,
                      const OnHessian& on) {
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
  const int batch = std::max(1, opt.batch);
  Progress prog("calibration", uint64_t(cfg.num_layers), "block");
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
    model->release_block(i);
    for (int s = 0; s < L.size(); ++s) {
      auto it = acc.find(L.modules[size_t(s)].group);
      if (it != acc.end()) on(cat("model.layers.", i, ".", L.modules[size_t(s)].name, ".weight"), it->second);
    }
    prog.step();
  }
  prog.finish();
  model->final_norm(x.data(), int64_t(w.ids.size()));
  HessianAccumulator out(H);
  out.add(x.data(), int64_t(w.ids.size()));
  on(ck.tensors->has("lm_head.weight") && !ck.config.value("tie_word_embeddings", false) ? "lm_head.weight"
                                                                                         : "model.embed_tokens.weight",
     out);
}

// diag(Σ x xᵀ), lifted by 1e-6 of its mean so that no weight is zero.
std::vector<float> hessian_diag(const HessianAccumulator& a) {
  const std::vector<double> h = a.sum();
  std::vector<float> d(size_t(a.cols()));
  double mean = 0;
  for (int64_t j = 0; j < a.cols(); ++j) mean += (d[size_t(j)] = float(h[size_t(j * a.cols() + j)]));
  mean /= double(std::max<int64_t>(1, a.cols()));
  for (float& v : d) v += float(1e-6 * mean + 1e-30);
  return d;
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

std::vector<GgmlType> gguf_budget_candidates(int64_t row) {
  if (row % 256 == 0)
    return {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_0,
            GgmlType::BF16};
  if (row % 32 == 0) return {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::BF16};
  return {GgmlType::BF16};
}

std::vector<int> choose_gguf_mix(const std::vector<MixTensor>& ts, uint64_t cap) {
  std::vector<int> pick(ts.size(), 0);
  uint64_t used = 0;
  // The lower convex hull of each tensor's (bytes, error) points: the upgrades worth making.
  std::vector<std::vector<int>> hull(ts.size());
  for (size_t t = 0; t < ts.size(); ++t) {
    const MixTensor& m = ts[t];
    LLMC_CHECK(!m.bytes.empty() && m.bytes.size() == m.err.size() && m.types.size() == m.err.size(), m.name,
               ": candidates");
    std::vector<int> order(m.bytes.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return m.bytes[size_t(a)] != m.bytes[size_t(b)] ? m.bytes[size_t(a)] < m.bytes[size_t(b)]
                                                     : m.err[size_t(a)] < m.err[size_t(b)];
    });
    std::vector<int>& h = hull[t];
    for (int c : order) {
      if (!h.empty() && m.err[size_t(c)] >= m.err[size_t(h.back())]) continue;  // dominated
      if (!h.empty() && m.bytes[size_t(c)] == m.bytes[size_t(h.back())]) h.pop_back();
      while (h.size() >= 2) {  // keep the slopes decreasing (convex)
        const int a = h[h.size() - 2], b = h.back();
        const double s_ab = (m.err[size_t(a)] - m.err[size_t(b)]) / double(m.bytes[size_t(b)] - m.bytes[size_t(a)]);
        const double s_bc = (m.err[size_t(b)] - m.err[size_t(c)]) / double(m.bytes[size_t(c)] - m.bytes[size_t(b)]);
        if (s_bc >= s_ab) h.pop_back();
        else break;
      }
      h.push_back(c);
    }
    pick[t] = order[0];  // the cheapest (the hull starts there unless a tie in bytes had less error)
    if (h.front() != order[0] && m.bytes[size_t(h.front())] == m.bytes[size_t(order[0])]) pick[t] = h.front();
    used += m.bytes[size_t(pick[t])];
  }
  if (used > cap)
    fail("the size budget of ", cap, " bytes for the quantized tensors is below the smallest mix (", used,
         " bytes: every tensor at its smallest type)");
  // Greedy on error saved per byte: the steepest upgrade that still fits, tensor by tensor.
  std::vector<size_t> at(ts.size(), 0);
  for (size_t t = 0; t < ts.size(); ++t)
    while (at[t] < hull[t].size() && hull[t][at[t]] != pick[t]) ++at[t];
  using Up = std::pair<double, size_t>;
  std::priority_queue<Up> q;
  auto push = [&](size_t t) {
    if (at[t] + 1 >= hull[t].size()) return;
    const MixTensor& m = ts[t];
    const int a = hull[t][at[t]], b = hull[t][at[t] + 1];
    q.push({(m.err[size_t(a)] - m.err[size_t(b)]) / double(m.bytes[size_t(b)] - m.bytes[size_t(a)]), t});
  };
  for (size_t t = 0; t < ts.size(); ++t) push(t);
  while (!q.empty()) {
    const size_t t = q.top().second;
    q.pop();
    const int a = hull[t][at[t]], b = hull[t][at[t] + 1];
    const uint64_t extra = ts[t].bytes[size_t(b)] - ts[t].bytes[size_t(a)];
    if (used + extra > cap) continue;  // larger steps of this tensor would not fit either
    used += extra;
    pick[t] = b;
    ++at[t];
    push(t);
  }
  return pick;
}

namespace {

uint64_t padded_bytes(GgmlType t, const Shape& shape) {
  const uint64_t rows = shape.size() == 1 ? 1 : uint64_t(shape[0]);
  return (ggml_row_bytes(t, uint64_t(shape.back())) * rows + kGgufDefaultAlignment - 1) / kGgufDefaultAlignment *
         kGgufDefaultAlignment;
}

// The candidates of one 2-D tensor with their measured relative output errors
// tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) (each type's encoder weighted by diag(H); BF16 by its rounding).
MixTensor measure_candidates(const GgufTensorSite& site, const std::vector<float>& w, const double* H,
                             const float* imp) {
  MixTensor m;
  m.name = site.gguf_name;
  const int64_t out = site.shape[0], in = site.shape[1];
  std::vector<float> dq(w.size());
  for (GgmlType t : gguf_budget_candidates(in)) {
    const GgmlTypeTraits& tt = ggml_traits(t);
    if (t == GgmlType::BF16) {
      parallel_for(0, w.size(), 1 << 16, [&](size_t a, size_t b) {
        for (size_t i = a; i < b; ++i) dq[i] = bf16_to_f32(f32_to_bf16(w[i]));
      });
    } else {
      std::vector<uint8_t> q(size_t(out) * ggml_row_bytes(t, uint64_t(in)));
      ggml_encode_rows(tt, w.data(), out, in, imp, q.data());
      ggml_decode_rows(tt, q.data(), out, in, dq.data());
    }
    m.types.push_back(t);
    m.bytes.push_back(padded_bytes(t, site.shape));
    m.err.push_back(relative_output_errors(w.data(), {dq.data()}, out, in, H)[0]);
  }
  return m;
}

}  // namespace

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
  for (const TensorInfo& t : ck.tensors->list()) res.bf16_bytes += uint64_t(t.numel()) * 2;
  GgufWriteOptions go;
  go.file_type = preset->file_type;
  go.progress = !quiet();
  go.choose = [preset](const GgufTensorSite& s) { return gguf_row_fallback(preset->choose(s), s.shape.back()); };
  const std::string rounding = method_opt<std::string>(spec, "rounding");
  const bool budget = opt.target_size > 0 || opt.target_bpw > 0;
  go.importance_times_magnitude = rounding == "imatrix";
  std::map<std::string, std::vector<float>> imx;         // gguf name -> diag(H)
  std::map<std::string, std::vector<uint8_t>> encoded;   // gguf name -> GPTQ's row bytes
  std::map<std::string, GgmlType> encoded_type;
  std::map<std::string, MixTensor> costs;                // budget: gguf name -> candidates
  nlohmann::json errors = nlohmann::json::object();
  double t_solve = 0;
  // GPTQ on the type the writer will choose for this tensor.
  auto gptq_tensor = [&](const TensorRef& ref, const GgufTensorSite& site, const HessianAccumulator& acc) {
    const GgmlType type = go.choose(site);
    const GgmlTypeTraits& tt = ggml_traits(type);
    if (!tt.grid) return;  // a float type: nothing to round
    const double ts = now_s();
    const std::vector<float> wf = ref.to_f32();
    const std::vector<double> Hm = acc.hessian();
    GptqOptions g;
    g.ggml = &tt;
    g.damp = spec.damp;
    GptqResult r = gptq_quantize(wf.data(), site.shape[0], site.shape[1], Hm.data(), g, site.hf_name);
    errors[site.gguf_name] = {{"type", tt.name}, {"rel_error", r.report.rel_error},
                              {"rel_error_encoder", r.report.rel_error_rtn}, {"fallback", r.report.fallback}};
    encoded[site.gguf_name] = std::move(r.ggml);
    encoded_type[site.gguf_name] = type;
    t_solve += now_s() - ts;
  };
  // A budget below the smallest mix fails here, before the calibration pass.
  uint64_t fixed = 0, numel = 0, least = 0;  // file bytes outside the 2-D tensors; their values; smallest mix
  if (budget) {
    GgufWriteOptions dry = go;
    dry.dry_run = true;
    dry.progress = false;
    dry.choose = [](const GgufTensorSite& s) { return gguf_budget_candidates(s.shape.back())[0]; };
    least = fixed = write_gguf_model(ck, opt.output, dry).bytes;
    for (const TensorInfo& t : ck.tensors->list()) {
      if (t.shape.size() != 2 || gguf_tensor_site(ck.config, t).skipped) continue;
      fixed -= padded_bytes(gguf_budget_candidates(t.shape[1])[0], t.shape);
      numel += uint64_t(t.numel());
    }
    const double want = opt.target_size > 0 ? opt.target_size * double(res.bf16_bytes)
                                            : double(fixed) + opt.target_bpw / 8.0 * double(numel);
    if (want < double(least))
      fail(opt.target_size > 0 ? cat("--target-size ", opt.target_size * 100, "%") : cat("--bpw ", opt.target_bpw),
           " cannot be met: the smallest file llmc can write for ", opt.input.string(), " is ", least, " bytes (",
           100.0 * double(least) / double(res.bf16_bytes), "% of the bf16 model, ",
           8.0 * double(least - fixed) / double(numel), " bits per weight; rows that are not multiples of 256 values "
           "cannot use K-quants; their smallest type is Q4_0, 4.5 bits)");
  }
  const double tc = now_s();
  if (rounding != "rtn" || budget) {
    calibration_pass(ck, opt, spec, res, [&](const std::string& hf, const HessianAccumulator& acc) {
      const TensorRef ref = ck.tensors->get(hf);
      const GgufTensorSite site = gguf_tensor_site(ck.config, ref.info);
      if (rounding == "hdiag" || rounding == "imatrix" || budget) imx[site.gguf_name] = hessian_diag(acc);
      if (budget) {
        const double ts = now_s();
        costs[site.gguf_name] = measure_candidates(site, ref.to_f32(), acc.hessian().data(), imx[site.gguf_name].data());
        t_solve += now_s() - ts;
      } else if (rounding == "gptq") {
        gptq_tensor(ref, site, acc);
      }
    });
  }
  nlohmann::json mix_report;
  if (budget) {
    // 2-D tensors without a Hessian (untied token_embd): their Frobenius error (H = I).
    for (const TensorInfo& t : ck.tensors->list()) {
      const GgufTensorSite site = gguf_tensor_site(ck.config, t);
      if (t.shape.size() != 2 || site.skipped || site.gguf_name.empty() || costs.count(site.gguf_name)) continue;
      std::vector<double> eye(size_t(t.shape[1] * t.shape[1]), 0.0);
      for (int64_t j = 0; j < t.shape[1]; ++j) eye[size_t(j * t.shape[1] + j)] = 1.0;
      costs[site.gguf_name] = measure_candidates(site, ck.tensors->get(t.name).to_f32(), eye.data(), nullptr);
    }
    std::vector<MixTensor> list;
    for (auto& [name, m] : costs) list.push_back(m);
    const uint64_t cap = opt.target_size > 0 ? uint64_t(opt.target_size * double(res.bf16_bytes)) - fixed
                                             : uint64_t(opt.target_bpw / 8.0 * double(numel));
    const std::string what = opt.target_size > 0
                                 ? cat("--target-size ", opt.target_size * 100, "% (", cap + fixed, " bytes of the file)")
                                 : cat("--bpw ", opt.target_bpw, " (", cap, " bytes of quantized tensors)");
    const std::vector<int> pick = choose_gguf_mix(list, cap);
    std::map<std::string, GgmlType> chosen;
    double predicted = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < list.size(); ++i) {
      const MixTensor& m = list[i];
      chosen[m.name] = m.types[size_t(pick[i])];
      predicted += m.err[size_t(pick[i])];
      bytes += m.bytes[size_t(pick[i])];
      mix_report[m.name] = {{"type", ggml_traits(m.types[size_t(pick[i])]).name},
                            {"rel_error", m.err[size_t(pick[i])]}};
    }
    mix_report = {{"budget", what}, {"cap_bytes", cap}, {"tensor_bytes", bytes}, {"fixed_bytes", fixed},
                  {"bpw", 8.0 * double(bytes) / double(numel)}, {"sum_rel_error", predicted}, {"tensors", mix_report}};
    log_info(cat("size budget ", what, ": quantized tensors ", bytes, " bytes, ",
                 8.0 * double(bytes) / double(numel), " bits per weight"));
    go.choose = [chosen](const GgufTensorSite& s) {
      auto it = chosen.find(s.gguf_name);
      return it == chosen.end() ? GgmlType::BF16 : it->second;
    };
    if (rounding == "gptq")  // the chosen types rounded by GPTQ: a second calibration pass
      calibration_pass(ck, opt, spec, res, [&](const std::string& hf, const HessianAccumulator& acc) {
        const TensorRef ref = ck.tensors->get(hf);
        gptq_tensor(ref, gguf_tensor_site(ck.config, ref.info), acc);
      });
    if (rounding != "hdiag" && rounding != "imatrix") imx.clear();  // rtn: unweighted encoders
  }
  res.seconds_solve = t_solve;
  res.seconds_stats = rounding != "rtn" || budget ? now_s() - tc - t_solve : 0;
  go.importance = [&imx](const GgufTensorSite& s) -> const float* {
    auto it = imx.find(s.gguf_name);
    return it == imx.end() || int64_t(it->second.size()) != s.shape.back() ? nullptr : it->second.data();
  };
  go.encoded = [&](const GgufTensorSite& s, GgmlType t) -> const std::vector<uint8_t>* {
    auto it = encoded.find(s.gguf_name);
    return it == encoded.end() || encoded_type.at(s.gguf_name) != t ? nullptr : &it->second;
  };
  AtomicPath ap(opt.output);
  const GgufWriteStats st = write_gguf_model(ck, ap.temp(), go);
  ap.commit();
  res.out_bytes = st.bytes;
  for (const auto& [name, type] : st.types)
    if (ggml_type_by_name(type)->block_size > 1) ++res.quantized_linears;
  res.seconds_write = st.seconds;
  res.quantize_seconds = res.seconds_stats + res.seconds_solve + st.seconds;
  res.seconds = now_s() - t0;
  res.peak_rss = peak_rss_bytes();
  res.vllm_why_not = "a GGUF file is for llama.cpp (and Ollama, LM Studio), not vLLM's safetensors loaders";
  nlohmann::json g = {{"preset", preset->name}, {"rounding", rounding}, {"types", st.types},
                      {"type_counts", st.type_counts}, {"gptq_errors", errors}};
  if (budget) g["mix"] = mix_report;
  res.report = {{"method", method.name}, {"gguf", g}, {"bytes", st.bytes}, {"bf16_bytes", res.bf16_bytes}};
  return res;
}

}  // namespace llmc
