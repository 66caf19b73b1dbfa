// Tests of the forward pass: config parsing, kernels, exactness against transformers' logits,
// the block-wise API, the KV cache and error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "backend/cpu/kernels.h"
#include "backend/cpu/vmath.h"
#include "core/error.h"
#include "core/threads.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "loader/quant_linear.h"
#include "model/arch.h"
#include "model/model.h"
#include "synthetic_model.h"
#include "testing.h"

using namespace llmc;
using nlohmann::json;
using namespace llmc::test;

namespace {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

json tiny_config_v5() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 100,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
    "dtype": "bfloat16", "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})");
}

// ---------------------------------------------------------------- naive double reference
// A straightforward, independent implementation of the HF forward (one sequence) in double.
std::vector<double> naive_forward(const Checkpoint& ck, const std::vector<int32_t>& ids) {
  const ModelConfig c = ModelConfig::from_json(ck.config, "naive");
  const TensorReader& t = *ck.tensors;
  auto W = [&](const std::string& n) {
    auto f = t.get(n).to_f32();
    return std::vector<double>(f.begin(), f.end());
  };
  const int S = int(ids.size()), H = c.hidden_size, F = c.intermediate_size, D = c.head_dim;
  const int NH = c.num_heads, NKV = c.num_kv_heads;
  auto linear = [&](const std::vector<double>& x, int rows, int in, const std::string& p, int out) {
    auto w = W(p + ".weight");
    std::vector<double> b(out, 0.0);
    if (t.has(p + ".bias")) b = W(p + ".bias");
    std::vector<double> y(size_t(rows) * out);
    for (int r = 0; r < rows; ++r)
      for (int o = 0; o < out; ++o) {
        double s = b[o];
        for (int i = 0; i < in; ++i) s += x[size_t(r) * in + i] * w[size_t(o) * in + i];
        y[size_t(r) * out + o] = s;
      }
    return y;
  };
  auto rms = [&](std::vector<double> x, int rows, int dim, const std::vector<double>& w) {
    for (int r = 0; r < rows; ++r) {
      double ss = 0;
      for (int i = 0; i < dim; ++i) ss += x[size_t(r) * dim + i] * x[size_t(r) * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + c.rms_norm_eps);
      for (int i = 0; i < dim; ++i) x[size_t(r) * dim + i] *= inv * w[i];
    }
    return x;
  };
  // rope frequencies in double, scaling formulas written out from the published definitions
  std::vector<double> invf(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    double f = 1.0 / std::pow(c.rope.theta, 2.0 * i / D);
    if (c.rope.type == "linear") f /= c.rope.factor;
    if (c.rope.type == "llama3") {
      const double wl = 2 * M_PI / f, lo = c.rope.original_max_position / c.rope.low_freq_factor,
                   hi = c.rope.original_max_position / c.rope.high_freq_factor;
      if (wl > lo) f = f / c.rope.factor;
      else if (wl >= hi) {
        const double sm = (c.rope.original_max_position / wl - c.rope.low_freq_factor) /
                          (c.rope.high_freq_factor - c.rope.low_freq_factor);
        f = (1 - sm) * f / c.rope.factor + sm * f;
      }
    }
    invf[i] = f;
  }
  auto rope = [&](std::vector<double>& x, int heads) {
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < heads; ++h) {
        double* a = &x[(size_t(s) * heads + h) * D];
        for (int i = 0; i < D / 2; ++i) {
          const double cs = std::cos(s * invf[i]), sn = std::sin(s * invf[i]);
          const double x1 = a[i], x2 = a[i + D / 2];
          a[i] = x1 * cs - x2 * sn;
          a[i + D / 2] = x2 * cs + x1 * sn;
        }
      }
  };
  auto emb = W("model.embed_tokens.weight");
  std::vector<double> h(size_t(S) * H);
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < H; ++i) h[size_t(s) * H + i] = emb[size_t(ids[s]) * H + i];
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto x = rms(h, S, H, W(p + "input_layernorm.weight"));
    auto q = linear(x, S, H, p + "self_attn.q_proj", NH * D);
    auto k = linear(x, S, H, p + "self_attn.k_proj", NKV * D);
    auto v = linear(x, S, H, p + "self_attn.v_proj", NKV * D);
    if (c.qk_norm) {
      q = rms(q, S * NH, D, W(p + "self_attn.q_norm.weight"));
      k = rms(k, S * NKV, D, W(p + "self_attn.k_norm.weight"));
    }
    rope(q, NH);
    rope(k, NKV);
    std::vector<double> a(size_t(S) * NH * D, 0.0);
    for (int hh = 0; hh < NH; ++hh) {
      const int kh = hh / (NH / NKV);
      for (int i = 0; i < S; ++i) {
        std::vector<double> sc(i + 1);
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int e = 0; e < D; ++e) d += q[(size_t(i) * NH + hh) * D + e] * k[(size_t(j) * NKV + kh) * D + e];
          sc[j] = d / std::sqrt(double(D));
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (auto& s : sc) sum += (s = std::exp(s - mx));
        for (int j = 0; j <= i; ++j)
          for (int e = 0; e < D; ++e)
            a[(size_t(i) * NH + hh) * D + e] += sc[j] / sum * v[(size_t(j) * NKV + kh) * D + e];
      }
    }
    auto o = linear(a, S, NH * D, p + "self_attn.o_proj", H);
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    x = rms(h, S, H, W(p + "post_attention_layernorm.weight"));
    auto swiglu = [&](const std::vector<double>& in, int rows, const std::string& m, int width) {
      auto g = linear(in, rows, H, m + "gate_proj", width);
      auto u = linear(in, rows, H, m + "up_proj", width);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      return linear(g, rows, width, m + "down_proj", H);
    };
    if (!c.is_moe_layer(l)) {
      auto d = swiglu(x, S, p + "mlp.", F);
      for (size_t i = 0; i < h.size(); ++i) h[i] += d[i];
      continue;
    }
    // Sparse MoE block (HF Qwen3MoeSparseMoeBlock / Qwen2MoeSparseMoeBlock), token by token.
    const int E = c.num_experts;
    auto logits = linear(x, S, H, p + "mlp.gate", E);
    for (int s = 0; s < S; ++s) {
      std::vector<double> pr(logits.begin() + size_t(s) * E, logits.begin() + size_t(s + 1) * E);
      const double mx = *std::max_element(pr.begin(), pr.end());
      double sum = 0;
      for (auto& v : pr) sum += (v = std::exp(v - mx));
      for (auto& v : pr) v /= sum;
      std::vector<int> top;
      std::vector<bool> used(size_t(E), false);
      for (int k = 0; k < c.num_experts_per_tok; ++k) {
        int best = -1;
        for (int e = 0; e < E; ++e)
          if (!used[size_t(e)] && (best < 0 || pr[size_t(e)] > pr[size_t(best)])) best = e;
        used[size_t(best)] = true;
        top.push_back(best);
      }
      double tsum = 0;
      for (int e : top) tsum += pr[size_t(e)];
      std::vector<double> xs(x.begin() + size_t(s) * H, x.begin() + size_t(s + 1) * H);
      for (int e : top) {
        const double wgt = c.norm_topk_prob ? pr[size_t(e)] / tsum : pr[size_t(e)];
        auto y = swiglu(xs, 1, p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size);
        for (int i = 0; i < H; ++i) h[size_t(s) * H + i] += wgt * y[size_t(i)];
      }
      if (c.shared_expert_intermediate_size > 0) {
        auto y = swiglu(xs, 1, p + "mlp.shared_expert.", c.shared_expert_intermediate_size);
        const double gl = linear(xs, 1, H, p + "mlp.shared_expert_gate", 1)[0];
        const double sg = 1.0 / (1.0 + std::exp(-gl));
        for (int i = 0; i < H; ++i) h[size_t(s) * H + i] += sg * y[size_t(i)];
      }
    }
  }
  h = rms(h, S, H, W("model.norm.weight"));
  return linear(h, S, H, c.tie_word_embeddings ? "model.embed_tokens" : "lm_head", c.vocab_size);
}

