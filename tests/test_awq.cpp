// Tests of AWQ (quant/awq.h, quant/method_awq.h): statistics, scale formula and search, the
// function-preserving folds (on the real qwen3-tiny and on synthetic non-GQA / biased models),
// the clipping search, and int4_awq end to end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "core/fs.h"
#include "eval/quality.h"
#include "formats/checkpoint.h"
#include "model/model.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/layouts.h"
#include "quant/method.h"
#include "quant/pipeline.h"
#include "tokenizer/tokenizer.h"
#include "synthetic_model.h"
#include "testing.h"

namespace llmc {
namespace {

std::vector<float> randu(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, amax = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    amax = std::max(amax, double(std::fabs(a[i])));
  }
  return m / amax;
}

TEST(AwqStats, AbsMeanAndWeightMean) {
  AbsMeanAccumulator acc(3);
  const std::vector<float> x = {1, -2, 0, -3, 4, 0.5f};
  acc.add(x.data(), 2);
  EXPECT_EQ(acc.count(), 2);
  const auto m = acc.mean();
  EXPECT_FLOAT_EQ(m[0], 2.0f);
  EXPECT_FLOAT_EQ(m[1], 3.0f);
  EXPECT_FLOAT_EQ(m[2], 0.25f);
  // |W| / group abs-max, averaged over the rows of both weights; group 2 over in = 4.
  const std::vector<float> a = {1, -2, 4, 0}, b = {-1, 1, 0, 0};
  const auto wm = awq_weight_mean({&a, &b}, 4, 2);
  EXPECT_FLOAT_EQ(wm[0], (0.5f + 1.0f) / 2);
  EXPECT_FLOAT_EQ(wm[1], (1.0f + 1.0f) / 2);
  EXPECT_FLOAT_EQ(wm[2], (1.0f + 0.0f) / 2);  // all-zero group contributes 0
  EXPECT_FLOAT_EQ(wm[3], 0.0f);
}

TEST(AwqScales, FormulaAndNormalization) {
  const std::vector<float> xm = {0.1f, 1.0f, 10.0f, 2.0f}, wm = {0.5f, 0.2f, 0.9f, 0.4f};
  for (double alpha : {0.0, 0.25, 0.5, 0.95}) {
    const auto s = awq_scales(xm, wm, alpha, true);
    const float mx = *std::max_element(s.begin(), s.end()), mn = *std::min_element(s.begin(), s.end());
    EXPECT_NEAR(double(mx) * mn, 1.0, 1e-5);
    // Ratios follow x^a / (w^(1-a) + 1e-4).
    auto raw = [&](int i) { return std::pow(xm[i], alpha) / (std::pow(wm[i], 1 - alpha) + 1e-4); };
    EXPECT_NEAR(s[2] / s[1], raw(2) / raw(1), 1e-4 * raw(2) / raw(1));
  }
  const auto ones = awq_scales(xm, wm, 0.0, false);
  for (float v : ones) EXPECT_FLOAT_EQ(v, 1.0f);
  // Degenerate statistics never give zero or non-finite scales.
  const auto z = awq_scales({0, 0, 0}, {0, 0, 0}, 0.5, true);
  for (float v : z) EXPECT_TRUE(std::isfinite(v) && v > 0);
}

TEST(AwqScales, GridSearchKeepsTheBestCandidate) {
  const std::vector<float> xm = {1, 2, 3, 4}, wm = {1, 1, 1, 1};
  int calls = 0;
  // Loss minimal at alpha = 0.5 (scales of alpha 0.5 have s[3]/s[0] = 2).
  auto loss = [&](const std::vector<float>& s) {
    ++calls;
    return std::fabs(double(s[3] / s[0]) - 2.0);
  };
  const AwqSearchResult r = awq_grid_search(xm, wm, 20, true, loss);
  EXPECT_EQ(calls, 21);
  EXPECT_EQ(r.losses.size(), 20u);
  EXPECT_NEAR(r.alpha, 0.5, 1e-12);
  EXPECT_LT(r.loss, r.loss_identity);
  // Identity wins when every alpha is worse.
  auto prefer_identity = [](const std::vector<float>& s) {
    double d = 0;
    for (float v : s) d += std::fabs(v - 1.0f);
    return d;
  };
  const AwqSearchResult r2 = awq_grid_search(xm, wm, 20, false, prefer_identity);
  EXPECT_EQ(r2.alpha, -1);
  for (float v : r2.scales) EXPECT_EQ(v, 1.0f);
}

TEST(AwqQuant, FakeQuantScaledAndHessianScaling) {
  const int64_t out = 16, in = 64;
  const auto w = randu(size_t(out * in), -0.1f, 0.1f, 1);
  QuantGrid g;
  g.symmetric = false;
  const std::vector<float> ones(size_t(in), 1.0f);
  EXPECT_EQ(awq_fake_quant_scaled(w.data(), out, in, ones, 32, g),
            quantize_grid_rtn(w.data(), out, in, 32, g).dequantize());
  // (W diag s) H' (W diag s)ᵀ == W H Wᵀ with H' = S⁻¹ H S⁻¹.
  const auto x = randu(size_t(200 * in), -1.0f, 1.0f, 2);
  HessianAccumulator acc(in);
  acc.add(x.data(), 200);
  const auto H = acc.hessian();
  const auto s = randu(size_t(in), 0.3f, 3.0f, 3);
  std::vector<float> ws = w;
  scale_columns(ws, out, in, s);
  const auto Hs = scale_hessian(H, s);
  const double a = hessian_quad_trace(w.data(), out, in, H.data());
  const double b = hessian_quad_trace(ws.data(), out, in, Hs.data());
  EXPECT_NEAR(a, b, 1e-5 * a);
}

TEST(AwqQuant, ClipSearchReducesOutputError) {
  const int64_t out = 32, in = 128;
  std::mt19937 rng(5);
  std::student_t_distribution<float> td(2.5f);
  std::vector<float> w(size_t(out * in));
  for (auto& v : w) v = 0.02f * td(rng);
  const auto x = randu(size_t(500 * in), -1.0f, 1.0f, 6);
  HessianAccumulator acc(in);
  acc.add(x.data(), 500);
  const auto H = acc.hessian();
  QuantGrid g;
  g.bits = 3;
  g.symmetric = false;
  const QuantizedWeight plain = awq_clip_quantize(w.data(), out, in, 64, g, H.data(), 0, 0.5);
  EXPECT_EQ(plain.qu, quantize_grid_rtn(w.data(), out, in, 64, g).qu);
  const QuantizedWeight clip = awq_clip_quantize(w.data(), out, in, 64, g, H.data(), 20, 0.5);
  ASSERT_NO_THROW(clip.validate("clip"));
  const double e0 = relative_output_error(w.data(), plain.dequantize().data(), out, in, H.data());
  const double e1 = relative_output_error(w.data(), clip.dequantize().data(), out, in, H.data());
  EXPECT_LT(e1, 0.95 * e0);
  // Without a Hessian: plain squared weight error, still never worse.
  const QuantizedWeight c2 = awq_clip_quantize(w.data(), out, in, 64, g, nullptr, 20, 0.5);
  const auto d0 = plain.dequantize(), d2 = c2.dequantize();
  double s0 = 0, s2 = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    s0 += (d0[i] - w[i]) * (d0[i] - w[i]);
    s2 += (d2[i] - w[i]) * (d2[i] - w[i]);
  }
  EXPECT_LE(s2, s0);
}

