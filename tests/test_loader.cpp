// Tests of loader/: WeightLoader over AngelSlim's real checkpoints and over checkpoints written
// here in every layout (HF and Parquet), QuantLinear vs a simulated reference (bit-exact logits),
// the interop acceptance (heldout perplexity of AngelSlim's int4_gptq / fp8_static), and the
// CLI commands (eval, generate, inspect, convert) on quantized checkpoints.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fs.h"
#include "eval/eval.h"
#include "eval/model_files.h"
#include "formats/checkpoint.h"
#include "loader/quant_linear.h"
#include "loader/weight_loader.h"
#include "model/model.h"
#include "quant/layouts.h"
#include "testing.h"

using namespace llmc;
using nlohmann::json;
namespace fs = std::filesystem;

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

fs::path peer(const std::string& name) { return test::data_path("peers/angelslim-qwen3-tiny/" + name); }

const char* const kSlots[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                              "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                              "mlp.down_proj"};

std::vector<std::string> all_linears(int layers) {
  std::vector<std::string> v;
  for (int l = 0; l < layers; ++l)
    for (const char* s : kSlots) v.push_back("model.layers." + std::to_string(l) + "." + s);
  return v;
}

uint32_t word_at(const TensorRef& t, int64_t r, int64_t c) {
  uint32_t w;
  std::memcpy(&w, t.data + (r * t.info.shape[1] + c) * 4, 4);
  return w;
}

// ---- a small independent quantizer (round to nearest) for building test checkpoints ----
struct Recipe {
  std::string layout;
  QKind kind;
  int bits;
  bool sym;
  int64_t group;
  ActQuant act;
};

QuantizedWeight rtn(const std::vector<float>& W, int64_t out, int64_t in, const Recipe& r,
                    DType scale_dt) {
  QuantizedWeight q;
  q.kind = r.kind;
  q.bits = r.bits;
  q.symmetric = r.sym;
  q.out = out;
  q.in = in;
  q.group = r.group;
  q.act = r.act;
  const int64_t ng = q.n_groups();
  const int64_t glen = r.group > 0 ? r.group : in;
  auto rnd = [&](float s) {
    uint8_t b[4];
    store_from_f32(scale_dt, b, 0, s);
    return load_as_f32(scale_dt, b, 0);
  };
  if (r.kind == QKind::FP8) {
    q.q8.resize(size_t(out * in));
    float amax_t = 0;
    for (float v : W) amax_t = std::max(amax_t, std::fabs(v));
    const int64_t ns = r.group == 0 ? 1 : out;
    for (int64_t o = 0; o < ns; ++o) {
      float amax = amax_t;
      if (r.group != 0) {
        amax = 0;
        for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(W[size_t(o * in + i)]));
      }
      q.scales.push_back(rnd(amax > 0 ? amax / 448.0f : 1.0f));
    }
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        const float s = q.scales[size_t(r.group == 0 ? 0 : o)];
        q.q8[size_t(o * in + i)] = int8_t(f32_to_fp8e4m3(W[size_t(o * in + i)] / s));
      }
    if (r.act == ActQuant::FP8StaticTensor) q.input_scale = 0.01f;
    return q;
  }
  const int qmax_s = (1 << (r.bits - 1)) - 1, qmax_u = (1 << r.bits) - 1;
  q.scales.resize(size_t(out * ng));
  if (r.sym) q.q8.resize(size_t(out * in));
  else {
    q.qu.resize(size_t(out * in));
    q.zeros.resize(size_t(out * ng));
  }
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t i0 = g * glen, i1 = std::min(in, i0 + glen);
      float lo = 0, hi = 0;
      for (int64_t i = i0; i < i1; ++i) {
        lo = std::min(lo, W[size_t(o * in + i)]);
        hi = std::max(hi, W[size_t(o * in + i)]);
      }
      float s;
      int32_t z = 0;
      if (r.sym) {
        const float amax = std::max(-lo, hi);
        s = rnd(amax > 0 ? amax / float(qmax_s) : 1.0f);
      } else {
        s = rnd(hi > lo ? (hi - lo) / float(qmax_u) : 1.0f);
        z = int32_t(std::min<float>(qmax_u, std::max(0.0f, std::nearbyint(-lo / s))));
        q.zeros[size_t(o * ng + g)] = z;
      }
      q.scales[size_t(o * ng + g)] = s;
      for (int64_t i = i0; i < i1; ++i) {
        const float v = std::nearbyint(W[size_t(o * in + i)] / s);
        if (r.sym)
          q.q8[size_t(o * in + i)] = int8_t(std::min<float>(qmax_s, std::max<float>(-qmax_s - 1, v)));
        else
          q.qu[size_t(o * in + i)] = uint8_t(std::min<float>(qmax_u, std::max<float>(0, v + z)));
      }
    }
  return q;
}

