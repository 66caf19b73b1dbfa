// llmc eval — perplexity of a model on a text file, optionally compared with a reference model
// (KL divergence, top-1 agreement, ppl ratio). Protocol: eval/eval.h.
#include <chrono>
#include <cstdio>

#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "calib/calib_data.h"
#include "core/progress.h"
#include "eval/eval.h"
#include "eval/model_files.h"
#include "loader/quant_linear.h"
#include "model/model.h"

namespace {

using namespace llmc;

struct Opts {
  std::string model, ppl_file, reference, tokenizer, output;
  int ctx = 256, max_windows = 0, batch = 0;
  bool json = false, overwrite = false;
};

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

int run(const Opts& o) {
  // Everything that can be checked before the long work: the output path first.
  if (!o.output.empty())
    check_output_path(o.output, OutputKind::File, {o.overwrite, {o.model, o.ppl_file, o.reference, o.tokenizer}});
  const Checkpoint ck = open_checkpoint(o.model);
  check_window_length("--ctx", o.ctx, ck.config.value("max_position_embeddings", int64_t(0)));
  const Tokenizer tok = model_tokenizer(ck, o.tokenizer);
  const std::string text = read_text_input(o.ppl_file);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> tokens = tok.encode_parallel(text);
  const double tok_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log_info(cat("tokenized ", o.ppl_file, ": ", tokens.size(), " tokens in ", fmt("%.2f", tok_s), " s"));
  auto model = load_model_for_inference(ck);
  EvalOptions eo;
  eo.batch_windows = o.batch;
  nlohmann::json out = {{"model", o.model}, {"file", o.ppl_file}};
  std::string report;
  std::vector<std::pair<double, std::string>> ppls;  // each must be finite (checked after reporting)
  if (o.reference.empty()) {
    const PplResult r = evaluate_ppl(*model, tokens, o.ctx, o.max_windows, eo);
    ppls = {{r.ppl, o.model}};
    out["ppl"] = to_json(r);
    report = cat("model        ", o.model, "\n",
                 "file         ", o.ppl_file, ": ", r.tokens, " tokens, ", r.windows, " windows of ",
                 r.ctx, ", ", r.predicted, " predicted\n",
                 "perplexity   ", fmt("%.4f", r.ppl), "  (mean NLL ", fmt("%.6f", r.mean_nll), ")\n",
                 "time         ", fmt("%.2f", r.seconds), " s (",
                 fmt("%.0f", double(r.windows) * r.ctx / std::max(r.seconds, 1e-9)), " tok/s)\n");
  } else {
    const Checkpoint rck = open_checkpoint(o.reference);
    if (o.tokenizer.empty()) {
      auto a = ck.aux_files.find("tokenizer.json"), b = rck.aux_files.find("tokenizer.json");
      if (b != rck.aux_files.end() && a->second != b->second)
        log_warn(cat(o.reference, ": its tokenizer.json differs from the model's; using the model's"));
    }
    auto ref = load_model_for_inference(rck);
    const CompareResult c = compare_models(*model, *ref, tokens, o.ctx, o.max_windows, eo);
    ppls = {{c.model.ppl, o.model}, {c.reference.ppl, o.reference}};
    out["reference"] = o.reference;
    out["compare"] = to_json(c);
    report = cat("model        ", o.model, "\n", "reference    ", o.reference, "\n",
                 "file         ", o.ppl_file, ": ", c.model.tokens, " tokens, ", c.model.windows,
                 " windows of ", c.model.ctx, ", ", c.positions, " predicted\n",
                 "perplexity   ", fmt("%.4f", c.model.ppl), " (reference ", fmt("%.4f", c.reference.ppl),
                 ", ratio ", fmt("%.5f", c.ppl_ratio), ")\n",
                 "KL(ref||model) mean ", fmt("%.6f", c.kl_mean), "  median ", fmt("%.6f", c.kl_median),
                 "  p99 ", fmt("%.6f", c.kl_p99), "  max ", fmt("%.4f", c.kl_max), "\n",
                 "top-1 agree  ", fmt("%.3f", 100 * c.top1_agreement), " %\n",
                 "time         ", fmt("%.2f", c.seconds), " s\n");
  }
  if (!o.output.empty()) write_text_file(o.output, out.dump(2) + "\n");
  const std::string s = o.json ? out.dump(2) + "\n" : report;
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
  for (const auto& [ppl, who] : ppls) check_finite_ppl(ppl, who);
  return 0;
}

cli::RunFn setup(CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "model: HF directory or .parquet file")->required();
  app.add_option("--ppl", o->ppl_file, "UTF-8 text file to measure perplexity on")->required();
  app.add_option("--ctx", o->ctx, "window length in tokens (default 256)")->check(cli::in_range(2, 1 << 20));
  app.add_option("--max-windows", o->max_windows, "use at most N windows (default: all)")
      ->check(cli::at_least(0));
  app.add_option("--reference", o->reference,
                 "reference model (HF dir or .parquet): report KL(ref||model), top-1 agreement, ppl ratio");
  app.add_option("--tokenizer", o->tokenizer, "tokenizer.json (or its directory) instead of the model's");
  app.add_option("--batch", o->batch, "windows per forward pass (default: ~4096 tokens)")
      ->check(cli::at_least(0));
  app.add_flag("--json", o->json, "print the results as JSON");
  app.add_option("-o,--output", o->output, "also write the JSON results to this file");
  cli::add_overwrite_flag(app, o->overwrite);
  return [o]() { return run(*o); };
}

}  // namespace

LLMC_REGISTER_COMMAND("eval", "perplexity of a model on a text file; KL / top-1 agreement vs a reference", 70,
                      setup);