// Random positive scales for every possible mapping of a block.
AwqFold random_fold(const ModelConfig& c, bool vo, uint32_t seed) {
  AwqFold f;
  f.qkv = randu(size_t(c.hidden_size), 0.25f, 4.0f, seed);
  f.mlp = randu(size_t(c.hidden_size), 0.25f, 4.0f, seed + 1);
  f.down = randu(size_t(c.intermediate_size), 0.25f, 4.0f, seed + 2);
  if (vo) f.vo = randu(size_t(c.num_heads) * c.head_dim, 0.25f, 4.0f, seed + 3);
  return f;
}

std::vector<int32_t> some_ids(int n, int vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[size_t(i)] = (i * 37 + 11) % vocab;
  return ids;
}

// Folding without quantizing leaves the real model's logits unchanged (qwen3-tiny: GQA, so no
// v -> o mapping; q_norm/k_norm sit after q/k and are untouched).
TEST(AwqFold, QwenTinyLogitsUnchanged) {
  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  auto model = Model::load(ck);
  const ModelConfig& c = model->config();
  ASSERT_FALSE(awq_can_fold_vo(c));
  const auto ids = some_ids(64, c.vocab_size);
  const auto before = model->forward(ids, 2, 32);
  for (int l = 0; l < c.num_layers; ++l) {
    BlockWeights& w = model->block(l);
    const auto qn = w.q_norm, kn = w.k_norm;
    apply_awq_fold(w, random_fold(c, false, 10 + l), c);
    EXPECT_EQ(w.q_norm, qn);
    EXPECT_EQ(w.k_norm, kn);
  }
  const auto after = model->forward(ids, 2, 32);
  EXPECT_LT(max_rel_diff(before, after), 1e-5);
  // Under GQA a v -> o fold is refused.
  AwqFold bad;
  bad.vo.assign(size_t(c.num_heads) * c.head_dim, 2.0f);
  EXPECT_THROW(apply_awq_fold(model->block(0), bad, c), Error);
}