// Reference Linear: the in-memory QuantizedWeight, dequantized once, activations fake-quantized.
class SimLinear : public Linear {
 public:
  explicit SimLinear(const QuantizedWeight& q) : q_(q), w_(q.dequantize()) {}
  int64_t in_features() const override { return q_.in; }
  int64_t out_features() const override { return q_.out; }
  uint64_t bytes_held() const override { return w_.size() * 4; }
  void forward(const float* x, int64_t rows, float* y) const override {
    std::vector<float> xq(x, x + rows * q_.in);
    quantize_activations(q_.act, q_.input_scale, xq.data(), rows, q_.in);
    gemm_xwt(xq.data(), rows, q_.in, w_.data(), q_.out, y);
  }

 private:
  QuantizedWeight q_;
  std::vector<float> w_;
};

class SimFactory : public LinearFactory {
 public:
  explicit SimFactory(const std::map<std::string, QuantizedWeight>* m) : m_(m) {}
  std::shared_ptr<Linear> make(const TensorReader& t, const std::string& prefix, int64_t out,
                               int64_t in) const override {
    auto it = m_->find(prefix);
    if (it == m_->end()) return LinearFactory::make(t, prefix, out, in);
    return std::make_shared<SimLinear>(it->second);
  }

 private:
  const std::map<std::string, QuantizedWeight>* m_;
};

// Writes models/qwen3-tiny with every linear quantized by `r` in r.layout (all other tensors
// and the aux files copied); returns the in-memory weights.
std::map<std::string, QuantizedWeight> write_quantized(const fs::path& out, CheckpointFormat fmt,
                                                       const Recipe& r) {
  Checkpoint base = open_checkpoint(test::model_dir("qwen3-tiny"));
  const Layout& L = find_layout(r.layout);
  std::map<std::string, QuantizedWeight> qs;
  auto w = make_checkpoint_writer(out, fmt);
  const auto linears = all_linears(base.config["num_hidden_layers"].get<int>());
  for (const TensorInfo& t : base.tensors->list()) {
    const std::string m = t.name.size() > 7 ? t.name.substr(0, t.name.size() - 7) : "";
    if (std::find(linears.begin(), linears.end(), m) != linears.end() &&
        t.name.compare(t.name.size() - 7, 7, ".weight") == 0) {
      QuantizedWeight q = rtn(base.tensors->get(t.name).to_f32(), t.shape[0], t.shape[1], r, L.scale_dtype);
      for (const EncodedTensor& e : L.encode(m, q))
        w->add_tensor(e.name, e.dtype, e.shape, e.bytes.data(), e.bytes.size());
      qs[m] = std::move(q);
      continue;
    }
    TensorRef ref = base.tensors->get(t.name);
    w->add_tensor(t.name, t.dtype, t.shape, ref.data, t.nbytes);
  }
  QuantConfigSpec spec;
  spec.scheme = qs.begin()->second;
  spec.ignore = {"lm_head"};
  json config = base.config;
  config["quantization_config"] = L.quantization_config(spec);
  w->commit(config, base.aux_files);
  return qs;
}

}  // namespace

// ============================================================== AngelSlim's checkpoints

