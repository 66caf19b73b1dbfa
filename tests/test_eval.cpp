// Tests of eval/: perplexity protocol against reference.json, model comparison metrics,
// generation with the KV cache, and the `llmc eval` / `llmc generate` commands.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/fs.h"
#include "eval/eval.h"
#include "eval/generate.h"
#include "eval/model_files.h"
#include "formats/checkpoint.h"
#include "model/model.h"
#include "synthetic_model.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace llmc;
using nlohmann::json;

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

struct Fixture {
  Checkpoint ck;
  std::unique_ptr<Model> model;
  Tokenizer tok;
  json ref;
};

Fixture& fixture(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Fixture>> cache;
  auto& f = cache[name];
  if (!f) {
    f = std::make_unique<Fixture>();
    f->ck = open_checkpoint(test::model_dir(name));
    f->model = Model::load(f->ck);
    f->tok = model_tokenizer(f->ck);
    f->ref = json::parse(read_text_file(test::model_dir(name) / "reference.json"));
  }
  return *f;
}

const std::vector<int32_t>& file_tokens(const std::string& file) {
  static std::map<std::string, std::vector<int32_t>> cache;
  auto& t = cache[file];
  if (t.empty()) t = fixture("qwen3-tiny").tok.encode_parallel(read_text_file(test::data_path("eval/" + file)));
  return t;
}

EvalOptions quiet_opts(int batch = 0) {
  EvalOptions o;
  o.progress = false;
  o.batch_windows = batch;
  return o;
}

// Independent NLL / KL from full forward() logits, in double.
struct Naive {
  double nll_a = 0, nll_b = 0, kl = 0;
  int64_t agree = 0, n = 0;
};
Naive naive_compare(Model& a, Model& b, const std::vector<int32_t>& tokens, int ctx, int windows) {
  Naive r;
  const int V = a.config().vocab_size;
  for (int w = 0; w < windows; ++w) {
    std::vector<int32_t> ids(tokens.begin() + w * ctx, tokens.begin() + (w + 1) * ctx);
    const auto la = a.forward(ids, 1, ctx), lb = b.forward(ids, 1, ctx);
    for (int p = 0; p + 1 < ctx; ++p) {
      const float* x = la.data() + size_t(p) * V;
      const float* y = lb.data() + size_t(p) * V;
      double ma = -1e300, mb = -1e300;
      for (int v = 0; v < V; ++v) ma = std::max(ma, double(x[v])), mb = std::max(mb, double(y[v]));
      double sa = 0, sb = 0;
      for (int v = 0; v < V; ++v) sa += std::exp(x[v] - ma), sb += std::exp(y[v] - mb);
      const double lsa = ma + std::log(sa), lsb = mb + std::log(sb);
      r.nll_a += lsa - x[ids[p + 1]];
      r.nll_b += lsb - y[ids[p + 1]];
      double kl = 0;
      for (int v = 0; v < V; ++v) {
        const double pb = std::exp(y[v] - lsb);
        kl += pb * ((y[v] - lsb) - (x[v] - lsa));
      }
      r.kl += kl;
      r.agree += cpu::argmax(x, V) == cpu::argmax(y, V);
      ++r.n;
    }
  }
  return r;
}

void check_reference_ppl(const std::string& model, const std::string& file, const std::string& key) {
  Fixture& f = fixture(model);
  const auto& tokens = file_tokens(file);
  EXPECT_EQ(int64_t(tokens.size()), f.ref.at(key + "_tokens").get<int64_t>());
  const PplResult r = evaluate_ppl(*f.model, tokens, 256, 0, quiet_opts());
  const double want = f.ref.at(key + "_ppl").get<double>();
  EXPECT_EQ(r.predicted, f.ref.at(key + "_predicted").get<int64_t>());
  EXPECT_EQ(r.windows, int(tokens.size() / 256));
  EXPECT_NEAR(r.ppl / want, 1.0, 2e-4) << model << " " << file << ": " << r.ppl << " vs " << want;
  std::printf("  %s %s: ppl %.4f (reference %.4f), %.1f s\n", model.c_str(), file.c_str(), r.ppl, want,
              r.seconds);
}

}  // namespace

