// llmc generate — continue a prompt with a KV cache (greedy or temperature / top-p sampling).
#include <algorithm>
#include <cstdio>

#include "cli/command.h"
#include "core/error.h"
#include "core/progress.h"
#include "eval/generate.h"
#include "eval/model_files.h"
#include "loader/quant_linear.h"
#include "model/model.h"

namespace {

using namespace llmc;

struct Opts {
  std::string model, prompt, tokenizer;
  int max_tokens = 64;
  double temperature = 0, top_p = 1.0;
  uint64_t seed = 0;
  bool no_stop = false;
};

// Streams decoded text: prints what is new since the last call, holding back a trailing
// incomplete UTF-8 sequence (decoded as U+FFFD) until the next token completes it.
class Streamer {
 public:
  explicit Streamer(const Tokenizer& t) : tok_(t) {}
  void add(int32_t id) {
    ids_.push_back(id);
    emit(false);
  }
  void finish() { emit(true); }

 private:
  void emit(bool final) {
    const std::string text = tok_.decode(ids_);
    static const std::string kRepl = "\xEF\xBF\xBD";
    const bool partial = !final && text.size() >= kRepl.size() &&
                         text.compare(text.size() - kRepl.size(), kRepl.size(), kRepl) == 0;
    if (partial || text.size() <= printed_ || text.compare(0, printed_, out_) != 0) return;
    std::fwrite(text.data() + printed_, 1, text.size() - printed_, stdout);
    std::fflush(stdout);
    out_ = text;
    printed_ = text.size();
  }

  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  std::string out_;
  size_t printed_ = 0;
};

int run(const Opts& o) {
  const Checkpoint ck = open_checkpoint(o.model);
  const Tokenizer tok = model_tokenizer(ck, o.tokenizer);
  const std::vector<int32_t> prompt = tok.encode(o.prompt);
  if (prompt.empty()) fail("--prompt is empty: nothing to continue");
  auto model = load_model_for_inference(ck);
  GenerateOptions g;
  g.max_tokens = o.max_tokens;
  g.temperature = o.temperature;
  g.top_p = o.top_p;
  g.seed = o.seed;
  if (!o.no_stop) g.stop_ids = stop_token_ids(ck);
  std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
  Streamer s(tok);
  const GenerateResult r = generate(*model, prompt, g, [&](int32_t id) {
    if (std::find(g.stop_ids.begin(), g.stop_ids.end(), id) == g.stop_ids.end()) s.add(id);
  });
  s.finish();
  std::fputs("\n", stdout);
  std::fflush(stdout);
  log_info(cat(prompt.size(), " prompt tokens, ", r.tokens.size(), " generated",
               r.stopped ? " (stopped at eos)" : "", "; ",
               r.tokens.size() > 1 && r.decode_seconds > 0
                   ? std::to_string(int((r.tokens.size() - 1) / r.decode_seconds)) + " tok/s"
                   : std::string("-")));
  return 0;
}

cli::RunFn setup(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "model: HF directory or .parquet file")->required();
  app.add_option("--prompt", o->prompt, "text to continue")->required();
  app.add_option("--max-tokens", o->max_tokens, "tokens to generate at most (default 64)")
      ->check(cli::at_least(0));
  app.add_option("--temperature", o->temperature, "sampling temperature; 0 = greedy (default)")
      ->check(cli::at_least(0));
  app.add_option("--top-p", o->top_p, "nucleus sampling threshold in (0, 1] (default 1)")
      ->check(cli::detail::number_check(1e-300, 1.0, "must be in (0, 1]"));
  app.add_option("--seed", o->seed, "random seed for sampling (default 0)");
  app.add_option("--tokenizer", o->tokenizer, "tokenizer.json (or its directory) instead of the model's");
  app.add_flag("--ignore-eos", o->no_stop, "do not stop at the end-of-sequence token");
  return [o]() { return run(*o); };
}

}  // namespace

LLMC_REGISTER_COMMAND("generate", "continue a prompt with a model (greedy or sampled, KV cache)", 80, setup);