TEST(PeerCheckpoints, Int4GptqLoadsAndDecodesExactly) {
  WeightLoader wl(peer("int4_gptq"));
  EXPECT_EQ(wl.quant_method(), "gptq");
  ASSERT_NE(wl.layout(), nullptr);
  EXPECT_STREQ(wl.layout()->name, "gptq");
  EXPECT_EQ(wl.quantized_modules().size(), 28u);
  for (const auto& m : all_linears(4)) EXPECT_TRUE(wl.is_quantized(m)) << m;
  // down_proj: in 384 = 3 groups of 128, no g_idx (act-order folded into the MLP).
  const std::string m = "model.layers.0.mlp.down_proj";
  QuantizedWeight q = wl.quantized(m);
  EXPECT_EQ(q.out, 128);
  EXPECT_EQ(q.in, 384);
  EXPECT_EQ(q.bits, 4);
  EXPECT_EQ(q.group, 128);
  EXPECT_TRUE(q.symmetric);  // every qzeros word is 0x77777777
  EXPECT_TRUE(q.g_idx.empty());
  EXPECT_EQ(wl.shape(m + ".weight"), (Shape{128, 384}));
  // One element decoded by hand from the raw words: W[o, i] = (nibble - (zero + 1)) * scale.
  const std::vector<float> w = wl.get_f32(m + ".weight");
  TensorRef qw = wl.raw(m + ".qweight"), qz = wl.raw(m + ".qzeros"), sc = wl.raw(m + ".scales");
  EXPECT_EQ(sc.info.dtype, DType::BF16);
  for (auto [o, i] : {std::pair<int64_t, int64_t>{5, 200}, {0, 0}, {127, 383}, {77, 129}}) {
    const int32_t code = int32_t((word_at(qw, i / 8, o) >> (4 * (i % 8))) & 15u);
    const int32_t zero = int32_t((word_at(qz, i / 128, o / 8) >> (4 * (o % 8))) & 15u) + 1;
    EXPECT_EQ(zero, 8);
    uint16_t sbits;
    std::memcpy(&sbits, sc.data + ((i / 128) * 128 + o) * 2, 2);
    EXPECT_EQ(w[size_t(o * 384 + i)], float(code - zero) * bf16_to_f32(sbits)) << o << "," << i;
  }
  // Logical view: one F32 "<m>.weight" per module, no packed parts, everything finite.
  const auto logical = wl.tensors();
  int weights = 0;
  for (const TensorInfo& t : logical) {
    EXPECT_EQ(t.name.find(".qweight"), std::string::npos);
    EXPECT_EQ(t.name.find(".scales"), std::string::npos);
    if (wl.is_quantized(t.name.substr(0, t.name.rfind('.')))) ++weights;
    const std::vector<float> v = wl.get_f32(t.name);
    EXPECT_EQ(int64_t(v.size()), t.numel()) << t.name;
    for (float x : v) ASSERT_TRUE(std::isfinite(x)) << t.name;
  }
  EXPECT_EQ(weights, 28);
  const MemoryReport mem = wl.memory();
  EXPECT_EQ(mem.quantized_linears, 28);
  uint64_t stored = 0;
  for (const auto& t : wl.raw_tensors()) stored += t.nbytes;
  EXPECT_EQ(mem.bytes, stored);
  // int4 + bf16 scales per 128: 4.125 bits of 16.
  EXPECT_NEAR(mem.linear_ratio(), 4.125 / 16, 0.01);
  EXPECT_LT(mem.ratio(), 1.0);
  EXPECT_EQ(mem.to_json()["quantized_linears"], 28);
}

TEST(PeerCheckpoints, Fp8StaticLoadsWithStaticInputScales) {
  WeightLoader wl(peer("fp8_static"));
  EXPECT_EQ(wl.quant_method(), "compressed-tensors");
  EXPECT_STREQ(wl.layout()->name, "naive-quantized");
  EXPECT_EQ(wl.quantized_modules().size(), 28u);
  const std::string m = "model.layers.2.self_attn.k_proj";
  QuantizedWeight q = wl.quantized(m);
  EXPECT_EQ(q.kind, QKind::FP8);
  EXPECT_EQ(q.group, 0);
  EXPECT_EQ(q.act, ActQuant::FP8StaticTensor);
  TensorRef is = wl.raw(m + ".input_scale");
  EXPECT_EQ(is.info.dtype, DType::BF16);
  EXPECT_EQ(q.input_scale, is.to_f32()[0]);
  EXPECT_GT(q.input_scale, 0.0f);
  const std::vector<float> w = wl.get_f32(m + ".weight");
  TensorRef raw = wl.raw(m + ".weight");
  const float s = wl.raw(m + ".weight_scale").to_f32()[0];
  for (size_t k = 0; k < w.size(); k += 97) EXPECT_EQ(w[k], fp8e4m3_to_f32(raw.data[k]) * s);
  for (const TensorInfo& t : wl.tensors())
    for (float x : wl.get_f32(t.name)) ASSERT_TRUE(std::isfinite(x)) << t.name;
  const MemoryReport mem = wl.memory();
  EXPECT_NEAR(mem.linear_ratio(), 0.5, 0.01);
}