// Without GQA every mapping applies, including v -> o; with Qwen2 biases the v bias is scaled.
TEST(AwqFold, NonGqaWithBiasesLogitsUnchanged) {
  for (bool bias : {false, true}) {
    nlohmann::json cfg = nlohmann::json::parse(R"({
      "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 97,
      "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16,
      "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
      "torch_dtype": "float32", "rope_theta": 10000.0})");
    cfg["attention_bias"] = bias;
    if (!bias) cfg["architectures"] = {"LlamaForCausalLM"}, cfg["model_type"] = "llama";
    Checkpoint ck = test::synthetic_checkpoint(cfg, 3);
    auto model = Model::load(ck);
    const ModelConfig& c = model->config();
    ASSERT_TRUE(awq_can_fold_vo(c));
    const auto ids = some_ids(48, c.vocab_size);
    const auto before = model->forward(ids, 2, 24);
    for (int l = 0; l < c.num_layers; ++l) apply_awq_fold(model->block(l), random_fold(c, true, 20 + l), c);
    const auto after = model->forward(ids, 2, 24);
    EXPECT_LT(max_rel_diff(before, after), 1e-5) << "bias " << bias;
  }
}

TEST(AwqFold, SizeMismatchesAreErrors) {
  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  auto model = Model::load(ck);
  const ModelConfig& c = model->config();
  AwqFold f;
  f.qkv.assign(3, 1.0f);
  EXPECT_THROW(apply_awq_fold(model->block(0), f, c), Error);
  AwqFold g;
  g.down.assign(5, 1.0f);
  EXPECT_THROW(apply_awq_fold(model->block(0), g, c), Error);
}


// ---- block level ----------------------------------------------------------------------------

// qwen3-tiny block 0 with 8 windows of 64 real tokens as calibration inputs.
struct TinyBlock {
  Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  std::unique_ptr<Model> model = Model::load(ck);
  std::vector<float> x;
  int n = 8, seq = 64;
  TinyBlock() {
    const Tokenizer tok = Tokenizer::from_json_text(ck.aux_files.at("tokenizer.json"), "tiny");
    std::vector<int32_t> ids =
        tok.encode(read_text_file(test::data_path("eval/heldout.txt")).substr(0, 20000));
    ids.resize(size_t(n * seq));
    x.resize(ids.size() * size_t(model->config().hidden_size));
    model->embed(ids.data(), int64_t(ids.size()), x.data());
  }
  std::unique_ptr<BlockJob> job(const QuantSpec& spec) {
    auto j = std::make_unique<BlockJob>(*model, 0, spec, model->block(0));
    j->inputs = x.data(), j->n_samples = n, j->seq = seq, j->batch = 4;
    return j;
  }
};

QuantSpec awq_spec(QuantOverrides o = {}) { return resolve_spec(find_method("int4_awq"), o); }