// ================================================================ protocol
TEST(EvalProtocol, CountWindows) {
  EXPECT_EQ(count_windows(121000, 256, 0), 472);
  EXPECT_EQ(count_windows(121000, 256, 10), 10);
  EXPECT_EQ(count_windows(121000, 256, 1000), 472);
  EXPECT_EQ(count_windows(512, 256, 0), 2);
  EXPECT_NE(error_of([] { count_windows(255, 256, 0); }).find("fewer than one window"), std::string::npos);
  EXPECT_NE(error_of([] { count_windows(100, 1, 0); }).find("too short"), std::string::npos);
}

// The fixture tokenizers are shared by both tiny models.
TEST(EvalProtocol, TinyModelsShareTheTokenizer) {
  EXPECT_EQ(fixture("qwen3-tiny").ck.aux_files.at("tokenizer.json"),
            fixture("llama-tiny").ck.aux_files.at("tokenizer.json"));
}

TEST(EvalReference, Qwen3TinyHeldout) { check_reference_ppl("qwen3-tiny", "heldout.txt", "heldout"); }
TEST(EvalReference, LlamaTinyHeldout) { check_reference_ppl("llama-tiny", "heldout.txt", "heldout"); }
TEST(EvalReference, Qwen3TinyWikitext2) { check_reference_ppl("qwen3-tiny", "wikitext2-test.txt", "wikitext2_test"); }
TEST(EvalReference, LlamaTinyWikitext2) { check_reference_ppl("llama-tiny", "wikitext2-test.txt", "wikitext2_test"); }

TEST(EvalPpl, MatchesNaiveForwardAndIsBatchInvariant) {
  Fixture& f = fixture("llama-tiny");
  const auto& tokens = file_tokens("heldout.txt");
  const int ctx = 64, windows = 5;
  const Naive n = naive_compare(*f.model, *f.model, tokens, ctx, windows);
  const PplResult a = evaluate_ppl(*f.model, tokens, ctx, windows, quiet_opts(1));
  const PplResult b = evaluate_ppl(*f.model, tokens, ctx, windows, quiet_opts(3));
  const PplResult c = evaluate_ppl(*f.model, tokens, ctx, windows, quiet_opts(0));
  EXPECT_EQ(a.predicted, n.n);
  EXPECT_EQ(a.predicted, windows * (ctx - 1));
  EXPECT_NEAR(a.mean_nll, n.nll_a / n.n, 1e-5);
  EXPECT_NEAR(a.mean_nll, b.mean_nll, 1e-6);  // GEMM tiling changes fp32 rounding only
  EXPECT_NEAR(a.mean_nll, c.mean_nll, 1e-6);
  EXPECT_DOUBLE_EQ(a.ppl, std::exp(a.mean_nll));
  const json j = to_json(a);
  EXPECT_EQ(j.at("windows"), windows);
  EXPECT_EQ(j.at("ctx"), ctx);
  EXPECT_DOUBLE_EQ(j.at("ppl").get<double>(), a.ppl);
}

TEST(EvalPpl, Errors) {
  Fixture& f = fixture("qwen3-tiny");
  const std::vector<int32_t> few(100, 5);
  EXPECT_NE(error_of([&] { evaluate_ppl(*f.model, few, 256, 0, quiet_opts()); }).find("fewer than one window"),
            std::string::npos);
  EXPECT_NE(error_of([&] { evaluate_ppl(*f.model, {}, 256, 0, quiet_opts()); }).find("0 tokens"), std::string::npos);
  std::vector<int32_t> big(8192, 1);
  EXPECT_NE(error_of([&] { evaluate_ppl(*f.model, big, 8192, 0, quiet_opts()); }).find("max_position_embeddings"),
            std::string::npos);
  std::vector<int32_t> bad(64, 3);
  bad[10] = 9000;
  EXPECT_NE(error_of([&] { evaluate_ppl(*f.model, bad, 32, 0, quiet_opts()); }).find("token id 9000"),
            std::string::npos);
}