// The seed's acceptance test: AngelSlim's outputs run in llmc and reproduce the perplexities
// measured with transformers (../shared/README.md) within 0.1 %, using the checkpoints' own
// tokenizer.json (its truncation/padding settings are ignored).
class PeerPerplexity : public testing::TestWithParam<std::pair<const char*, double>> {};

TEST_P(PeerPerplexity, MatchesTransformers) {
  const auto [name, want] = GetParam();
  Checkpoint ck = open_checkpoint(peer(name));
  const Tokenizer tok = model_tokenizer(ck);
  const std::vector<int32_t> tokens = tok.encode_parallel(read_text_file(test::data_path("eval/heldout.txt")));
  EXPECT_EQ(tokens.size(), 121000u);
  auto model = load_model_for_inference(ck);
  EvalOptions eo;
  eo.progress = false;
  const PplResult r = evaluate_ppl(*model, tokens, 256, 0, eo);
  EXPECT_EQ(r.windows, 472);
  EXPECT_NEAR(r.ppl / want, 1.0, 1e-3) << name << ": " << r.ppl << " vs " << want;
  std::printf("  %s: heldout ppl %.4f (transformers %.4f), %.1f s\n", name, r.ppl, want, r.seconds);
}

INSTANTIATE_TEST_SUITE_P(AngelSlim, PeerPerplexity,
                         testing::Values(std::make_pair("int4_gptq", 87.5165),
                                         std::make_pair("fp8_static", 84.1329)),
                         [](const auto& info) { return std::string(info.param.first); });

// ============================================================== every layout, written here

class LayoutCheckpoints : public testing::TestWithParam<Recipe> {};

TEST_P(LayoutCheckpoints, RoundTripThroughLoaderAndEngine) {
  const Recipe r = GetParam();
  for (CheckpointFormat fmt : {CheckpointFormat::HF, CheckpointFormat::Parquet}) {
    SCOPED_TRACE(checkpoint_format_name(fmt));
    const fs::path dir = test::temp_dir("loader");
    const fs::path out = fmt == CheckpointFormat::HF ? dir / "model" : dir / "model.parquet";
    const auto qs = write_quantized(out, fmt, r);
    WeightLoader wl(out);
    EXPECT_EQ(wl.quant_method(), std::string(find_layout(r.layout).quant_method));
    ASSERT_EQ(wl.quantized_modules().size(), qs.size());
    for (const auto& [m, q] : qs) {
      const std::vector<float> want = q.dequantize(), got = wl.get_f32(m + ".weight");
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << m;
      EXPECT_EQ(wl.quantized(m).act, q.act);
    }
    // The engine: QuantLinear vs the in-memory reference — identical logits.
    Checkpoint ck = open_checkpoint(out);
    auto model = load_model_for_inference(ck);
    Checkpoint base = open_checkpoint(test::model_dir("qwen3-tiny"));
    auto ref = Model::load(base, std::make_shared<SimFactory>(&qs));
    std::vector<int32_t> ids;
    for (int k = 0; k < 48; ++k) ids.push_back((k * 7919 + 13) % 8192);
    const std::vector<float> a = model->forward(ids, 2, 24), b = ref->forward(ids, 2, 24);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
    for (float x : a) ASSERT_TRUE(std::isfinite(x));
    // Quantized linears hold their packed bytes, not fp32.
    const Linear& q = model->block(0).at(LinearSlot::Down);
    EXPECT_NE(dynamic_cast<const QuantLinear*>(&q), nullptr);
    EXPECT_LT(q.bytes_held(), uint64_t(q.in_features() * q.out_features() * 4 / 3));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, LayoutCheckpoints,
    testing::Values(Recipe{"gptq", QKind::INT, 4, true, 128, ActQuant::None},
                    Recipe{"gptq", QKind::INT, 3, true, 64, ActQuant::None},
                    Recipe{"awq", QKind::INT, 4, false, 64, ActQuant::None},
                    Recipe{"pack-quantized", QKind::INT, 2, false, 64, ActQuant::None},
                    Recipe{"pack-quantized", QKind::INT, 8, true, -1, ActQuant::None},
                    Recipe{"int-quantized", QKind::INT, 8, true, -1, ActQuant::INT8DynamicToken},
                    Recipe{"float-quantized", QKind::FP8, 8, true, 0, ActQuant::FP8StaticTensor},
                    Recipe{"float-quantized", QKind::FP8, 8, true, -1, ActQuant::FP8DynamicToken}),
    [](const auto& info) {
      std::string s = info.param.layout + "_" + std::to_string(info.param.bits) + "bit_" +
                      act_quant_name(info.param.act);
      for (char& c : s)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      return s;
    });

// ============================================================== errors

TEST(Loader, Errors) {
  WeightLoader plain(test::model_dir("qwen3-tiny"));
  EXPECT_EQ(plain.quantization_config(), nullptr);
  EXPECT_EQ(plain.layout(), nullptr);
  EXPECT_EQ(plain.quant_method(), "");
  EXPECT_TRUE(plain.quantized_modules().empty());
  EXPECT_EQ(plain.tensors().size(), plain.raw_tensors().size());
  EXPECT_EQ(plain.memory().bf16_bytes, plain.memory().bytes);  // stored in bf16
  EXPECT_NE(error_of([&] { plain.get_f32("model.layers.0.mlp.nope.weight"); })
                .find("no tensor named model.layers.0.mlp.nope.weight"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plain.quantized("model.layers.0.mlp.up_proj"); })
                .find("model.layers.0.mlp.up_proj is not a quantized module"),
            std::string::npos);
  EXPECT_TRUE(plain.has("model.norm.weight"));
  EXPECT_FALSE(plain.has("model.layers.0.mlp.up_proj.qweight"));
  EXPECT_EQ(dynamic_cast<const QuantLinearFactory*>(plain.linear_factory().get()), nullptr);
}