void expect_layout_roundtrip(const QuantizedWeight& qw, const std::string& layout) {
  const Layout& l = find_layout(layout);
  MemoryTensorReader r;
  for (EncodedTensor& t : l.encode("m", qw)) r.add(std::move(t));
  QuantConfigSpec cs;
  cs.scheme = qw;
  const nlohmann::json qc = l.quantization_config(cs);
  const QuantizedWeight back = layout_for_config(qc, "test").decode(r, "m", qc, qw.out, qw.in);
  EXPECT_EQ(back.dequantize(), qw.dequantize()) << layout;
}

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    num += double(a[k] - b[k]) * (a[k] - b[k]);
    den += double(a[k]) * a[k];
  }
  return num / den;
}

TEST(AwqBlock, ScalesFoldQuantizeAndRoundTripTheAwqLayout) {
  TinyBlock t;
  const QuantSpec spec = awq_spec();
  EXPECT_EQ(spec.layout, "awq");
  EXPECT_FALSE(spec.symmetric);
  const auto norm_before = t.model->block(0).input_norm;
  std::vector<float> ref;
  auto job = t.job(spec);
  job->run(nullptr, &ref);
  auto q = find_method("int4_awq").factory(spec);
  q->quantize_block(*job);
  // The input norm now carries the q/k/v scales (some alpha won on this block).
  EXPECT_NE(job->weights.input_norm, norm_before);
  double sum = 0, sum_rtn = 0;
  for (int s = 0; s < test::kDenseModules; ++s) {
    ASSERT_TRUE(job->quantized[s].has_value()) << s;
    const QuantizedWeight& qw = *job->quantized[s];
    EXPECT_EQ(qw.bits, 4);
    EXPECT_FALSE(qw.symmetric);
    expect_layout_roundtrip(qw, "awq");
    const nlohmann::json& r = job->report[s];
    sum += r["rel_error"].get<double>();
    sum_rtn += r["rel_error_rtn"].get<double>();
    EXPECT_EQ(r["clip_search"].get<bool>(), s != int(LinearSlot::Q) && s != int(LinearSlot::K));
  }
  EXPECT_LT(sum, sum_rtn);
  // The quantized block's output is closer to the original than plain RTN's.
  std::vector<float> got, rtn;
  job->run(nullptr, &got);
  {
    TinyBlock t2;
    auto j2 = t2.job(spec);
    QuantGrid g;
    g.bits = 4;
    g.symmetric = false;
    for (int s = 0; s < test::kDenseModules; ++s) {
      const DenseLinear& d = j2->dense(LinearSlot(s));
      j2->commit(LinearSlot(s), quantize_grid_rtn(d.weight().data(), d.out_features(),
                                                  d.in_features(), 128, g));
    }
    j2->run(nullptr, &rtn);
  }
  EXPECT_LT(rel_diff(ref, got), rel_diff(ref, rtn));
  std::printf("  block output error: awq %.5f, rtn %.5f\n", rel_diff(ref, got), rel_diff(ref, rtn));
  nlohmann::json summary = nlohmann::json::object();
  q->finish(summary);
  EXPECT_EQ(summary["awq"]["linears"], 7);
  EXPECT_TRUE(summary["awq"]["alphas"]["0"].contains("qkv"));
  EXPECT_FALSE(summary["awq"]["alphas"]["0"].contains("vo")) << "qwen3-tiny uses GQA";
}

TEST(AwqBlock, LinearLossGptqSolverAndOptions) {
  QuantOverrides o;
  o.extra = {{"loss", "linear"}, {"solver", "gptq"}};
  TinyBlock t;
  auto job = t.job(awq_spec(o));
  job->ignored = [](LinearSlot s) { return s == LinearSlot::V; };
  auto q = find_method("int4_awq").factory(awq_spec(o));
  q->quantize_block(*job);
  for (int s = 0; s < test::kDenseModules; ++s) {
    EXPECT_EQ(job->quantized[s].has_value(), s != int(LinearSlot::V));
    if (job->quantized[s]) EXPECT_TRUE(job->report[s].contains("awq_alpha"));
  }
  nlohmann::json summary = nlohmann::json::object();
  q->finish(summary);
  EXPECT_EQ(summary["awq"]["solver"], "gptq");
  EXPECT_EQ(summary["awq"]["gptq"]["linears"], 6);
  for (nlohmann::json bad :
       {nlohmann::json{{"solver", "x"}}, nlohmann::json{{"loss", "x"}}, nlohmann::json{{"grid", 0}},
        nlohmann::json{{"max_shrink", 1.5}}, nlohmann::json{{"nope", 1}},
        nlohmann::json{{"loss_tokens", "many"}}}) {
    QuantOverrides b;
    b.extra = bad;
    EXPECT_THROW(find_method("int4_awq").factory(awq_spec(b)), Error) << bad.dump();
  }
  QuantOverrides b3;
  b3.bits = 3;
  EXPECT_EQ(awq_spec(b3).layout, "compressed-tensors");
}