struct Diff {
  double max_abs = 0, rel_l2 = 0;
};
template <typename A, typename B>
Diff compare(const A& got, const B& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  Diff d;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double e = double(got[i]) - double(want[i]);
    d.max_abs = std::max(d.max_abs, std::abs(e));
    num += e * e;
    den += double(want[i]) * double(want[i]);
  }
  d.rel_l2 = std::sqrt(num / std::max(den, 1e-300));
  return d;
}

}  // namespace

// ================================================================ config
TEST(ModelConfig, ParsesV5Fixture) {
  const auto dir = test::model_dir("qwen3-tiny");
  const auto j = json::parse(read_text_file(dir / "config.json"));
  const ModelConfig c = ModelConfig::from_json(j, "qwen3-tiny/config.json");
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.num_layers, 4);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.dtype, "bfloat16");
}

TEST(ModelConfig, ParsesV4StyleWithDefaults) {
  const json j = json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "vocab_size": 1000, "hidden_size": 96,
    "intermediate_size": 200, "num_hidden_layers": 3, "num_attention_heads": 6,
    "max_position_embeddings": 512, "torch_dtype": "float16", "rope_theta": 50000.0,
    "rope_scaling": null, "head_dim": null, "use_sliding_window": false, "hidden_act": "silu"})");
  const ModelConfig c = ModelConfig::from_json(j, "v4/config.json");
  EXPECT_EQ(c.num_kv_heads, 6);    // default: num_attention_heads
  EXPECT_EQ(c.head_dim, 16);       // default: hidden / heads
  EXPECT_TRUE(c.qkv_bias);         // Qwen2
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope.theta, 50000.0);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.dtype, "float16");
  EXPECT_EQ(c.model_type, "qwen2");
}

