// Mixture of experts (qwen3-moe-tiny): calibration routing, the starved-expert fallback, every
// method end to end with per-expert tensors, loaded back through WeightLoader.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "eval/quality.h"
#include "formats/checkpoint.h"
#include "loader/weight_loader.h"
#include "model/model.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/layouts.h"
#include "quant/method.h"
#include "quant/pipeline.h"
#include "synthetic_model.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace llmc;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// The router with expert `masked` never chosen: a real zero-token expert.
class MaskedRouter : public Linear {
 public:
  MaskedRouter(std::shared_ptr<Linear> inner, int masked) : inner_(std::move(inner)), masked_(masked) {}
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }
  void forward(const float* x, int64_t rows, float* y) const override {
    inner_->forward(x, rows, y);
    for (int64_t r = 0; r < rows; ++r) y[r * out_features() + masked_] = -1e30f;
  }
  uint64_t bytes_held() const override { return 0; }

 private:
  std::shared_ptr<Linear> inner_;
  int masked_;
};

// qwen3-moe-tiny layer 0 with 8 windows of 64 held-out tokens as calibration inputs.
struct MoeBlock {
  Checkpoint ck = open_checkpoint(test::model_dir("qwen3-moe-tiny"));
  std::unique_ptr<Model> model = Model::load(ck);
  std::vector<float> x;
  int n = 8, seq = 64;
  MoeBlock() {
    const Tokenizer tok = Tokenizer::from_json_text(ck.aux_files.at("tokenizer.json"), "moe");
    std::vector<int32_t> ids =
        tok.encode(read_text_file(test::data_path("eval/heldout.txt")).substr(0, 20000));
    ids.resize(size_t(n * seq));
    x.resize(ids.size() * size_t(model->config().hidden_size));
    model->embed(ids.data(), int64_t(ids.size()), x.data());
  }
  const BlockLayout& L() const { return model->layout(0); }
  void mask_expert(int e) {
    BlockWeights& w = model->block(0);
    const size_t r = size_t(L().find(ModuleRole::Router));
    w.linear[r] = std::make_shared<MaskedRouter>(w.linear[r], e);
  }
  std::vector<float> weight(int s) {
    return static_cast<const DenseLinear&>(*model->block(0).linear[size_t(s)]).weight();
  }
  // Hessian of the MLP input over every calibration token (the router's input).
  std::vector<double> all_token_hessian() {
    HessianAccumulator a(model->config().hidden_size);
    const LinearSlot r = LinearSlot(L().find(ModuleRole::Router));
    LinearHook hook = [&](int, LinearSlot s, const backend::MatView& v) {
      if (s == r) a.add(v);
    };
    std::vector<float> h = x;
    model->run_block(0, h.data(), n, seq, &hook);
    return a.hessian();
  }
  std::unique_ptr<BlockJob> run(const std::string& method, const QuantSpec& spec) {
    auto job = std::make_unique<BlockJob>(*model, 0, spec, model->block(0));
    job->inputs = x.data();
    job->n_samples = n;
    job->seq = seq;
    job->batch = 4;
    find_method(method).factory(spec)->quantize_block(*job);
    return job;
  }
};

QuantSpec spec_of(const std::string& method, QuantOverrides o = {}) {
  return resolve_spec(find_method(method), o);
}

bool all_finite(const std::vector<float>& v) {
  for (float f : v)
    if (!std::isfinite(f)) return false;
  return true;
}

}  // namespace

TEST(MoeCalib, RoutedStatisticsCountTheTokensOfEachExpert) {
  MoeBlock b;
  QuantOverrides o;
  o.group = 32;
  auto job = b.run("int4_gptq", spec_of("int4_gptq", o));
  const BlockLayout& L = b.L();
  ASSERT_EQ(job->expert_tokens.size(), 8u);
  int64_t sum = 0;
  for (int e = 0; e < 8; ++e) {
    sum += job->expert_tokens[size_t(e)];
    const int g = L.find(ModuleRole::Gate, e), d = L.find(ModuleRole::Down, e);
    ASSERT_TRUE(job->quantized[size_t(g)].has_value()) << e;
    ASSERT_TRUE(job->quantized[size_t(d)].has_value()) << e;
    if (job->expert_stats[size_t(e)] == "routed") {
      EXPECT_GE(job->expert_tokens[size_t(e)], 16);
      EXPECT_EQ(job->report[size_t(g)]["rows"], job->expert_tokens[size_t(e)]) << e;
    } else {
      EXPECT_EQ(job->report[size_t(g)]["rows"], b.n * b.seq) << e;
    }
  }
  EXPECT_EQ(sum, int64_t(b.n) * b.seq * L.top_k);
  // The router stays dense; attention is quantized from all tokens.
  EXPECT_FALSE(job->quantized[size_t(L.find(ModuleRole::Router))].has_value());
  EXPECT_EQ(job->report[0]["rows"], b.n * b.seq);
}