// ================================================================ comparison
TEST(EvalCompare, ModelAgainstItselfIsExactlyZeroKl) {
  Fixture& f = fixture("qwen3-tiny");
  const auto& tokens = file_tokens("heldout.txt");
  Checkpoint ck2 = open_checkpoint(test::model_dir("qwen3-tiny"));
  auto twin = Model::load(ck2);
  for (Model* ref : {f.model.get(), twin.get()}) {
    const CompareResult c = compare_models(*f.model, *ref, tokens, 128, 6, quiet_opts());
    EXPECT_EQ(c.kl_mean, 0.0);
    EXPECT_EQ(c.kl_median, 0.0);
    EXPECT_EQ(c.kl_p99, 0.0);
    EXPECT_EQ(c.kl_max, 0.0);
    EXPECT_EQ(c.top1_agreement, 1.0);
    EXPECT_EQ(c.ppl_ratio, 1.0);
    EXPECT_EQ(c.positions, 6 * 127);
    const PplResult p = evaluate_ppl(*f.model, tokens, 128, 6, quiet_opts());
    EXPECT_NEAR(c.model.mean_nll, p.mean_nll, 1e-12);
  }
}

TEST(EvalCompare, DifferentModelsMatchNaiveKlAndPpl) {
  Fixture& a = fixture("qwen3-tiny");
  Fixture& b = fixture("llama-tiny");
  const auto& tokens = file_tokens("wikitext2-test.txt");
  const int ctx = 48, windows = 4;
  const Naive n = naive_compare(*a.model, *b.model, tokens, ctx, windows);
  const CompareResult c = compare_models(*a.model, *b.model, tokens, ctx, windows, quiet_opts(3));
  EXPECT_EQ(c.positions, n.n);
  EXPECT_GT(c.kl_mean, 0.01);
  EXPECT_NEAR(c.kl_mean, n.kl / n.n, 1e-5 * (1 + n.kl / n.n));
  EXPECT_NEAR(c.model.mean_nll, n.nll_a / n.n, 1e-5);
  EXPECT_NEAR(c.reference.mean_nll, n.nll_b / n.n, 1e-5);
  EXPECT_NEAR(c.top1_agreement, double(n.agree) / n.n, 1e-12);
  EXPECT_LT(c.top1_agreement, 1.0);
  EXPECT_NEAR(c.ppl_ratio, c.model.ppl / c.reference.ppl, 1e-12);
  EXPECT_LE(c.kl_median, c.kl_p99);
  EXPECT_LE(c.kl_p99, c.kl_max);
  EXPECT_GE(c.kl_median, 0.0);
  const json j = to_json(c);
  EXPECT_DOUBLE_EQ(j.at("kl").at("mean").get<double>(), c.kl_mean);
  EXPECT_DOUBLE_EQ(j.at("model").at("ppl").get<double>(), c.model.ppl);
  EXPECT_DOUBLE_EQ(j.at("reference").at("ppl").get<double>(), c.reference.ppl);
  EXPECT_DOUBLE_EQ(j.at("top1_agreement").get<double>(), c.top1_agreement);
}

TEST(EvalCompare, VocabularyMismatchIsAnError) {
  json cfg = json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
    "tie_word_embeddings": true})");
  Checkpoint ck = test::synthetic_checkpoint(cfg);
  auto small = Model::load(ck);
  std::vector<int32_t> tokens(128, 7);
  EXPECT_NE(error_of([&] { compare_models(*fixture("qwen3-tiny").model, *small, tokens, 32, 0, quiet_opts()); })
                .find("differs from the reference's"),
            std::string::npos);
}