TEST(ModelConfig, Llama3RopeScalingV4AndV5) {
  json v4 = tiny_config_v5();
  v4["architectures"] = {"LlamaForCausalLM"};
  v4.erase("rope_parameters");
  v4["rope_theta"] = 500000.0;
  v4["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  const ModelConfig a = ModelConfig::from_json(v4, "v4");
  EXPECT_EQ(a.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(a.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(a.rope.factor, 8.0);
  EXPECT_EQ(a.rope.original_max_position, 8192);
  json v5 = v4;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0},
                           {"low_freq_factor", 2.0}, {"high_freq_factor", 8.0},
                           {"original_max_position_embeddings", 4096}};
  const ModelConfig b = ModelConfig::from_json(v5, "v5");
  EXPECT_DOUBLE_EQ(b.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(b.rope.factor, 32.0);
  EXPECT_DOUBLE_EQ(b.rope.low_freq_factor, 2.0);
  EXPECT_DOUBLE_EQ(b.rope.high_freq_factor, 8.0);
  EXPECT_EQ(b.rope.original_max_position, 4096);
  json old = v4;  // older spelling "type"
  old["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(ModelConfig::from_json(old, "old").rope.type, "linear");
}

TEST(ModelConfig, ErrorsNameFileAndField) {
  struct Case {
    std::function<void(json&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j.erase("vocab_size"); }, "\"vocab_size\" is missing"},
      {[](json& j) { j["hidden_size"] = "big"; }, "\"hidden_size\" must be an integer"},
      {[](json& j) { j["num_hidden_layers"] = 0; }, "\"num_hidden_layers\" is out of range"},
      {[](json& j) { j["num_key_value_heads"] = 3; }, "\"num_key_value_heads\" (3) must divide"},
      {[](json& j) { j.erase("architectures"); }, "\"architectures\" is missing"},
      {[](json& j) { j["architectures"] = json::array(); }, "\"architectures\" must be a non-empty"},
      {[](json& j) { j["rope_parameters"]["rope_type"] = "yarn"; }, "\"yarn\" is not supported"},
      {[](json& j) { j["rope_parameters"] = {{"rope_type", "linear"}}; }, "rope_parameters.factor\" is missing"},
      {[](json& j) { j["rope_parameters"]["rope_theta"] = -1; }, "rope_parameters.rope_theta\" is out of range"},
      {[](json& j) { j["rope_parameters"] = 5; }, "\"rope_parameters\" must be an object"},
      {[](json& j) { j["rms_norm_eps"] = "x"; }, "\"rms_norm_eps\" must be a number"},
      {[](json& j) { j["tie_word_embeddings"] = 1; }, "\"tie_word_embeddings\" must be true or false"},
      {[](json& j) { j["hidden_act"] = "gelu"; }, "\"hidden_act\" \"gelu\" is not supported"},
      {[](json& j) { j["use_sliding_window"] = true; }, "sliding-window attention is not supported"},
      {[](json& j) { j["head_dim"] = 15; }, "\"head_dim\" must be even"},
      {[](json& j) { j.erase("head_dim"); j["hidden_size"] = 66; }, "\"head_dim\" is missing and hidden_size"},
      {[](json& j) { j["model_type"] = 3; }, "\"model_type\" must be a string"},
      {[](json& j) {
         j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
       }, "original_max_position_embeddings\" is missing"},
      {[](json& j) {
         j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0},
                                 {"high_freq_factor", 1.0}, {"original_max_position_embeddings", 10}};
       }, "must be greater than low_freq_factor"},
  };
  for (const auto& c : cases) {
    json j = tiny_config_v5();
    c.edit(j);
    const std::string msg = error_of([&] { ModelConfig::from_json(j, "some/dir/config.json"); });
    EXPECT_NE(msg.find("some/dir/config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg << "\n  expected: " << c.expect;
  }
  EXPECT_NE(error_of([] { ModelConfig::from_json(json::array(), "x.json"); }).find("not a JSON object"),
            std::string::npos);
}

TEST(ModelConfig, UnsupportedArchitectureListsSupported) {
  json j = tiny_config_v5();
  j["architectures"] = {"GPT2LMHeadModel"};
  const std::string msg = error_of([&] { ModelConfig::from_json(j, "gpt2/config.json"); });
  EXPECT_NE(msg.find("gpt2/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported architecture \"GPT2LMHeadModel\""), std::string::npos) << msg;
  for (const auto& name : supported_architectures()) EXPECT_NE(msg.find(name), std::string::npos) << name;
}

TEST(Arch, TableLookup) {
  const auto names = supported_architectures();
  EXPECT_EQ(names, (std::vector<std::string>{"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                             "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"}));
  EXPECT_TRUE(find_arch("Qwen3MoeForCausalLM")->moe);
  EXPECT_FALSE(find_arch("Qwen3ForCausalLM")->moe);
  ASSERT_NE(find_arch("Qwen2ForCausalLM"), nullptr);
  EXPECT_TRUE(find_arch("Qwen2ForCausalLM")->qkv_bias);
  EXPECT_TRUE(find_arch("Qwen3ForCausalLM")->qk_norm);
  EXPECT_FALSE(find_arch("LlamaForCausalLM")->qk_norm);
  EXPECT_EQ(find_arch("MistralForCausalLM"), nullptr);
  EXPECT_STREQ(arch_for("LlamaForCausalLM", "x").model_type, "llama");
  EXPECT_THROW(arch_for("Nope", "x"), Error);
}

// ================================================================ kernels
TEST(ModelConfig, MoeFieldsBothSpellingsAndErrors) {
  json j = tiny_config_v5();
  j["architectures"] = {"Qwen3MoeForCausalLM"};
  j["num_local_experts"] = 8, j["num_experts_per_tok"] = 2, j["moe_intermediate_size"] = 32;
  j["norm_topk_prob"] = true, j["decoder_sparse_step"] = 2, j["num_hidden_layers"] = 4;
  j["mlp_only_layers"] = {3};
  ModelConfig c = ModelConfig::from_json(j, "moe.json");
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  // (l + 1) % 2 == 0 and not in mlp_only_layers: only layer 1.
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_FALSE(c.is_moe_layer(3));
  json v4 = j;
  v4.erase("num_local_experts");
  v4["num_experts"] = 4;
  EXPECT_EQ(ModelConfig::from_json(v4, "moe.json").num_experts, 4);
  json both = j;
  both["num_experts"] = 4;
  EXPECT_NE(error_of([&] { ModelConfig::from_json(both, "moe.json"); }).find("disagrees"),
            std::string::npos);
  json none = v4;
  none.erase("num_experts");
  EXPECT_NE(error_of([&] { ModelConfig::from_json(none, "moe.json"); }).find("num_experts\" is missing"),
            std::string::npos);
  json topk = j;
  topk["num_experts_per_tok"] = 9;
  EXPECT_NE(error_of([&] { ModelConfig::from_json(topk, "moe.json"); }).find("num_experts_per_tok"),
            std::string::npos);
  json bad = j;
  bad["mlp_only_layers"] = {7};
  EXPECT_NE(error_of([&] { ModelConfig::from_json(bad, "moe.json"); }).find("mlp_only_layers"),
            std::string::npos);
  // A dense architecture ignores MoE fields.
  json dense = tiny_config_v5();
  dense["num_experts"] = 8;
  EXPECT_EQ(ModelConfig::from_json(dense, "d.json").num_experts, 0);
}

TEST(Arch, BlockLayoutDescribesDenseAndMoeBlocks) {
  const ModelConfig dc = ModelConfig::from_json(tiny_config_v5(), "d.json");
  const BlockLayout d = block_layout(arch_for(dc.architecture, "t"), dc, 0);
  ASSERT_EQ(d.size(), test::kDenseModules);
  const char* names[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
  for (int s = 0; s < d.size(); ++s) {
    EXPECT_EQ(d.modules[size_t(s)].name, names[s]);
    EXPECT_EQ(int(d.modules[size_t(s)].role), s);  // LinearSlot order
    EXPECT_TRUE(d.modules[size_t(s)].quantize);
  }
  EXPECT_FALSE(d.moe());
  ASSERT_EQ(d.groups.size(), 4u);  // q/k/v, o, gate/up, down
  EXPECT_EQ(d.groups[0].members, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(d.groups[2].members, (std::vector<int>{4, 5}));
  EXPECT_EQ(d.at(LinearSlot::K).fused, "self_attn.qkv_proj");
  EXPECT_EQ(d.at(LinearSlot::Up).fused, "mlp.gate_up_proj");
  EXPECT_EQ(d.at(LinearSlot::Down).out, dc.hidden_size);
  EXPECT_EQ(d.at(LinearSlot::Down).in, dc.intermediate_size);

  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-moe-tiny"));
  const ModelConfig mc = ModelConfig::from_json(ck.config, "moe");
  const BlockLayout m = block_layout(arch_for(mc.architecture, "t"), mc, 2);
  ASSERT_TRUE(m.moe());
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.top_k, 2);
  ASSERT_EQ(m.size(), 4 + 1 + 8 * 3);
  const int r = m.find(ModuleRole::Router);
  ASSERT_EQ(r, 4);
  EXPECT_EQ(m.modules[4].name, "mlp.gate");
  EXPECT_FALSE(m.modules[4].quantize);
  EXPECT_EQ(m.modules[4].out, 8);
  const int g5 = m.find(ModuleRole::Gate, 5), u5 = m.find(ModuleRole::Up, 5), d5 = m.find(ModuleRole::Down, 5);
  EXPECT_EQ(m.modules[size_t(u5)].name, "mlp.experts.5.up_proj");
  EXPECT_EQ(m.modules[size_t(d5)].in, 96);
  EXPECT_EQ(m.modules[size_t(g5)].group, m.modules[size_t(u5)].group);
  EXPECT_EQ(m.groups[size_t(m.modules[size_t(g5)].group)].expert, 5);
  EXPECT_EQ(m.groups[size_t(m.modules[size_t(d5)].group)].stage, 3);
  EXPECT_EQ(m.modules[size_t(d5)].fused, "mlp.experts");
  EXPECT_EQ(m.find(ModuleRole::Gate), -1);  // no dense MLP
  EXPECT_EQ(m.groups.size(), size_t(2 + 1 + 8 * 2));
}

TEST(Kernels, FastExpAccuracy) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double want = std::exp(double(x));
    worst = std::max(worst, std::abs(cpu::fast_exp(x) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);
  for (float x0 = -90.0f; x0 <= 90.0f; x0 += 1.37f) {  // vector version, clamping included
    const cpu::v8f v = cpu::fast_exp(cpu::v8f{x0, x0 + 0.1f, x0 + 0.2f, x0 + 0.3f, x0 + 0.4f, x0 + 0.5f, x0 + 0.6f, x0 + 0.7f});
    for (int l = 0; l < 8; ++l) EXPECT_NEAR(v[l], cpu::fast_exp(x0 + 0.1f * l), 4e-7 * cpu::fast_exp(x0 + 0.1f * l));
  }
  EXPECT_EQ(cpu::fast_exp(0.0f), 1.0f);
  EXPECT_LT(cpu::fast_exp(-1000.0f), 1e-37f);  // clamped, still finite and tiny
  EXPECT_TRUE(std::isfinite(cpu::fast_exp(1000.0f)));
}

TEST(Kernels, RmsNormMatchesDefinition) {
  std::mt19937 rng(3);
  const int rows = 37, dim = 67;
  auto x = randn(rows * dim, 2.0f, rng), w = randn(dim, 1.0f, rng);
  std::vector<float> y(x.size());
  cpu::rms_norm(x.data(), w.data(), rows, dim, 1e-5, y.data());
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i) EXPECT_NEAR(y[r * dim + i], x[r * dim + i] * inv * w[i], 1e-5);
  }
  cpu::rms_norm(x.data(), w.data(), rows, dim, 1e-5, x.data());  // in place
  EXPECT_EQ(x, y);
}

TEST(Kernels, RopeInvFreqMatchesTransformersFormula) {
  RopeConfig r;
  r.theta = 1e6;
  const auto f = cpu::rope_inv_freq(r, 32);
  ASSERT_EQ(f.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(f[i], 1.0 / std::pow(1e6, 2.0 * i / 32), 1e-7 * f[i] + 1e-12);
  EXPECT_EQ(f[0], 1.0f);
  r.type = "linear";
  r.factor = 4;
  const auto g = cpu::rope_inv_freq(r, 32);
  for (int i = 0; i < 16; ++i) EXPECT_FLOAT_EQ(g[i], f[i] / 4);
  // llama3: high frequencies unchanged, low ones divided by factor, smooth in between
  r = RopeConfig{};
  r.theta = 500000;
  r.type = "llama3";
  r.factor = 8;
  r.low_freq_factor = 1;
  r.high_freq_factor = 4;
  r.original_max_position = 64;
  const auto l = cpu::rope_inv_freq(r, 64);
  RopeConfig d;
  d.theta = 500000;
  const auto base = cpu::rope_inv_freq(d, 64);
  int high = 0, low = 0, mid = 0;
  for (int i = 0; i < 32; ++i) {
    const double wl = 2 * M_PI / base[i];
    if (wl < 16) { EXPECT_FLOAT_EQ(l[i], base[i]); ++high; }
    else if (wl > 64) { EXPECT_FLOAT_EQ(l[i], base[i] / 8); ++low; }
    else {
      const double s = (64 / wl - 1) / 3;
      EXPECT_NEAR(l[i], (1 - s) * base[i] / 8 + s * base[i], 1e-6 * base[i]);
      ++mid;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  r.type = "dynamic";
  EXPECT_THROW(cpu::rope_inv_freq(r, 64), Error);
  EXPECT_THROW(cpu::rope_inv_freq(d, 7), Error);
}

TEST(Kernels, AttentionMatchesNaiveWithOffsetAndGqa) {
  std::mt19937 rng(5);
  const int batch = 2, pos0 = 5, seq = 70, heads = 6, kvh = 2, hd = 8, T = pos0 + seq;
  auto q = randn(size_t(batch) * seq * heads * hd, 1.0f, rng);
  auto k = randn(size_t(batch) * T * kvh * hd, 1.0f, rng);
  auto v = randn(size_t(batch) * T * kvh * hd, 1.0f, rng);
  std::vector<float> out(q.size());
  cpu::causal_attention(q.data(), k.data(), v.data(), batch, seq, pos0, heads, kvh, hd,
                        int64_t(T) * kvh * hd, out.data());
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < seq; ++i) {
        const int kh = h / 3, n = pos0 + i + 1;
        std::vector<double> s(n);
        double mx = -1e300, sum = 0;
        for (int j = 0; j < n; ++j) {
          double d = 0;
          for (int e = 0; e < hd; ++e)
            d += double(q[((size_t(b) * seq + i) * heads + h) * hd + e]) *
                 k[((size_t(b) * T + j) * kvh + kh) * hd + e];
          s[j] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (int e = 0; e < hd; ++e) {
          double o = 0;
          for (int j = 0; j < n; ++j) o += s[j] / sum * v[((size_t(b) * T + j) * kvh + kh) * hd + e];
          ASSERT_NEAR(out[((size_t(b) * seq + i) * heads + h) * hd + e], o, 2e-5);
        }
      }
}

TEST(Kernels, SiluMulAddLogSumExpArgmax) {
  std::vector<float> g = {-3, -0.5f, 0, 0.5f, 3, 20}, u = {1, 2, 3, 4, 5, 6}, o(6);
  cpu::silu_mul(g.data(), u.data(), o.data(), 6);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(o[i], g[i] / (1 + std::exp(-double(g[i]))) * u[i], 1e-5);
  cpu::add_inplace(o.data(), u.data(), 6);
  EXPECT_NEAR(o[2], 3.0f, 1e-6);
  std::vector<float> x = {1, 5, -2, 5, 0.25f};
  double want = 0;
  for (float f : x) want += std::exp(double(f));
  EXPECT_NEAR(cpu::log_sum_exp(x.data(), 5), std::log(want), 1e-6);
  EXPECT_EQ(cpu::argmax(x.data(), 5), 1);
  std::vector<float> row(37), y(37);
  for (int i = 0; i < 37; ++i) row[i] = 0.3f * i - 4, y[i] = 0.1f * i;
  double z = 0, t = 0;
  for (int i = 0; i < 37; ++i) z += std::exp(double(row[i]) - 2);
  for (int i = 0; i < 37; ++i) t += std::exp(double(row[i]) - 2) * (row[i] - y[i]);
  EXPECT_NEAR(cpu::sum_exp_shifted(row.data(), 37, 2.0f), z, 1e-6 * z);
  EXPECT_NEAR(cpu::sum_exp_shifted_times_diff(row.data(), y.data(), 37, 2.0f), t, 1e-6 * std::abs(t));
  EXPECT_NEAR(cpu::sum_squares(row.data(), 37), [&] { double s = 0; for (float v : row) s += double(v) * v; return s; }(), 1e-9);
  EXPECT_EQ(cpu::max_value(row.data(), 37), row[36]);
  std::vector<float> sm = row;
  cpu::softmax_inplace(sm.data(), 37);
  for (int i = 0; i < 37; ++i) EXPECT_NEAR(sm[i], std::exp(double(row[i]) - std::log(z) - 2), 1e-6);
  std::vector<float> big(1000, -1e4f);
  big[777] = 1e4f;
  EXPECT_NEAR(cpu::log_sum_exp(big.data(), 1000), 1e4, 1e-3);
}

TEST(Linear, GemmXwtMatchesNaiveAllShapes) {
  std::mt19937 rng(7);
  set_num_threads(4);
  for (auto [m, k, n] : {std::tuple{1, 5, 3}, {3, 64, 1000}, {300, 96, 700}, {513, 40, 33}, {2, 1024, 4096}}) {
    auto x = randn(size_t(m) * k, 1.0f, rng), w = randn(size_t(n) * k, 1.0f, rng);
    std::vector<float> y(size_t(m) * n);
    gemm_xwt(x.data(), m, k, w.data(), n, y.data());
    for (int i = 0; i < m; i += std::max(1, m / 7))
      for (int j = 0; j < n; j += std::max(1, n / 11)) {
        double s = 0;
        for (int e = 0; e < k; ++e) s += double(x[size_t(i) * k + e]) * w[size_t(j) * k + e];
        ASSERT_NEAR(y[size_t(i) * n + j], s, 1e-4 * std::sqrt(double(k))) << m << "x" << k << "x" << n;
      }
  }
  set_num_threads(0);
}

TEST(Linear, DenseLinearBiasStatsAndErrors) {
  reset_gemm_stats();
  DenseLinear l({1, 2, 3, 4, 5, 6}, 3, 2, {10, 20, 30});
  EXPECT_EQ(l.in_features(), 2);
  EXPECT_EQ(l.out_features(), 3);
  EXPECT_EQ(l.bytes_held(), 9 * sizeof(float));
  const float x[4] = {1, 1, 2, -1};
  float y[6];
  l.forward(x, 2, y);
  EXPECT_FLOAT_EQ(y[0], 13);
  EXPECT_FLOAT_EQ(y[1], 27);
  EXPECT_FLOAT_EQ(y[2], 41);
  EXPECT_FLOAT_EQ(y[3], 10);
  EXPECT_FLOAT_EQ(y[5], 34);
  const GemmStats s = gemm_stats();
  EXPECT_EQ(s.calls, 1u);
  EXPECT_DOUBLE_EQ(s.flops, 2.0 * 2 * 2 * 3);
  EXPECT_THROW(DenseLinear({1, 2, 3}, 2, 2), Error);
  EXPECT_THROW(DenseLinear({1, 2, 3, 4}, 2, 2, {1}), Error);
}

// ================================================================ exactness vs transformers
namespace {
void check_reference_logits(const std::filesystem::path& dir) {
  const Checkpoint ck = open_checkpoint(dir);
  auto model = Model::load(ck);
  SafetensorsFile ref(dir / "reference_logits.safetensors");
  const TensorRef ids_t = ref.get("input_ids");
  ASSERT_EQ(ids_t.info.shape, (Shape{2, 32}));
  const auto ids64 = ids_t.to_f32();
  std::vector<int32_t> ids(ids64.begin(), ids64.end());
  const auto want = ref.get("logits").to_f32();
  const auto got = model->forward(ids, 2, 32);
  const Diff d = compare(got, want);
  EXPECT_LE(d.max_abs, 1e-3) << dir;
  EXPECT_LE(d.rel_l2, 1e-4) << dir;
  std::printf("  %s: max|diff| %.3g, rel L2 %.3g\n", dir.filename().c_str(), d.max_abs, d.rel_l2);
}
}  // namespace

TEST(Exactness, Qwen3TinyLogitsMatchTransformers) { check_reference_logits(test::model_dir("qwen3-tiny")); }
TEST(Exactness, LlamaTinyLogitsMatchTransformers) { check_reference_logits(test::model_dir("llama-tiny")); }
TEST(Exactness, Qwen3MoeTinyLogitsMatchTransformers) {
  check_reference_logits(test::model_dir("qwen3-moe-tiny"));
}
TEST(Exactness, Qwen3SmallLogitsMatchTransformers) {
  const auto dir = test::shared_path("models/qwen3-small");
  if (dir.empty()) GTEST_SKIP() << "../shared/models/qwen3-small not present";
  check_reference_logits(dir);
}

TEST(Exactness, SyntheticArchitecturesMatchNaiveDouble) {
  struct Case {
    const char* arch;
    bool tie;
    std::function<void(json&)> edit;
  };
  const std::vector<Case> cases = {
      {"Qwen2ForCausalLM", false, [](json&) {}},
      {"Qwen3ForCausalLM", true, [](json&) {}},
      {"LlamaForCausalLM", false,
       [](json& j) {
         j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                                 {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                 {"original_max_position_embeddings", 32}};
       }},
      {"LlamaForCausalLM", true,
       [](json& j) { j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1e4}, {"factor", 2.0}}; }},
      // Mixture of experts: transformers-5 spelling, top-2 renormalised, layer 1 dense.
      {"Qwen3MoeForCausalLM", true,
       [](json& j) {
         j["num_local_experts"] = 6, j["num_experts_per_tok"] = 2, j["norm_topk_prob"] = true;
         j["moe_intermediate_size"] = 32, j["mlp_only_layers"] = {1};
       }},
      // transformers-4 spelling, top-3 not renormalised, a shared expert with its sigmoid gate.
      {"Qwen2MoeForCausalLM", false,
       [](json& j) {
         j["num_experts"] = 5, j["num_experts_per_tok"] = 3, j["norm_topk_prob"] = false;
         j["moe_intermediate_size"] = 24, j["shared_expert_intermediate_size"] = 40;
       }},
  };
  for (const auto& c : cases) {
    json cfg = tiny_config_v5();
    cfg["architectures"] = {c.arch};
    cfg["tie_word_embeddings"] = c.tie;
    c.edit(cfg);
    Checkpoint ck = synthetic_checkpoint(cfg, 11);
    auto model = Model::load(ck);
    std::vector<int32_t> ids;
    for (int i = 0; i < 2 * 40; ++i) ids.push_back((i * 37 + 5) % 100);
    const auto got = model->forward(ids, 2, 40);
    for (int b = 0; b < 2; ++b) {
      std::vector<int32_t> one(ids.begin() + b * 40, ids.begin() + (b + 1) * 40);
      const auto want = naive_forward(ck, one);
      std::vector<float> mine(got.begin() + size_t(b) * 40 * 100, got.begin() + size_t(b + 1) * 40 * 100);
      const Diff d = compare(mine, want);
      EXPECT_LT(d.rel_l2, 1e-5) << c.arch;
      EXPECT_LT(d.max_abs, 1e-3) << c.arch;
    }
  }
}

TEST(Exactness, Bf16AndF16WeightsComputedInFp32) {
  for (DType dt : {DType::BF16, DType::F16}) {
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5(), 2, dt);
    auto model = Model::load(ck);
    std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8};
    const Diff d = compare(model->forward(ids, 1, 8), naive_forward(ck, ids));
    EXPECT_LT(d.rel_l2, 1e-5) << dtype_name(dt);
  }
}

// ================================================================ block API
TEST(BlockApi, BlockwiseEqualsForwardAndHooksSeeEveryLinear) {
  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  auto m = Model::load(ck);
  const ModelConfig& c = m->config();
  const int batch = 3, seq = 9;
  std::vector<int32_t> ids;
  for (int i = 0; i < batch * seq; ++i) ids.push_back((i * 131 + 7) % c.vocab_size);
  const auto full = m->forward(ids, batch, seq);
  std::vector<float> h(size_t(batch) * seq * c.hidden_size);
  m->embed(ids.data(), batch * seq, h.data());
  std::vector<std::tuple<int, LinearSlot, int64_t, int64_t>> seen;
  LinearHook hook = [&](int layer, LinearSlot s, const backend::MatView& x) {
    ASSERT_FALSE(x.on_device());
    for (int64_t i = 0; i < x.rows * x.cols; ++i) ASSERT_TRUE(std::isfinite(x.data[i]));
    seen.emplace_back(layer, s, x.rows, x.cols);
  };
  for (int l = 0; l < c.num_layers; ++l) m->run_block(l, h.data(), batch, seq, &hook);
  m->final_norm(h.data(), batch * seq);
  std::vector<float> logits(size_t(batch) * seq * c.vocab_size);
  m->lm_head(h.data(), batch * seq, logits.data());
  EXPECT_EQ(logits, full);
  ASSERT_EQ(seen.size(), size_t(c.num_layers) * test::kDenseModules);
  for (int l = 0; l < c.num_layers; ++l)
    for (int s = 0; s < test::kDenseModules; ++s) {
      auto [layer, slot, rows, cols] = seen[l * test::kDenseModules + s];
      EXPECT_EQ(layer, l);
      EXPECT_EQ(int(slot), s);
      EXPECT_EQ(rows, batch * seq);
      const int64_t want = slot == LinearSlot::O ? c.num_heads * c.head_dim
                           : slot == LinearSlot::Down ? c.intermediate_size : c.hidden_size;
      EXPECT_EQ(cols, want);
    }
  // the hook's inputs are what the linear layer multiplies: q_proj input = normed hidden
  const auto& b0 = m->block(0);
  EXPECT_EQ(b0.at(LinearSlot::Q).in_features(), c.hidden_size);
  EXPECT_EQ(b0.at(LinearSlot::Q).out_features(), c.num_heads * c.head_dim);
}

TEST(BlockApi, MoeHooksSeeRoutedTokensAndObservationLeavesOutputs) {
  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-moe-tiny"));
  auto m = Model::load(ck);
  const BlockLayout& L = m->layout(1);
  const int64_t H = m->config().hidden_size;
  std::vector<int32_t> ids;
  for (int i = 0; i < 2 * 24; ++i) ids.push_back((i * 131 + 7) % 8192);
  std::vector<float> x(ids.size() * size_t(H));
  m->embed(ids.data(), int64_t(ids.size()), x.data());
  std::map<int, int64_t> rows;
  LinearHook hook = [&](int, LinearSlot s, const backend::MatView& v) {
    EXPECT_EQ(v.cols, L.at(s).in);
    rows[int(s)] += v.rows;
  };
  std::vector<float> a = x;
  const std::vector<int64_t> c0 = m->routed_tokens(1);
  m->run_block(1, a.data(), 2, 24, &hook);
  const std::vector<int64_t> c1 = m->routed_tokens(1);
  EXPECT_EQ(rows[L.find(ModuleRole::Router)], 48);
  int64_t sum = 0;
  for (int e = 0; e < L.num_experts; ++e) {
    const int64_t n = c1[size_t(e)] - c0[size_t(e)];
    sum += n;
    EXPECT_EQ(rows[L.find(ModuleRole::Gate, e)], n) << e;  // routed rows only
    EXPECT_EQ(rows[L.find(ModuleRole::Down, e)], n) << e;
  }
  EXPECT_EQ(sum, 48 * L.top_k);
  // Every expert observing every token: hooks see 48 rows each, outputs unchanged.
  rows.clear();
  m->set_expert_observation(std::vector<bool>(size_t(L.num_experts), true));
  std::vector<float> b = x;
  m->run_block(1, b.data(), 2, 24, &hook);
  m->set_expert_observation({});
  for (int e = 0; e < L.num_experts; ++e) EXPECT_EQ(rows[L.find(ModuleRole::Up, e)], 48) << e;
  const Diff d = compare(b, a);
  EXPECT_LT(d.rel_l2, 1e-6);
  EXPECT_TRUE(m->routed_tokens(0).size() == 8u);
  // set_block checks the module count against the layout.
  BlockWeights w = m->block(1);
  w.linear.pop_back();
  EXPECT_NE(error_of([&] { m->set_block(1, w); }).find("expected 29"), std::string::npos);
}

TEST(BlockApi, SetBlockReplacesAndReleaseReloads) {
  const Checkpoint ck = open_checkpoint(test::model_dir("llama-tiny"));
  auto m = Model::load(ck);
  std::vector<int32_t> ids = {5, 6, 7, 8, 9, 10};
  const auto base = m->forward(ids, 1, 6);
  const uint64_t held_all = m->bytes_held();
  m->release_block(2);
  EXPECT_LT(m->bytes_held(), held_all);
  EXPECT_EQ(m->forward(ids, 1, 6), base);  // reloaded from the checkpoint
  EXPECT_EQ(m->bytes_held(), held_all);

  BlockWeights w = m->block(1);  // shares the Linear objects; replace down_proj by a zeroed copy
  auto& down = static_cast<DenseLinear&>(w.at(LinearSlot::Down));
  auto zero = std::make_shared<DenseLinear>(std::vector<float>(down.weight().size(), 0.0f),
                                            down.out_features(), down.in_features());
  w.linear[int(LinearSlot::Down)] = zero;
  m->set_block(1, w);
  const auto changed = m->forward(ids, 1, 6);
  EXPECT_GT(compare(changed, base).max_abs, 1e-3);
  m->release_block(1);
  EXPECT_EQ(m->forward(ids, 1, 6), base);

  BlockWeights bad = m->block(0);
  bad.linear[int(LinearSlot::K)] = std::make_shared<DenseLinear>(std::vector<float>(4, 0.f), 2, 2);
  EXPECT_NE(error_of([&] { m->set_block(0, bad); }).find("model.layers.0.self_attn.k_proj"), std::string::npos);
  bad = m->block(0);
  bad.linear[int(LinearSlot::Up)] = nullptr;
  EXPECT_NE(error_of([&] { m->set_block(0, bad); }).find("missing"), std::string::npos);
  bad = m->block(0);
  bad.post_norm.pop_back();
  EXPECT_NE(error_of([&] { m->set_block(0, bad); }).find("post_attention_layernorm"), std::string::npos);
  EXPECT_THROW(m->block(4), Error);
  EXPECT_THROW(m->release_block(-1), Error);
  std::vector<float> h(128);
  EXPECT_THROW(m->run_block(7, h.data(), 1, 1), Error);
}

TEST(BlockApi, CustomLinearFactoryIsUsed) {
  struct CountingFactory : LinearFactory {
    mutable std::vector<std::string> prefixes;
    std::shared_ptr<Linear> make(const TensorReader& t, const std::string& prefix, int64_t out,
                                 int64_t in) const override {
      prefixes.push_back(prefix);
      return LinearFactory::make(t, prefix, out, in);
    }
  };
  const Checkpoint ck = open_checkpoint(test::model_dir("llama-tiny"));
  auto f = std::make_shared<CountingFactory>();
  auto m = Model::load(ck, f);
  EXPECT_EQ(f->prefixes, std::vector<std::string>{"lm_head"});  // blocks are lazy
  m->block(3);
  ASSERT_EQ(f->prefixes.size(), 8u);
  EXPECT_EQ(f->prefixes[1], "model.layers.3.self_attn.q_proj");
  EXPECT_EQ(f->prefixes[7], "model.layers.3.mlp.down_proj");
}

// ================================================================ KV cache
TEST(KvCache, IncrementalEqualsFullForward) {
  const Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  auto m = Model::load(ck);
  const int V = m->config().vocab_size, batch = 2, n = 20;
  std::vector<int32_t> ids;
  for (int i = 0; i < batch * n; ++i) ids.push_back((i * 71 + 3) % V);
  const auto full = m->forward(ids, batch, n);
  KVCache cache = m->new_cache(batch, 32);
  // prefix of 7, then chunks of 1, 5, 7
  int pos = 0;
  for (int chunk : {7, 1, 5, 7}) {
    std::vector<int32_t> part;
    for (int b = 0; b < batch; ++b)
      for (int i = 0; i < chunk; ++i) part.push_back(ids[b * n + pos + i]);
    const auto got = m->forward_cached(part, batch, chunk, cache, true);
    for (int b = 0; b < batch; ++b)
      for (int i = 0; i < chunk; ++i)
        for (int v = 0; v < V; v += 13)
          ASSERT_NEAR(got[(size_t(b) * chunk + i) * V + v], full[(size_t(b) * n + pos + i) * V + v], 2e-4);
    pos += chunk;
    EXPECT_EQ(cache.length, pos);
  }
  std::vector<int32_t> extra(batch * 13, 1);
  EXPECT_NE(error_of([&] { m->forward_cached(extra, batch, 13, cache); }).find("capacity"), std::string::npos);
  KVCache other = m->new_cache(1, 8);
  EXPECT_THROW(m->forward_cached({1, 2}, 2, 1, other), Error);
  EXPECT_THROW(m->new_cache(1, 5000), Error);
  EXPECT_THROW(m->new_cache(0, 5), Error);
}

TEST(KvCache, GreedyDecodeEqualsArgmaxOfFullRecomputation) {
  const Checkpoint ck = open_checkpoint(test::model_dir("llama-tiny"));
  auto m = Model::load(ck);
  const int V = m->config().vocab_size;
  std::vector<int32_t> seq = {100, 200, 300, 400};
  KVCache cache = m->new_cache(1, 64);
  auto logits = m->forward_cached(seq, 1, int(seq.size()), cache);
  ASSERT_EQ(logits.size(), size_t(V));
  std::vector<int32_t> cached_out;
  for (int step = 0; step < 16; ++step) {
    const int32_t next = int32_t(cpu::argmax(logits.data(), V));
    cached_out.push_back(next);
    logits = m->forward_cached({next}, 1, 1, cache);
  }
  std::vector<int32_t> full_seq = seq, full_out;
  for (int step = 0; step < 16; ++step) {
    const auto all = m->forward(full_seq, 1, int(full_seq.size()));
    const int32_t next = int32_t(cpu::argmax(all.data() + (full_seq.size() - 1) * V, V));
    full_out.push_back(next);
    full_seq.push_back(next);
  }
  EXPECT_EQ(cached_out, full_out);
}

// ================================================================ edge cases and errors
TEST(EdgeCases, EmptyInputTooLongAndBadIds) {
  Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  ck.config["max_position_embeddings"] = 16;
  auto m = Model::load(ck);
  EXPECT_NE(error_of([&] { m->forward({}, 1, 0); }).find("empty input"), std::string::npos);
  EXPECT_NE(error_of([&] { m->forward({}, 0, 5); }).find("empty input"), std::string::npos);
  std::vector<int32_t> ids(17, 1);
  EXPECT_NE(error_of([&] { m->forward(ids, 1, 17); }).find("exceeds max_position_embeddings (16)"),
            std::string::npos);
  ids.resize(16);
  EXPECT_NO_THROW(m->forward(ids, 1, 16));
  EXPECT_NE(error_of([&] { m->forward(ids, 2, 16); }).find("16 token ids for batch 2"), std::string::npos);
  ids[3] = 8192;
  EXPECT_NE(error_of([&] { m->forward(ids, 1, 16); }).find("token id 8192 at position 3"), std::string::npos);
  ids[3] = -1;
  EXPECT_THROW(m->forward(ids, 1, 16), Error);
  KVCache c = m->new_cache(1, 16);
  std::vector<int32_t> ten(10, 2);
  m->forward_cached(ten, 1, 10, c);
  EXPECT_NE(error_of([&] { m->forward_cached(ten, 1, 10, c); }).find("max_position_embeddings"), std::string::npos);
}

TEST(EdgeCases, BatchOfOneTokenEqualsFirstPosition) {
  const Checkpoint ck = open_checkpoint(test::model_dir("llama-tiny"));
  auto m = Model::load(ck);
  const int V = m->config().vocab_size;
  const auto one = m->forward({42}, 1, 1);
  const auto longer = m->forward({42, 43, 44}, 1, 3);
  ASSERT_EQ(one.size(), size_t(V));
  for (int v = 0; v < V; ++v) ASSERT_NEAR(one[v], longer[v], 1e-5);
  // batch of several one-token sequences
  const auto many = m->forward({42, 7, 42}, 3, 1);
  for (int v = 0; v < V; ++v) {
    ASSERT_NEAR(many[v], one[v], 1e-5);
    ASSERT_NEAR(many[2 * V + v], one[v], 1e-5);
  }
}

// load_for_calibration: embed() equals load()'s, rows converted from the checkpoint's tensor
// (bf16 here); the embedding, norm and lm_head get load()'s checks up front and nothing else.
TEST(LoadForCalibration, EmbedsLikeLoadAndChecksTheRest) {
  for (bool tied : {true, false}) {
    json cfg = tiny_config_v5();
    cfg["tie_word_embeddings"] = tied;
    Checkpoint ck = synthetic_checkpoint(cfg);
    const int64_t V = cfg["vocab_size"].get<int64_t>(), H = cfg["hidden_size"].get<int64_t>();
    std::vector<float> e(size_t(V * H));
    for (size_t i = 0; i < e.size(); ++i) e[i] = 0.01f * float(int(i % 97) - 48);
    mem_of(ck).put("model.embed_tokens.weight", {V, H}, e, DType::BF16);
    if (!tied) mem_of(ck).put("lm_head.weight", {V, H}, e, DType::BF16);
    auto full = Model::load(ck);
    auto cal = Model::load_for_calibration(ck);
    const std::vector<int32_t> ids = {0, 5, int32_t(V - 1), 5};
    std::vector<float> a(ids.size() * size_t(H)), b(a.size());
    full->embed(ids.data(), int64_t(ids.size()), a.data());
    cal->embed(ids.data(), int64_t(ids.size()), b.data());
    EXPECT_EQ(a, b);
    const int32_t bad_id = int32_t(V);
    EXPECT_THROW(cal->embed(&bad_id, 1, b.data()), Error);
    const std::string msg = error_of([&] { cal->forward({1, 2}, 1, 2); });
    EXPECT_NE(msg.find("loaded for calibration"), std::string::npos) << msg;
    // Block runs work as with load().
    std::vector<float> x1 = a, x2 = a;
    full->run_block(0, x1.data(), 1, int(ids.size()));
    cal->run_block(0, x2.data(), 1, int(ids.size()));
    EXPECT_EQ(x1, x2);
    // Non-finite values anywhere in the embedding, norm or an untied lm_head are refused.
    for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
      if (tied && std::string(name) == "lm_head.weight") continue;
      Checkpoint bad = synthetic_checkpoint(cfg);
      const bool norm = std::string(name) == "model.norm.weight";
      std::vector<float> v(norm ? size_t(H) : e.size(), 0.25f);
      v[v.size() - 3] = NAN;
      mem_of(bad).put(name, norm ? Shape{H} : Shape{V, H}, v, DType::BF16);
      const std::string m = error_of([&] { Model::load_for_calibration(bad); });
      EXPECT_NE(m.find(std::string(name) + " holds a non-finite value (nan at element " +
                       std::to_string(v.size() - 3) + ")"), std::string::npos) << m;
    }
    Checkpoint missing = synthetic_checkpoint(cfg);
    mem_of(missing).erase("model.norm.weight");
    EXPECT_NE(error_of([&] { Model::load_for_calibration(missing); }).find("model.norm.weight is missing"),
              std::string::npos);
  }
}

TEST(LoadErrors, MissingWrongShapeNanAndMissingBias) {
  {
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5());
    mem_of(ck).erase("model.norm.weight");
    EXPECT_NE(error_of([&] { Model::load(ck); }).find("mem.safetensors: tensor model.norm.weight is missing"),
              std::string::npos);
  }
  {
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5());
    mem_of(ck).put("model.layers.1.mlp.up_proj.weight", {96, 63}, std::vector<float>(96 * 63, 0.f));
    auto m = Model::load(ck);  // lazy: the bad block fails on first use
    const std::string msg = error_of([&] { m->forward({1, 2}, 1, 2); });
    EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight has shape [96, 63], expected [96, 64]"),
              std::string::npos) << msg;
  }
  {
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5());
    std::vector<float> w(64, 1.0f);
    w[10] = NAN;
    mem_of(ck).put("model.layers.0.input_layernorm.weight", {64}, w, DType::BF16);
    auto m = Model::load(ck);
    const std::string msg = error_of([&] { m->block(0); });
    EXPECT_NE(msg.find("model.layers.0.input_layernorm.weight holds a non-finite value"), std::string::npos) << msg;
  }
  {
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5());
    std::vector<float> e(100 * 64, 0.5f);
    e[7] = INFINITY;
    mem_of(ck).put("model.embed_tokens.weight", {100, 64}, e);
    EXPECT_NE(error_of([&] { Model::load(ck); }).find("non-finite"), std::string::npos);
  }
  {
    json cfg = tiny_config_v5();
    cfg["architectures"] = {"Qwen2ForCausalLM"};
    Checkpoint ck = synthetic_checkpoint(cfg);
    mem_of(ck).erase("model.layers.0.self_attn.k_proj.bias");
    auto m = Model::load(ck);
    EXPECT_NE(error_of([&] { m->block(0); }).find("self_attn.k_proj.bias is missing"), std::string::npos);
  }
  {
    json cfg = tiny_config_v5();
    cfg["tie_word_embeddings"] = false;
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5());
    ck.config = cfg;  // untied config but no lm_head.weight
    EXPECT_NE(error_of([&] { Model::load(ck); }).find("lm_head.weight is missing"), std::string::npos);
  }
  {
    Checkpoint ck = synthetic_checkpoint(tiny_config_v5());
    mem_of(ck).put("model.norm.weight", {64}, std::vector<float>(64, 1.f), DType::I32);
    EXPECT_NE(error_of([&] { Model::load(ck); }).find("expected a float type"), std::string::npos);
  }
  {
    Checkpoint ck;
    ck.path = "nothing";
    ck.config = tiny_config_v5();
    EXPECT_THROW(Model::load(ck), Error);
  }
}

// Quantized checkpoints are loader/'s (tests/test_loader.cpp); here only: the dense path works and
// a config that claims quantization the tensors do not have is an error naming the method.
TEST(LoadForInference, DenseLoadsAndBogusQuantizationConfigIsAnError) {
  Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  auto m = load_model_for_inference(ck);
  EXPECT_EQ(m->config().num_layers, 4);
  ck.config["quantization_config"] = {{"quant_method", "gptq"}};
  const std::string msg = error_of([&] { load_model_for_inference(ck); });
  EXPECT_NE(msg.find("quant_method \"gptq\""), std::string::npos) << msg;
}