TEST(MoeCalib, ZeroTokenExpertGetsAllTokenStatisticsFiniteAndBetterThanRtn) {
  MoeBlock b;
  b.mask_expert(3);
  const BlockLayout& L = b.L();
  const std::vector<double> Hall = b.all_token_hessian();
  const int g3 = L.find(ModuleRole::Gate, 3), u3 = L.find(ModuleRole::Up, 3);
  const std::vector<float> wg = b.weight(g3), wu = b.weight(u3);
  QuantOverrides o;
  o.group = 32;
  o.act_order = false;  // gate/up rows stay in their order (no down permutation folded in)
  auto job = b.run("int4_gptq", spec_of("int4_gptq", o));
  EXPECT_EQ(job->expert_tokens[3], 0);
  EXPECT_EQ(job->expert_stats[3].rfind("all-tokens (fallback", 0), 0u) << job->expert_stats[3];
  for (int s : {g3, u3, L.find(ModuleRole::Down, 3)}) {
    ASSERT_TRUE(job->quantized[size_t(s)].has_value()) << s;  // never silently skipped
    EXPECT_TRUE(all_finite(job->quantized[size_t(s)]->dequantize())) << s;
    EXPECT_EQ(job->report[size_t(s)]["rows"], b.n * b.seq);
    EXPECT_FALSE(job->report[size_t(s)].value("fallback", false));
  }
  // Sensible: on every token of the layer (what the expert would see if a token chose it), the
  // fallback's output error is below plain rounding's on the same grid.
  QuantGrid grid;
  grid.bits = 4;
  grid.symmetric = true;
  grid.fp16_scales = true;
  for (auto [s, w] : {std::pair{g3, &wg}, std::pair{u3, &wu}}) {
    const int64_t out = L.modules[size_t(s)].out, in = L.modules[size_t(s)].in;
    const double e_gptq = relative_output_error(w->data(), job->quantized[size_t(s)]->dequantize().data(),
                                                out, in, Hall.data());
    const double e_rtn = relative_output_error(
        w->data(), quantize_grid_rtn(w->data(), out, in, 32, grid).dequantize().data(), out, in,
        Hall.data());
    std::printf("  zero-token expert 3 %s: rel output error %.5f (RTN %.5f)\n",
                L.modules[size_t(s)].name.c_str(), e_gptq, e_rtn);
    EXPECT_LT(e_gptq, 0.9 * e_rtn);
  }
}

TEST(MoeCalib, ZeroTokenExpertUnderFp8StaticHasAFiniteInputScale) {
  MoeBlock b;
  b.mask_expert(5);
  auto job = b.run("fp8_static", spec_of("fp8_static"));
  const BlockLayout& L = b.L();
  EXPECT_EQ(job->expert_tokens[5], 0);
  for (int s : {L.find(ModuleRole::Gate, 5), L.find(ModuleRole::Down, 5)}) {
    ASSERT_TRUE(job->quantized[size_t(s)].has_value());
    const QuantizedWeight& q = *job->quantized[size_t(s)];
    EXPECT_TRUE(std::isfinite(q.input_scale));
    EXPECT_GT(q.input_scale, 0.0f);
    EXPECT_TRUE(all_finite(q.dequantize()));
  }
}

TEST(MoeCalib, AllExpertsOptionObservesEveryTokenForStatisticsOnly) {
  MoeBlock b;
  QuantOverrides o;
  o.group = 32;
  o.moe_all_experts = true;
  auto job = b.run("int4_gptq", spec_of("int4_gptq", o));
  const BlockLayout& L = b.L();
  int64_t sum = 0;
  for (int e = 0; e < 8; ++e) {
    EXPECT_EQ(job->expert_stats[size_t(e)], "all-tokens (--moe-calib all-experts)");
    EXPECT_EQ(job->report[size_t(L.find(ModuleRole::Up, e))]["rows"], b.n * b.seq);
    sum += job->expert_tokens[size_t(e)];  // still the routed counts
  }
  EXPECT_EQ(sum, int64_t(b.n) * b.seq * L.top_k);
  QuantOverrides bad;
  bad.moe_min_tokens = 0;
  EXPECT_NE(test::error_of([&] { spec_of("int4_gptq", bad); }).find("--moe-min-tokens"), std::string::npos);
}

