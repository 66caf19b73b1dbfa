// Tests of the method table's option checking (quant/method.h resolve_spec, method_opt, the AI-OS
// column) and the absolute quality limits of every method: per-type weight reconstruction error on
// fixed random matrices (quant/rtn.h, the shared rounding grid) and per-method held-out perplexity
// ratio / KL on qwen3-tiny (as llama.cpp's test-quantize-fns keeps one limit per type).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "eval/quality.h"
#include "quant/method.h"
#include "quant/pipeline.h"
#include "quant/rtn.h"
#include "testing.h"

namespace llmc {
namespace {

namespace fs = std::filesystem;

using test::error_of;

std::string resolve_error(const std::string& method, const QuantOverrides& o) {
  return error_of([&] { resolve_spec(find_method(method), o); });
}

// ---- generic options ------------------------------------------------------------------------

TEST(MethodOptions, InvalidValuesAreRejectedNamingTheOption) {
  struct Case {
    std::string method;
    QuantOverrides o;
    std::string expect;
  };
  auto bits = [](int b) { QuantOverrides o; o.bits = b; return o; };
  auto group = [](int64_t g) { QuantOverrides o; o.group = g; return o; };
  auto damp = [](double d) { QuantOverrides o; o.damp = d; return o; };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<Case> cases = {
      {"int8", bits(0), "--bits must be 8"},
      {"int4_gptq", bits(0), "--bits must be one of 2, 3, 4, 8"},
      {"int4_awq", bits(5), "does not support --bits 5"},
      {"int2", group(0), "--group-size must be a positive group size or -1"},
      {"int4_gptq", group(-2), "--group-size must be"},
      {"int4_gptq", damp(-1), "--damp must be in [0, 1)"},
      {"int4_gptq", damp(nan), "--damp must be in [0, 1)"},
      {"int4_gptq", damp(1.0), "--damp must be in [0, 1)"},
      {"fp8_static", damp(inf), "--damp must be in [0, 1)"},
  };
  for (const Case& c : cases) {
    const std::string msg = resolve_error(c.method, c.o);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.method << ": " << msg;
  }
}

TEST(MethodOptions, OptionsAMethodDoesNotUseAreRefused) {
  struct Case {
    std::string method;
    QuantOverrides o;
    std::string expect;
  };
  QuantOverrides d;
  d.damp = 0.05;
  QuantOverrides ao;
  ao.act_order = true;
  QuantOverrides nts;
  nts.true_sequential = false;
  QuantOverrides g;
  g.group = -1;  // equal to fp8_dynamic's fixed default: still not an accepted option
  QuantOverrides g0;
  g0.group = 0;
  QuantOverrides sym;
  sym.symmetric = true;  // int8 is symmetric anyway
  QuantOverrides fp8rtn_damp = d;
  fp8rtn_damp.extra = {{"weights", "rtn"}};
  const std::vector<Case> cases = {
      {"int8", d, "--damp is not used by method int8"},
      {"int2", ao, "--act-order is not used by method int2"},
      {"fp16", nts, "--no-true-sequential is not used by method fp16"},
      {"int8_dynamic", nts, "--no-true-sequential is not used by method int8_dynamic"},
      {"int8_dynamic", d, "--damp is not used by method int8_dynamic"},
      {"fp8_dynamic", g, "--group-size is not accepted by method fp8_dynamic"},
      {"fp8_static", g0, "--group-size is not accepted by method fp8_static"},
      {"int8", sym, "--sym is not accepted by method int8"},
      // AWQ reads the GPTQ knobs only when its solver is GPTQ; fp8 reads --damp only for GPTQ
      // rounding.
      {"int4_awq", d, "--damp is used by method int4_awq only with --method-opt solver=gptq"},
      {"fp8_dynamic", fp8rtn_damp,
       "--damp is used by method fp8_dynamic only with --method-opt weights other than rtn"},
  };
  for (const Case& c : cases) {
    const std::string msg = resolve_error(c.method, c.o);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.method << ": " << msg;
  }
  // The same options where the method reads them.
  QuantOverrides awq_gptq = d;
  awq_gptq.extra = {{"solver", "gptq"}};
  EXPECT_DOUBLE_EQ(resolve_spec(find_method("int4_awq"), awq_gptq).damp, 0.05);
  EXPECT_DOUBLE_EQ(resolve_spec(find_method("fp8_static"), d).damp, 0.05);
  QuantOverrides gp = d;
  gp.act_order = false;
  gp.true_sequential = false;
  gp.group = 64;
  gp.bits = 3;
  gp.symmetric = false;
  const QuantSpec s = resolve_spec(find_method("int4_gptq"), gp);
  EXPECT_DOUBLE_EQ(s.damp, 0.05);
  EXPECT_FALSE(s.act_order);
  EXPECT_FALSE(s.true_sequential);
  EXPECT_EQ(s.group, 64);
  EXPECT_EQ(s.bits, 3);
  EXPECT_FALSE(s.symmetric);
}

// ---- --method-opt ---------------------------------------------------------------------------

TEST(MethodOptions, MethodOptValuesAreCheckedAgainstTheRow) {
  struct Case {
    std::string method;
    nlohmann::json extra;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"int8", {{"foo", 1}}, "method int8 takes no --method-opt (got 'foo')"},
      {"fp8_static", {{"serch", true}}, "has no option 'serch' (known: weights, search_rows"},
      {"fp8_dynamic", {{"search", true}}, "has no option 'search'"},
      {"int4_gptq", {{"mse", "x"}}, "--method-opt mse must be an integer"},
      {"int4_gptq", {{"mse", 1.5}}, "--method-opt mse must be an integer"},
      {"int4_gptq", {{"mse", -1}}, "--method-opt mse must be in [0, 1000], got -1"},
      {"int4_gptq", {{"block_size", 0}}, "--method-opt block_size must be >= 1, got 0"},
      {"int4_gptq", {{"solver", "clip"}}, "--method-opt solver must be one of gptq, rtn"},
      {"int4_gptq", {{"act_order", "sideways"}}, "must be one of permute, static, dynamic"},
      {"int4_gptq", {{"sym_full_range", 1}}, "--method-opt sym_full_range must be true or false"},
      {"int4_awq", {{"max_shrink", 1}}, "--method-opt max_shrink must be in [0, 1), got 1"},
      {"int4_awq", {{"grid", 0}}, "--method-opt grid must be in [1, 1000]"},
      {"int4_awq", {{"loss_tokens", "many"}}, "--method-opt loss_tokens must be an integer"},
      {"int4_awq", {{"mse", 10}}, "--method-opt mse is used only with --method-opt solver=gptq"},
      {"fp8_static", {{"weights", "magic"}}, "must be one of gptq_aa, gptq, rtn"},
      {"fp8_static", {{"search_rows", 0}}, "--method-opt search_rows must be >= 1"},
  };
  for (const Case& c : cases) {
    QuantOverrides o;
    o.extra = c.extra;
    const std::string msg = resolve_error(c.method, o);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.method << " " << c.extra.dump()
                                                     << ": " << msg;
  }
  QuantOverrides arr;
  arr.extra = nlohmann::json::array({1});
  EXPECT_NE(resolve_error("int8", arr).find("key/value"), std::string::npos);
}

TEST(MethodOptions, MethodOptReadsTheValueOrTheRowDefault) {
  QuantOverrides o;
  o.extra = {{"solver", "gptq"}, {"mse", 7}, {"max_shrink", 0.25}};
  const QuantSpec s = resolve_spec(find_method("int4_awq"), o);
  EXPECT_EQ(method_opt<int>(s, "mse"), 7);
  EXPECT_EQ(method_opt<std::string>(s, "solver"), "gptq");
  EXPECT_DOUBLE_EQ(method_opt<double>(s, "max_shrink"), 0.25);
  EXPECT_EQ(method_opt<int>(s, "grid"), 20);               // default from the row
  EXPECT_EQ(method_opt<std::string>(s, "loss"), "module");  // first choice
  EXPECT_TRUE(method_opt<bool>(s, "duo"));
  EXPECT_EQ(method_opt<int64_t>(s, "block_size"), 128);
  const QuantSpec f = resolve_spec(find_method("fp8_dynamic"), {});
  EXPECT_EQ(method_opt<std::string>(f, "weights"), "gptq_aa");
  EXPECT_EQ(method_opt<int64_t>(f, "search_rows"), 2048);
  EXPECT_NE(error_of([&] { method_opt<bool>(f, "search"); }).find("has no option 'search'"),
            std::string::npos);
}

TEST(MethodTable, EveryRowsOptionDefaultsPassItsOwnChecks) {
  for (const MethodInfo& m : method_table()) {
    std::set<std::string> keys;
    for (const MethodOpt& o : m.opts) {
      EXPECT_TRUE(keys.insert(o.key).second) << m.name << ": key " << o.key << " twice";
      nlohmann::json extra = {{o.key, o.def}};
      if (o.only_with) {  // "k=v": give k=v too
        const std::string c = o.only_with;
        ASSERT_EQ(c.find("!="), std::string::npos) << "only_with k=v expected: " << c;
        extra[c.substr(0, c.find('='))] = c.substr(c.find('=') + 1);
      }
      QuantOverrides ov;
      ov.extra = extra;
      EXPECT_EQ(resolve_error(m.name, ov), "(no error)") << m.name << " " << extra.dump();
    }
    // The generic options a row lists are accepted (with its only_with condition met).
    QuantOverrides all;
    if (m.uses & kUsesDamp) all.damp = 0.02;
    if (m.uses & kUsesActOrder) all.act_order = true;
    if (m.uses & kUsesTrueSequential) all.true_sequential = false;
    if (m.uses_only_with && std::string(m.uses_only_with).find("!=") == std::string::npos) {
      const std::string c = m.uses_only_with;
      all.extra = {{c.substr(0, c.find('=')), c.substr(c.find('=') + 1)}};
    }
    EXPECT_EQ(resolve_error(m.name, all), "(no error)") << m.name;
  }
}

// ---- AI-OS spellings come from the table ----------------------------------------------------

TEST(MethodTable, AiOsBackendColumn) {
  EXPECT_EQ(aios_methods("ptq"), (std::vector<std::string>{"int8", "int2", "fp16"}));
  EXPECT_EQ(aios_methods("angelslim"),
            (std::vector<std::string>{"fp8_static", "fp8_dynamic", "int8_dynamic", "int4_gptq",
                                      "int4_awq"}));
  EXPECT_TRUE(aios_methods("nope").empty());
  for (const MethodInfo& m : method_table())
    if (m.aios_backend) EXPECT_NE(std::string(m.aios_backend), "") << m.name;
}

TEST(MethodOptions, CliRejectsBadValuesBeforeWork) {
  const fs::path d = test::temp_dir("opts-cli");
  const std::string in = " --input " + test::model_dir("qwen3-tiny").string();
  struct Bad {
    std::string args, expect;
  };
  const std::vector<Bad> bad = {
      {"--method int8 --group-size 0", "--group-size must be a positive group size"},
      {"--method int8 --bits 0", "--bits must be 8"},
      {"--method int4_gptq --damp nan", "--damp must be in [0, 1)"},
      {"--method int4_gptq --damp -1", "--damp must be in [0, 1)"},
      {"--method int4_gptq --damp 1", "--damp must be in [0, 1)"},
      {"--method int8 --damp 0.1", "--damp is not used by method int8"},
      {"--method fp8_static --group-size 128", "--group-size is not accepted by method fp8_static"},
      {"--method int8 --no-act-order", "--no-act-order is not used by method int8"},
      {"--method int4_gptq --method-opt mse=-3", "--method-opt mse must be in [0, 1000]"},
      {"--backend ptq --quant-type int4_gptq", "is not a ptq method (known: int8, int2, fp16)"},
  };
  std::string out;
  for (const Bad& b : bad) {
    const fs::path o = d / "bad";
    EXPECT_NE(test::run_cli("quantize" + in + " --output " + o.string() + " --no-eval " + b.args,
                            &out),
              0)
        << b.args;
    EXPECT_NE(out.find(b.expect), std::string::npos) << b.args << " -> " << out;
    EXPECT_FALSE(fs::exists(o)) << b.args;
  }
  // Calibration options for a method that reads no data: a warning, and the run goes on.
  ASSERT_EQ(test::run_cli("quantize" + in + " --output " + (d / "w").string() +
                              " --no-eval --method int8 --num-samples 4 --calibration-data " +
                              test::data_path("calibration-sample.jsonl").string(),
                          &out),
            0)
      << out;
  EXPECT_NE(out.find("--calibration-data is not used by method int8 (it needs no calibration "
                     "data)"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("--num-samples is not used by method int8"), std::string::npos) << out;
  EXPECT_EQ(out.find("--seq-len is not used"), std::string::npos) << out;
  ASSERT_EQ(test::run_cli("quantize --help", &out), 0);
  EXPECT_NE(out.find("with --backend angelslim: fp8_static | fp8_dynamic | int8_dynamic | "
                     "int4_gptq | int4_awq"),
            std::string::npos)
      << out;
}

// ---- absolute limits: weight reconstruction per type ----------------------------------------

// Fixed pseudo-random weights, the same on every platform (splitmix64 + Box-Muller), with a
// few outliers per row as real LLM weights have: [out, in].
std::vector<float> fixed_weights(int64_t out, int64_t in, uint64_t seed) {
  uint64_t x = seed;
  auto next = [&x] {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  };
  std::vector<float> w(size_t(out * in));
  for (auto& v : w) {
    const double u1 = std::max(next(), 1e-300), u2 = next();
    v = float(0.02 * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  for (int64_t o = 0; o < out; ++o)
    for (int k = 0; k < 2; ++k) w[size_t(o * in + int64_t(next() * double(in)))] *= 8.0f;
  return w;
}

double rel_rms_error(const std::vector<float>& w, const QuantizedWeight& q) {
  const std::vector<float> d = q.dequantize();
  double num = 0, den = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    num += (double(d[i]) - w[i]) * (double(d[i]) - w[i]);
    den += double(w[i]) * w[i];
  }
  return std::sqrt(num / den);
}

TEST(QualityLimits, WeightReconstructionPerType) {
  // Limits: the relative RMS error measured when the table was made (x86-64, quant/rtn.cpp of
  // 2026-12-03) plus 2 %; a change of the rounding grid (scale rule, zero point, clip search)
  // that makes any type worse fails here. Weights: N(0, 0.02) with two x8 outliers per row.
  struct Type {
    const char* name;
    int bits;
    int64_t group;
    bool sym, clip, fp8;
    double max_rel;
  };
  const std::vector<Type> types = {
      {"int8 per-channel sym", 8, -1, true, false, false, 0.02037 * 1.02},
      {"int4 g128 sym", 4, 128, true, false, false, 0.21145 * 1.02},
      {"int4 g128 asym", 4, 128, false, false, false, 0.13925 * 1.02},
      {"int3 g128 asym", 3, 128, false, false, false, 0.29192 * 1.02},
      {"int3 g128 asym clip", 3, 128, false, true, false, 0.25668 * 1.02},
      {"int2 g64 asym clip", 2, 64, false, true, false, 0.39799 * 1.02},
      {"fp8 per-channel", 8, -1, true, false, true, 0.02438 * 1.02},
      {"fp8 per-tensor", 8, 0, true, false, true, 0.02631 * 1.02},
  };
  const int64_t out = 256, in = 512;
  const std::vector<float> w = fixed_weights(out, in, 42);
  for (const Type& t : types) {
    const QuantizedWeight q =
        t.fp8 ? quantize_fp8_rtn(w.data(), out, in, t.group)
              : quantize_int_rtn(w.data(), out, in, t.bits, t.group, t.sym, t.clip);
    const double e = rel_rms_error(w, q);
    std::printf("  %-22s rel. RMS error %.5f (limit %.5f)\n", t.name, e, t.max_rel);
    EXPECT_LT(e, t.max_rel) << t.name;
    EXPECT_GT(e, 0.0) << t.name;
  }
}

// ---- absolute limits: every method on qwen3-tiny --------------------------------------------

struct MethodLimit {
  const char* name;
  const char* method;
  QuantOverrides o;
  double max_ppl_ratio, max_kl;  // on 16 x 256 tokens of tests/data/eval/heldout.txt
};

QuantOverrides ov(std::optional<int> bits, std::optional<int64_t> group = std::nullopt) {
  QuantOverrides o;
  o.bits = bits;
  o.group = group;
  return o;
}

// Measured when the table was made (2026-12-03; 32 x 128 calibration windows of the bundled
// text, the default options of each method; ppl ratio r and KL in nats/token), with margin:
// ratio limit = 1 + 1.25 max(0, r - 1) + 0.002, KL limit = 1.25 KL + 1e-4. A method or grid
// change that makes a row worse by more than a quarter fails; one that improves it should
// lower the row.
std::vector<MethodLimit> method_limits() {
  auto lim = [](double r, double kl) {
    return std::pair{1 + 1.25 * std::max(0.0, r - 1) + 0.002, 1.25 * kl + 1e-4};
  };
  std::vector<MethodLimit> v;
  auto add = [&](const char* name, const char* method, QuantOverrides o, double r, double kl) {
    const auto [mr, mk] = lim(r, kl);
    v.push_back({name, method, std::move(o), mr, mk});
  };
  add("int8", "int8", {}, 0.999493, 0.0002784);
  add("int2", "int2", {}, 1.871545, 0.832398);
  add("fp16", "fp16", {}, 1.0, 0.0);
  add("fp8_static", "fp8_static", {}, 1.009895, 0.0080005);
  add("fp8_dynamic", "fp8_dynamic", {}, 1.01087, 0.0075532);
  add("int8_dynamic", "int8_dynamic", {}, 1.000647, 0.001126);
  add("int4_gptq", "int4_gptq", {}, 1.023154, 0.0509782);
  add("int4_gptq_b3", "int4_gptq", ov(3), 1.177234, 0.1979481);
  add("int4_gptq_b2_g64", "int4_gptq", ov(2, 64), 2.027243, 0.7976735);
  add("int4_gptq_b8", "int4_gptq", ov(8), 0.999151, 0.00021);
  add("int4_awq", "int4_awq", {}, 1.045919, 0.0548211);
  add("int4_awq_b3", "int4_awq", ov(3), 1.162583, 0.2235573);
  // GGUF presets, default rounding=gptq (re-measured 2026-12-05; qwen3-tiny's rows of 128 / 384
  // values take the non-K fallbacks, see docs/formats.md).
  add("q8_0", "q8_0", {}, 0.99995, 0.000218);
  add("q6_k", "q6_k", {}, 0.99995, 0.000218);  // all Q8_0 fallbacks on tiny
  add("q5_k_m", "q5_k_m", {}, 1.00677, 0.005312);
  add("q4_k_m", "q4_k_m", {}, 0.99306, 0.007335);
  add("q3_k_m", "q3_k_m", {}, 1.02231, 0.021293);
  add("q3_k", "q3_k", {}, 1.06778, 0.058852);
  add("q2_k", "q2_k", {}, 1.04279, 0.034377);
  return v;
}

void PrintTo(const MethodLimit& l, std::ostream* os) { *os << l.name; }

class MethodQualityLimit : public ::testing::TestWithParam<MethodLimit> {};

TEST_P(MethodQualityLimit, HeldoutPerplexityOnQwen3Tiny) {
  const MethodLimit& c = GetParam();
  QuantizeOptions q;
  q.input = test::model_dir("qwen3-tiny");
  q.output = test::temp_dir(std::string("limit-") + c.name) / (find_method(c.method).gguf_preset ? "out.gguf" : "out");
  q.method = c.method;
  q.overrides = c.o;
  q.num_samples = 32;
  q.seq_len = 128;
  q.quality.data = test::data_path("eval/heldout.txt");
  q.quality.tokens = 16 * 256;
  q.quality.seq_len = 256;
  const QuantizeResult r = quantize_and_check(q);
  ASSERT_TRUE(r.quality.measured);
  EXPECT_EQ(r.quality.tokens, 16 * 256);
  std::printf("  %-18s ppl ratio %.5f (limit %.5f)  KL %.6f (limit %.6f)\n", c.name,
              r.quality.ppl_ratio, c.max_ppl_ratio, r.quality.kl, c.max_kl);
  EXPECT_LT(r.quality.ppl_ratio, c.max_ppl_ratio) << c.name;
  EXPECT_LT(r.quality.kl, c.max_kl) << c.name;
  EXPECT_GT(r.quality.ppl_ratio, 0.97) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Table, MethodQualityLimit, ::testing::ValuesIn(method_limits()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(QualityLimits, EveryMethodHasALimit) {
  std::set<std::string> covered;
  for (const MethodLimit& l : method_limits()) covered.insert(l.method);
  for (const MethodInfo& m : method_table()) EXPECT_TRUE(covered.count(m.name)) << m.name;
}

}  // namespace
}  // namespace llmc
