// eval/quality.cpp — the quality check after `llmc quantize` (contract in eval/quality.h).
#include "eval/quality.h"

#include <algorithm>
#include <chrono>

#include "calib/calib_data.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "eval/eval.h"
#include "formats/checkpoint.h"
#include "loader/quant_linear.h"
#include "tokenizer/tokenizer.h"

namespace llmc {

QualityResult quality_check(const std::filesystem::path& base_path,
                            const std::filesystem::path& quant_path, const QualityOptions& q) {
  QualityResult r;
  Checkpoint base_ck = open_checkpoint(base_path);
  Checkpoint quant_ck = open_checkpoint(quant_path);
  auto tok_it = base_ck.aux_files.find("tokenizer.json");
  if (tok_it == base_ck.aux_files.end()) {
    log_warn(base_path.string() + ": no tokenizer.json; skipping the quality check");
    return r;
  }
  const Tokenizer tok = Tokenizer::from_json_text(tok_it->second, base_path.string());
  const std::string text =
      q.data.empty() ? std::string(default_eval_text()) : read_text_input(q.data);
  const std::vector<int32_t> ids = tok.encode_parallel(text);
  std::unique_ptr<Model> base = load_model_for_inference(base_ck);
  std::unique_ptr<Model> quant = load_model_for_inference(quant_ck);
  check_window_length("--eval-seq-len", q.seq_len, base->config().max_position_embeddings);
  const int ctx = q.seq_len;
  const int64_t windows = std::min<int64_t>(int64_t(ids.size()) / ctx, q.tokens / ctx);
  if (windows < 1) {
    log_warn(cat("quality check: the evaluation text has ", ids.size(), " tokens, fewer than one "
                 "window of ", ctx, "; skipped"));
    return r;
  }
  EvalOptions eo;
  eo.progress = !quiet();
  eo.label = "quality check";
  const CompareResult c = compare_models(*quant, *base, ids, ctx, int(windows), eo);
  r.measured = true;
  r.tokens = int64_t(c.model.windows) * ctx;
  r.ppl_base = c.reference.ppl;
  r.ppl_quant = c.model.ppl;
  r.ppl_ratio = c.ppl_ratio;
  r.kl = c.kl_mean;
  r.top1 = c.top1_agreement;
  return r;
}

QuantizeResult quantize_and_check(const QuantizeOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizeResult res = quantize_model(opt);
  if (!opt.quality.enabled) return res;
  res.quality = quality_check(opt.input, opt.output, opt.quality);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.peak_rss = peak_rss_bytes();
  return res;
}

}  // namespace llmc