namespace {
std::vector<float> randu(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
}  // namespace

// Folding AWQ scales into a MoE block (one post-norm scale into the router and every expert,
// each expert's own up -> down scale) leaves the logits unchanged, routing included.
TEST(MoeAwq, FoldIntoRouterAndEveryExpertPreservesTheFunction) {
  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-moe-tiny"));
  auto model = Model::load(ck);
  const ModelConfig& c = model->config();
  std::vector<int32_t> ids;
  for (int i = 0; i < 64; ++i) ids.push_back((i * 977 + 3) % c.vocab_size);
  const std::vector<int64_t> r0 = model->routed_tokens(1);
  const auto before = model->forward(ids, 2, 32);
  const std::vector<int64_t> r1 = model->routed_tokens(1);
  for (int l = 0; l < c.num_layers; ++l) {
    const BlockLayout& L = model->layout(l);
    BlockWeights& w = model->block(l);
    const std::vector<float> router0 =
        static_cast<const DenseLinear&>(*w.linear[size_t(L.find(ModuleRole::Router))]).weight();
    AwqFold f;
    f.qkv = randu(size_t(c.hidden_size), 0.5f, 2.0f, 10 + l);
    f.mlp = randu(size_t(c.hidden_size), 0.25f, 4.0f, 20 + l);
    for (int e = 0; e < L.num_experts; ++e)
      f.expert_down[e] = randu(size_t(c.moe_intermediate_size), 0.25f, 4.0f, 100 * l + e);
    apply_awq_fold(w, f, c, &L);
    const auto& router1 =
        static_cast<const DenseLinear&>(*w.linear[size_t(L.find(ModuleRole::Router))]).weight();
    EXPECT_NE(router1, router0);  // the router's columns carry the scale too
    EXPECT_FLOAT_EQ(router1[5], router0[5] * f.mlp[5]);
  }
  const auto after = model->forward(ids, 2, 32);
  const std::vector<int64_t> r2 = model->routed_tokens(1);
  for (size_t e = 0; e < r0.size(); ++e) EXPECT_EQ(r2[e] - r1[e], r1[e] - r0[e]) << e;  // same routing
  double num = 0, den = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    num += double(after[i] - before[i]) * (after[i] - before[i]);
    den += double(before[i]) * before[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
  AwqFold bad;
  bad.expert_down[9] = std::vector<float>(96, 1.0f);
  EXPECT_THROW(apply_awq_fold(model->block(0), bad, c, &model->layout(0)), Error);
  EXPECT_THROW(apply_awq_fold(model->block(0), bad, c), Error);
}

// Every method quantizes qwen3-moe-tiny: per-expert tensors in the method's layout, the router
// dense and listed as ignored, loaded back through WeightLoader, quality bounded.
struct MoeMethodCase {
  std::string method;
  std::string tensor;  // suffix of an expert's quantized tensor ("" = dense output)
  double max_ratio;    // ppl ratio on a small held-out slice (16 x 128 calibration)
};

class MoeMethod : public ::testing::TestWithParam<MoeMethodCase> {};

TEST_P(MoeMethod, QuantizesEveryExpertAndLoadsBack) {
  const MoeMethodCase& c = GetParam();
  const fs::path out = test::temp_dir("moe-" + c.method) / "out";
  QuantizeOptions o;
  o.input = test::model_dir("qwen3-moe-tiny");
  o.output = out;
  o.method = c.method;
  o.num_samples = 16;
  o.seq_len = 128;
  o.quality.enabled = false;
  const bool grouped = c.method == "int4_gptq" || c.method == "int4_awq" || c.method == "int2";
  if (grouped) o.overrides.group = 32;
  const QuantizeResult r = quantize_model(o);
  const bool dense = c.tensor.empty();
  EXPECT_EQ(r.quantized_linears, dense ? 0 : 4 * (4 + 8 * 3));
  const Checkpoint ck = open_checkpoint(out);
  const std::string e = "model.layers.2.mlp.experts.6.down_proj.";
  if (!dense) {
    EXPECT_TRUE(ck.tensors->has(e + c.tensor)) << e + c.tensor;
    EXPECT_FALSE(ck.tensors->has(e + "weight") && c.tensor != "weight");
    EXPECT_TRUE(ck.tensors->has("model.layers.2.mlp.gate.weight"));  // router dense
    const json& qc = ck.config.at("quantization_config");
    const std::string ign = qc.dump();
    // compressed-tensors / awq list the name, gptq a "-:" regex with escaped dots.
    EXPECT_TRUE(ign.find("model.layers.2.mlp.gate\"") != std::string::npos ||
                ign.find("layers\\\\.2\\\\.mlp\\\\.gate$") != std::string::npos)
        << ign;
    WeightLoader wl(out);
    EXPECT_EQ(wl.quantized_modules().size(), size_t(4 * (4 + 8 * 3)));
    const QuantizedWeight q = wl.quantized("model.layers.2.mlp.experts.6.down_proj");
    EXPECT_EQ(q.out, 128);
    EXPECT_EQ(q.in, 96);
    EXPECT_TRUE(all_finite(q.dequantize()));
  }
  const json rep = json::parse(read_text_file(out / "llmc_quant_report.json"));
  if (find_method(c.method).needs_calibration && !dense) {
    const json& mc = rep["summary"]["moe_calibration"];
    ASSERT_TRUE(mc.contains("layers")) << rep["summary"].dump();
    EXPECT_EQ(mc["layers"]["0"]["tokens_per_expert"].size(), 8u);
    EXPECT_EQ(mc["mode"], "routed");
  }
  QualityOptions qo;
  qo.tokens = 2048;
  qo.seq_len = 128;
  const QualityResult qr = quality_check(test::model_dir("qwen3-moe-tiny"), out, qo);
  ASSERT_TRUE(qr.measured);
  EXPECT_TRUE(std::isfinite(qr.ppl_quant));
  EXPECT_LT(qr.ppl_ratio, c.max_ratio) << c.method;
  EXPECT_GT(qr.ppl_ratio, 0.97) << c.method;
  std::printf("  %s: ppl ratio %.5f, KL %.5f\n", c.method.c_str(), qr.ppl_ratio, qr.kl);
}

INSTANTIATE_TEST_SUITE_P(Methods, MoeMethod,
                         ::testing::Values(MoeMethodCase{"int8", "weight_packed", 1.01},
                                           MoeMethodCase{"int2", "weight_packed", 3.0},
                                           MoeMethodCase{"fp16", "", 1.001},
                                           MoeMethodCase{"fp8_static", "weight", 1.03},
                                           MoeMethodCase{"fp8_dynamic", "weight", 1.03},
                                           MoeMethodCase{"int8_dynamic", "weight", 1.02},
                                           MoeMethodCase{"int4_gptq", "qweight", 1.05},
                                           MoeMethodCase{"int4_awq", "qweight", 1.06}),
                         [](const auto& info) { return info.param.method; });

// vLLM loads a layer's experts as one FusedMoE module: --ignore on one expert's linear leaves
// every expert of that layer dense (and says so); the router is never quantized.
TEST(MoeQuantize, IgnoreOnOneExpertWidensToTheLayersExperts) {
  const fs::path out = test::temp_dir("moe-ignore") / "out";
  QuantizeOptions o;
  o.input = test::model_dir("qwen3-moe-tiny");
  o.output = out;
  o.method = "int8_dynamic";
  o.quality.enabled = false;
  o.ignore = {"layers\\.1\\.mlp\\.experts\\.3\\.down_proj"};
  const QuantizeResult r = quantize_model(o);
  EXPECT_EQ(r.quantized_linears, 4 * (4 + 24) - 24);
  const Checkpoint ck = open_checkpoint(out);
  for (int e = 0; e < 8; ++e) {
    EXPECT_TRUE(ck.tensors->has(cat("model.layers.1.mlp.experts.", e, ".up_proj.weight")));
    EXPECT_FALSE(ck.tensors->has(cat("model.layers.1.mlp.experts.", e, ".up_proj.weight_scale")));
    EXPECT_TRUE(ck.tensors->has(cat("model.layers.2.mlp.experts.", e, ".up_proj.weight_scale")));
  }
  const json ign = ck.config["quantization_config"]["ignore"];
  EXPECT_NE(ign.dump().find("model.layers.1.mlp.experts.7.gate_proj"), std::string::npos);
  EXPECT_NE(ign.dump().find("model.layers.0.mlp.gate\""), std::string::npos);
}

TEST(MoeQuantize, CliMoeCalibOptionAndReport) {
  const fs::path d = test::temp_dir("moe-cli");
  std::string out;
  const std::string base = "quantize --input " + test::model_dir("qwen3-moe-tiny").string() +
                           " --method int4_gptq --group-size 32 --num-samples 4 --seq-len 32 --no-eval";
  ASSERT_EQ(0, test::run_cli(base + " -o " + (d / "a").string() + " --moe-calib all-experts", &out)) << out;
  const json rep = json::parse(read_text_file(d / "a" / "llmc_quant_report.json"));
  const json& mc = rep["summary"]["moe_calibration"];
  EXPECT_EQ(mc["mode"], "all-experts");
  EXPECT_EQ(mc["layers"].size(), 4u);
  EXPECT_EQ(mc["layers"]["3"]["statistics"][0], "all-tokens (--moe-calib all-experts)");
  // 4 x 32 tokens, top-2: 256 routed rows per layer, a high minimum makes experts fall back.
  ASSERT_EQ(0, test::run_cli(base + " -o " + (d / "b").string() + " --moe-min-tokens 40", &out)) << out;
  EXPECT_NE(out.find("fewer than 40 calibration tokens"), std::string::npos) << out;
  const json rb = json::parse(read_text_file(d / "b" / "llmc_quant_report.json"));
  int64_t sum = 0;
  for (const auto& n : rb["summary"]["moe_calibration"]["layers"]["0"]["tokens_per_expert"]) sum += n.get<int64_t>();
  EXPECT_EQ(sum, 4 * 32 * 2);
  EXPECT_NE(test::run_cli(base + " -o " + (d / "c").string() + " --moe-calib some", &out), 0);
  EXPECT_NE(test::run_cli(base + " -o " + (d / "c").string() + " --moe-min-tokens 0", &out), 0);
}

// Qwen2-MoE style blocks (a shared expert with its sigmoid gate, q/k/v biases) through every
// calibrated method: routed experts and the shared expert quantized, router and shared gate dense,
// the block's output close to the original.
TEST(MoeQuantize, SharedExpertBlocksThroughEveryCalibratedMethod) {
  json cfg = json::parse(R"({
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "vocab_size": 100,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
    "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": false,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
    "rope_theta": 10000.0})");
  for (const std::string variant : {"int4_gptq", "int4_awq", "int4_awq:loss=linear",
                                    "int4_awq:solver=gptq", "fp8_static", "int8"}) {
    const std::string method = variant.substr(0, variant.find(':'));
    Checkpoint ck = test::synthetic_checkpoint(cfg, 7);
    auto model = Model::load(ck);
    const BlockLayout& L = model->layout(0);
    ASSERT_EQ(L.size(), 4 + 1 + 4 * 3 + 3 + 1);
    const int n = 4, seq = 32;
    std::vector<int32_t> ids;
    for (int i = 0; i < n * seq; ++i) ids.push_back((i * 37 + 11) % 100);
    std::vector<float> x(ids.size() * 64);
    model->embed(ids.data(), int64_t(ids.size()), x.data());
    std::vector<float> ref = x;
    model->run_block(0, ref.data(), n, seq);
    QuantOverrides o;
    if (method.rfind("int4", 0) == 0) o.group = 32;
    if (variant.find(':') != std::string::npos) {
      const std::string kv = variant.substr(variant.find(':') + 1);
      o.extra[kv.substr(0, kv.find('='))] = kv.substr(kv.find('=') + 1);
    }
    const QuantSpec spec = spec_of(method, o);
    BlockJob job(*model, 0, spec, model->block(0));
    job.inputs = x.data();
    job.n_samples = n;
    job.seq = seq;
    find_method(method).factory(spec)->quantize_block(job);
    for (int s = 0; s < L.size(); ++s) {
      const BlockModule& m = L.modules[size_t(s)];
      const bool dense = m.role == ModuleRole::Router || m.role == ModuleRole::SharedGate;
      EXPECT_EQ(job.quantized[size_t(s)].has_value(), !dense) << variant << " " << m.name;
    }
    std::vector<float> y = x;
    model->run_block(0, y.data(), n, seq);
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      num += double(y[i] - ref[i]) * (y[i] - ref[i]);
      den += double(ref[i] - x[i]) * (ref[i] - x[i]);  // relative to the block's own update
    }
    std::printf("  %s: block update rel error %.4f\n", variant.c_str(), std::sqrt(num / den));
    EXPECT_LT(std::sqrt(num / den), 0.25) << variant;
  }
}