// Without GQA the v -> o mapping is searched and folded too; per-channel groups work.
TEST(AwqBlock, NonGqaModelUsesTheVoMapping) {
  nlohmann::json cfg = nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": false,
    "torch_dtype": "float32", "rope_theta": 10000.0})");
  Checkpoint ck = test::synthetic_checkpoint(cfg, 5);
  auto model = Model::load(ck);
  const int n = 6, seq = 32;
  const auto ids = some_ids(n * seq, 97);
  std::vector<float> x(ids.size() * 64);
  model->embed(ids.data(), int64_t(ids.size()), x.data());
  QuantOverrides o;
  o.group = -1;
  o.extra = {{"loss_tokens", 64}};
  const QuantSpec spec = awq_spec(o);
  EXPECT_EQ(spec.layout, "compressed-tensors") << "the awq layout needs groups";
  BlockJob job(*model, 0, spec, model->block(0));
  job.inputs = x.data(), job.n_samples = n, job.seq = seq;
  std::vector<float> ref, got;
  job.run(nullptr, &ref);
  auto q = find_method("int4_awq").factory(spec);
  q->quantize_block(job);
  nlohmann::json summary = nlohmann::json::object();
  q->finish(summary);
  EXPECT_TRUE(summary["awq"]["alphas"]["0"].contains("vo"));
  for (int s = 0; s < test::kDenseModules; ++s) {
    ASSERT_TRUE(job.quantized[s].has_value());
    EXPECT_EQ(job.quantized[s]->group, -1);
    expect_layout_roundtrip(*job.quantized[s], "compressed-tensors");
  }
  job.run(nullptr, &got);
  EXPECT_LT(rel_diff(ref, got), 0.05);
}

// ---- end to end on qwen3-tiny: AWQ beats RTN at 4, 3 and 2 bits ----------------------------

double tiny_ppl_ratio(const std::string& tag, const std::string& method, QuantOverrides o) {
  QuantizeOptions q;
  q.input = test::model_dir("qwen3-tiny");
  q.output = test::temp_dir("awq-e2e-" + tag) / "out";
  q.method = method;
  q.overrides = std::move(o);
  q.num_samples = 32;
  q.seq_len = 128;
  q.quality.data = test::data_path("eval/heldout.txt");
  q.quality.tokens = 32 * 256;
  q.quality.seq_len = 256;
  const QuantizeResult r = quantize_and_check(q);
  EXPECT_TRUE(r.quality.measured);
  EXPECT_EQ(r.quantized_linears, 28);
  std::printf("  %-24s ppl ratio %.5f\n", tag.c_str(), r.quality.ppl_ratio);
  return r.quality.ppl_ratio;
}

class AwqEndToEnd : public ::testing::TestWithParam<int> {};

TEST_P(AwqEndToEnd, BeatsRtnOnHeldOutPerplexity) {
  const int bits = GetParam();
  QuantOverrides o;
  o.bits = bits;
  if (bits == 2) o.group = 64;
  QuantOverrides rtn = o;
  rtn.symmetric = false;
  rtn.extra = {{"solver", "rtn"}, {"mse", 0}};
  const double r_rtn = tiny_ppl_ratio("rtn-" + std::to_string(bits), "int4_gptq", rtn);
  const double r_awq = tiny_ppl_ratio("awq-" + std::to_string(bits), "int4_awq", o);
  EXPECT_LT(r_awq, r_rtn);
}

INSTANTIATE_TEST_SUITE_P(Bits, AwqEndToEnd, ::testing::Values(4, 3, 2));

}  // namespace
}  // namespace llmc