TEST(Loader, ConfigErrors) {
  // Unknown quant_method -> error naming config.json.
  Checkpoint ck = open_checkpoint(peer("int4_gptq"));
  ck.config["quantization_config"]["quant_method"] = "bitsandbytes";
  EXPECT_NE(error_of([&] { load_model_for_inference(ck); })
                .find("config.json: quant_method 'bitsandbytes' is not supported"),
            std::string::npos);
  // A plain model claiming quantization.
  Checkpoint dense = open_checkpoint(test::model_dir("qwen3-tiny"));
  dense.config["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128}};
  EXPECT_NE(error_of([&] { load_model_for_inference(dense); })
                .find("declares quant_method \"awq\" but no tensor"),
            std::string::npos);
  // compression_config (older compressed-tensors key) is read too.
  Checkpoint old = open_checkpoint(peer("fp8_static"));
  old.config["compression_config"] = old.config["quantization_config"];
  old.config.erase("quantization_config");
  EXPECT_NE(make_quant_linear_factory(old), nullptr);
}

TEST(Loader, CorruptModuleFailsNamingTheTensor) {
  // A GPTQ checkpoint whose first q_proj lost its qzeros: the error names the tensor.
  const fs::path dir = test::temp_dir("corrupt") / "m";
  Checkpoint src = open_checkpoint(peer("int4_gptq"));
  {
    auto w = make_checkpoint_writer(dir, CheckpointFormat::HF);
    for (const TensorInfo& t : src.tensors->list()) {
      if (t.name == "model.layers.0.self_attn.q_proj.qzeros") continue;
      TensorRef r = src.tensors->get(t.name);
      w->add_tensor(t.name, t.dtype, t.shape, r.data, t.nbytes);
    }
    w->commit(src.config, src.aux_files);
  }
  Checkpoint ck = open_checkpoint(dir);
  auto model = load_model_for_inference(ck);
  const std::string msg = error_of([&] { model->forward({1, 2, 3}, 1, 3); });
  EXPECT_NE(msg.find("missing tensor model.layers.0.self_attn.q_proj.qzeros"), std::string::npos) << msg;
  WeightLoader wl(dir);
  EXPECT_NE(error_of([&] { wl.get_f32("model.layers.0.self_attn.q_proj.weight"); }).find("qzeros"),
            std::string::npos);
}

// ============================================================== CLI on quantized checkpoints

TEST(LoaderCli, EvalGenerateInspectConvertAcceptPeers) {
  const std::string heldout = test::data_path("eval/heldout.txt").string();
  for (const char* name : {"int4_gptq", "fp8_static"}) {
    SCOPED_TRACE(name);
    const std::string p = peer(name).string();
    std::string out;
    ASSERT_EQ(test::run_cli("-q eval --model " + p + " --ppl " + heldout + " --max-windows 3 --json", &out), 0)
        << out;
    const json j = json::parse(out.substr(out.find('{')));
    EXPECT_EQ(j["ppl"]["windows"], 3);
    EXPECT_GT(j["ppl"]["ppl"].get<double>(), 20.0);
    EXPECT_LT(j["ppl"]["ppl"].get<double>(), 400.0);
    ASSERT_EQ(test::run_cli("-q generate --model " + p + " --prompt 'The king said' --max-tokens 6", &out), 0)
        << out;
    ASSERT_EQ(test::run_cli("inspect " + p, &out), 0) << out;
    EXPECT_NE(out.find("quantization_config"), std::string::npos);
    // convert to Parquet and back: raw tensors and aux files byte-identical, dequantized equal.
    const fs::path dir = test::temp_dir("peercv");
    const std::string pq = (dir / "m.parquet").string(), back = (dir / "back").string();
    ASSERT_EQ(test::run_cli("-q convert --input " + p + " --output " + pq, &out), 0) << out;
    ASSERT_EQ(test::run_cli("-q convert --input " + pq + " --output " + back + " --format hf", &out), 0) << out;
    WeightLoader a(peer(name)), b(pq), c(back);
    EXPECT_EQ(b.quantized_modules(), a.quantized_modules());
    EXPECT_EQ(c.checkpoint().aux_files, a.checkpoint().aux_files);
    for (const char* aux : {"chat_template.jinja", "tokenizer.json", "generation_config.json"})
      EXPECT_EQ(c.checkpoint().aux_files.count(aux), 1u) << aux;
    if (std::string(name) == "fp8_static")
      EXPECT_EQ(c.checkpoint().aux_files.count("hf_quant_config.json"), 1u);
    for (const TensorInfo& t : a.raw_tensors()) {
      TensorRef x = a.raw(t.name), y = c.raw(t.name);
      ASSERT_EQ(y.info.dtype, t.dtype) << t.name;
      ASSERT_EQ(y.info.shape, t.shape) << t.name;
      ASSERT_EQ(std::memcmp(x.data, y.data, t.nbytes), 0) << t.name;
    }
    const std::string m = "model.layers.3.mlp.gate_proj.weight";
    EXPECT_EQ(a.get_f32(m), b.get_f32(m));
  }
}

// QuantLinear on its own: bias and activation quantization, against a direct computation.
TEST(QuantLinearUnit, ForwardWithBiasAndInt8Activations) {
  QuantizedWeight q;
  q.bits = 8;
  q.out = 3;
  q.in = 4;
  q.q8 = {1, -2, 3, 4, 0, 5, -6, 7, 127, -128, 1, 2};
  q.scales = {0.5f, 0.25f, 0.125f};
  q.bias = {1.0f, -2.0f, 0.5f};
  q.act = ActQuant::INT8DynamicToken;
  const Layout& L = find_layout("int-quantized");
  QuantConfigSpec spec;
  spec.scheme = q;
  auto qc = std::make_shared<const json>(L.quantization_config(spec));
  MemoryTensorReader r("mem");
  for (auto& t : L.encode("lin", q)) r.add(std::move(t));
  QuantLinear ql(L, qc, "lin", r, 3, 4);
  EXPECT_EQ(ql.act(), ActQuant::INT8DynamicToken);
  EXPECT_EQ(ql.module(), "lin");
  EXPECT_STREQ(ql.layout().name, "int-quantized");
  EXPECT_EQ(ql.bytes_held(), r.bytes());
  const std::vector<float> x = {127.0f, 63.4f, -1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  std::vector<float> y(6);
  ql.forward(x.data(), 2, y.data());
  // Row 0 quantized with scale 1: [127, 63, -1, 0]; row 1 all zero -> bias only.
  const std::vector<float> xq = {127.0f, 63.0f, -1.0f, 0.0f};
  const std::vector<float> w = q.dequantize();
  for (int o = 0; o < 3; ++o) {
    double acc = q.bias[o];
    for (int i = 0; i < 4; ++i) acc += double(xq[i]) * w[o * 4 + i];
    EXPECT_NEAR(y[o], acc, 1e-4) << o;
    EXPECT_EQ(y[3 + o], q.bias[o]);
  }
  ql.forward(x.data(), 0, y.data());  // no rows: nothing to do
  // A mismatched model shape fails at construction, naming the module.
  EXPECT_NE(error_of([&] { QuantLinear bad(L, qc, "lin", r, 4, 4); }).find("lin out_features is 3"),
            std::string::npos);
}