// ================================================================ generation
TEST(Generate, GreedyEqualsArgmaxOfFullRecomputationAndStopsAtEos) {
  Fixture& f = fixture("qwen3-tiny");
  const std::vector<int32_t> prompt = f.tok.encode("And God said, Let there be");
  ASSERT_FALSE(prompt.empty());
  GenerateOptions o;
  o.max_tokens = 20;
  std::vector<int32_t> streamed;
  const GenerateResult r = generate(*f.model, prompt, o, [&](int32_t t) { streamed.push_back(t); });
  ASSERT_EQ(r.tokens.size(), 20u);
  EXPECT_EQ(streamed, r.tokens);
  EXPECT_FALSE(r.stopped);
  std::vector<int32_t> seq = prompt;
  const int V = f.model->config().vocab_size;
  for (int32_t t : r.tokens) {
    const auto logits = f.model->forward(seq, 1, int(seq.size()));
    EXPECT_EQ(t, int32_t(cpu::argmax(logits.data() + (seq.size() - 1) * V, V)));
    seq.push_back(t);
  }
  const std::string text = f.tok.decode(r.tokens);
  EXPECT_FALSE(text.empty());
  // stop at the 5th generated token's id
  o.stop_ids = {r.tokens[4]};
  const GenerateResult s = generate(*f.model, prompt, o);
  EXPECT_TRUE(s.stopped);
  EXPECT_LE(s.tokens.size(), 5u);
  EXPECT_EQ(s.tokens.back(), r.tokens[4]);
  o.max_tokens = 0;
  EXPECT_TRUE(generate(*f.model, prompt, o).tokens.empty());
}

TEST(Generate, SamplingIsSeededAndRespectsTopP) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f};
  std::mt19937_64 rng(1);
  EXPECT_EQ(sample_token(logits.data(), 4, 0.0, 1.0, rng), 3);
  EXPECT_EQ(sample_token(logits.data(), 4, 1.0, 1e-6, rng), 3);  // nucleus of one
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 20000; ++i) ++counts[sample_token(logits.data(), 4, 1.0, 1.0, rng)];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int v = 0; v < 4; ++v) EXPECT_NEAR(counts[v] / 20000.0, std::exp(logits[v]) / z, 0.015) << v;
  // top_p 0.7: p = [.032 .087 .237 .644] -> keeps {3, 2}
  std::fill(counts.begin(), counts.end(), 0);
  for (int i = 0; i < 5000; ++i) ++counts[sample_token(logits.data(), 4, 1.0, 0.7, rng)];
  EXPECT_EQ(counts[0] + counts[1], 0);
  EXPECT_GT(counts[2], 0);
  std::mt19937_64 r1(42), r2(42);
  for (int i = 0; i < 50; ++i)
    EXPECT_EQ(sample_token(logits.data(), 4, 0.8, 0.9, r1), sample_token(logits.data(), 4, 0.8, 0.9, r2));
  EXPECT_THROW(sample_token(logits.data(), 4, 1.0, 1.5, rng), Error);
  EXPECT_THROW(sample_token(logits.data(), 0, 1.0, 1.0, rng), Error);
}

TEST(Generate, ErrorsAndPositionLimit) {
  Checkpoint ck = open_checkpoint(test::model_dir("llama-tiny"));
  ck.config["max_position_embeddings"] = 12;
  auto m = Model::load(ck);
  GenerateOptions o;
  o.max_tokens = 50;
  EXPECT_NE(error_of([&] { generate(*m, {}, o); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { generate(*m, std::vector<int32_t>(13, 1), o); }).find("max_position_embeddings"),
            std::string::npos);
  const GenerateResult r = generate(*m, {1, 2, 3, 4, 5}, o);
  EXPECT_EQ(r.tokens.size(), 8u);  // 5 + 7 fills 12 positions, the last token is not run
  o.max_tokens = -1;
  EXPECT_THROW(generate(*m, {1}, o), Error);
}

TEST(ModelFiles, StopIdsAndTokenizerSources) {
  Checkpoint ck = open_checkpoint(test::model_dir("qwen3-tiny"));
  EXPECT_EQ(stop_token_ids(ck), std::vector<int32_t>{0});
  ck.config["eos_token_id"] = {5, 3};
  ck.aux_files["generation_config.json"] = R"({"eos_token_id": [3, 7]})";
  EXPECT_EQ(stop_token_ids(ck), (std::vector<int32_t>{3, 5, 7}));
  ck.config["eos_token_id"] = "x";
  EXPECT_NE(error_of([&] { stop_token_ids(ck); }).find("eos_token_id"), std::string::npos);
  ck.config.erase("eos_token_id");
  ck.aux_files["generation_config.json"] = "{not json";
  EXPECT_NE(error_of([&] { stop_token_ids(ck); }).find("generation_config.json: not valid JSON"), std::string::npos);
  ck.aux_files.erase("generation_config.json");
  EXPECT_TRUE(stop_token_ids(ck).empty());
  const Tokenizer over = model_tokenizer(ck, (test::model_dir("llama-tiny") / "tokenizer.json").string());
  EXPECT_EQ(over.encode("hello world"), model_tokenizer(ck).encode("hello world"));
  ck.aux_files.erase("tokenizer.json");
  EXPECT_NE(error_of([&] { model_tokenizer(ck); }).find("no tokenizer.json"), std::string::npos);
}

// ================================================================ CLI
TEST(EvalCli, PerplexityJsonMatchesLibraryAndParquetModelsWork) {
  const auto dir = test::temp_dir("eval-cli");
  const std::string heldout = test::data_path("eval/heldout.txt").string();
  std::string out;
  ASSERT_EQ(test::run_cli("-q eval --model " + test::model_dir("qwen3-tiny").string() + " --ppl " + heldout +
                              " --max-windows 6 --ctx 128 --json -o " + (dir / "r.json").string(),
                          &out),
            0)
      << out;
  const json j = json::parse(out);
  const PplResult want = evaluate_ppl(*fixture("qwen3-tiny").model, file_tokens("heldout.txt"), 128, 6, quiet_opts());
  EXPECT_NEAR(j.at("ppl").at("ppl").get<double>(), want.ppl, 1e-9 * want.ppl);
  EXPECT_EQ(j.at("ppl").at("windows"), 6);
  EXPECT_EQ(json::parse(read_text_file(dir / "r.json")), j);

  // the same model as one Parquet file: weights and tokenizer.json from the file
  {
    const Checkpoint src = open_checkpoint(test::model_dir("qwen3-tiny"));
    auto w = make_checkpoint_writer(dir / "m.parquet", CheckpointFormat::Parquet);
    for (const auto& t : src.tensors->list()) {
      const TensorRef r = src.tensors->get(t.name);
      w->add_tensor(t.name, t.dtype, t.shape, r.data, r.info.nbytes);
    }
    w->commit(src.config, src.aux_files);
  }
  ASSERT_EQ(test::run_cli("-q eval --model " + (dir / "m.parquet").string() + " --ppl " + heldout +
                              " --max-windows 6 --ctx 128 --json",
                          &out),
            0)
      << out;
  EXPECT_NEAR(json::parse(out).at("ppl").at("ppl").get<double>(), want.ppl, 1e-9 * want.ppl);

  // text report
  ASSERT_EQ(test::run_cli("eval --model " + test::model_dir("qwen3-tiny").string() + " --ppl " + heldout +
                              " --max-windows 2 --batch 1",
                          &out),
            0)
      << out;
  EXPECT_NE(out.find("perplexity"), std::string::npos) << out;
  EXPECT_NE(out.find("2 windows of 256"), std::string::npos) << out;
}

TEST(EvalCli, ReferenceComparison) {
  const std::string heldout = test::data_path("eval/heldout.txt").string();
  const std::string q = test::model_dir("qwen3-tiny").string(), l = test::model_dir("llama-tiny").string();
  std::string out;
  ASSERT_EQ(test::run_cli("-q eval --model " + q + " --reference " + q + " --ppl " + heldout +
                              " --max-windows 3 --json",
                          &out),
            0)
      << out;
  json j = json::parse(out);
  EXPECT_EQ(j.at("compare").at("kl").at("mean").get<double>(), 0.0);
  EXPECT_EQ(j.at("compare").at("top1_agreement").get<double>(), 1.0);
  EXPECT_EQ(j.at("compare").at("ppl_ratio").get<double>(), 1.0);
  ASSERT_EQ(test::run_cli("eval --model " + q + " --reference " + l + " --ppl " + heldout + " --max-windows 2",
                          &out),
            0)
      << out;
  EXPECT_NE(out.find("KL(ref||model) mean"), std::string::npos) << out;
  EXPECT_NE(out.find("top-1 agree"), std::string::npos) << out;
}

TEST(EvalCli, ErrorsExitNonZero) {
  const std::string heldout = test::data_path("eval/heldout.txt").string();
  const std::string q = test::model_dir("qwen3-tiny").string();
  const auto dir = test::temp_dir("eval-cli-err");
  std::string out;
  EXPECT_NE(test::run_cli("eval --model " + q + " --ppl /nonexistent/file.txt", &out), 0);
  EXPECT_NE(out.find("/nonexistent/file.txt"), std::string::npos) << out;
  EXPECT_NE(test::run_cli("eval --model /nonexistent/model --ppl " + heldout, &out), 0);
  EXPECT_NE(out.find("/nonexistent/model"), std::string::npos) << out;
  EXPECT_NE(test::run_cli("eval --model " + q + " --ppl " + heldout + " --ctx 1", &out), 0);
  EXPECT_NE(test::run_cli("eval --model " + q + " --ppl " + heldout + " --bogus", &out), 0);
  EXPECT_NE(test::run_cli("eval --ppl " + heldout, &out), 0);
  write_text_file(dir / "short.txt", "just a few words");
  EXPECT_NE(test::run_cli("eval --model " + q + " --ppl " + (dir / "short.txt").string(), &out), 0);
  EXPECT_NE(out.find("fewer than one window"), std::string::npos) << out;
  EXPECT_NE(test::run_cli("eval --model " + q + " --ppl " + heldout + " --ctx 5000", &out), 0);
  EXPECT_NE(out.find("max_position_embeddings"), std::string::npos) << out;
}

TEST(GenerateCli, GreedyIsDeterministicAndErrorsExitNonZero) {
  const std::string q = test::model_dir("qwen3-tiny").string();
  std::string a, b;
  ASSERT_EQ(test::run_cli("-q generate --model " + q + " --prompt 'The king' --max-tokens 12", &a), 0) << a;
  ASSERT_EQ(test::run_cli("-q generate --model " + q + " --prompt 'The king' --max-tokens 12 --temperature 0", &b), 0);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.rfind("The king", 0), 0u) << a;
  EXPECT_GT(a.size(), std::string("The king\n").size());
  Fixture& f = fixture("qwen3-tiny");
  GenerateOptions o;
  o.max_tokens = 12;
  o.stop_ids = stop_token_ids(f.ck);
  auto r = generate(*f.model, f.tok.encode("The king"), o);
  if (r.stopped) r.tokens.pop_back();
  EXPECT_EQ(a, "The king" + f.tok.decode(r.tokens) + "\n");
  ASSERT_EQ(test::run_cli("-q generate --model " + q +
                              " --prompt 'The king' --max-tokens 12 --temperature 0.8 --top-p 0.9 --seed 3 --ignore-eos",
                          &a),
            0);
  ASSERT_EQ(test::run_cli("-q generate --model " + q +
                              " --prompt 'The king' --max-tokens 12 --temperature 0.8 --top-p 0.9 --seed 3 --ignore-eos",
                          &b),
            0);
  EXPECT_EQ(a, b);
  ASSERT_EQ(test::run_cli("generate --model " + q + " --prompt 'The' --max-tokens 3", &a), 0);
  EXPECT_NE(a.find("prompt tokens"), std::string::npos) << a;
  EXPECT_NE(test::run_cli("generate --model " + q + " --prompt ''", &a), 0);
  EXPECT_NE(a.find("empty"), std::string::npos) << a;
  EXPECT_NE(test::run_cli("generate --model " + q + " --prompt x --top-p 2", &a), 0);
  EXPECT_NE(test::run_cli("generate --model " + q, &a), 0);
}
