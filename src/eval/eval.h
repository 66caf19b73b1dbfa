// eval/eval.h — perplexity and quantization-quality metrics over a token stream.
//
// Protocol (../shared/README.md): the whole file is tokenized once; the token stream is cut into
// non-overlapping windows of `ctx` tokens from the first token, the incomplete tail is dropped
// (and at most `max_windows` windows are used when > 0). Every window starts at position 0 with
// full causal attention; positions 0..ctx-2 predict tokens 1..ctx-1. mean NLL over all those
// predictions (accumulated in double), ppl = exp(mean NLL).
//
// compare_models() runs a model A and a reference B on the same windows and reports, per
// predicted position, KL(P_B || P_A) = sum_v p_B(v) (log p_B(v) - log p_A(v)) (mean, median,
// p99, max), the share of positions where both argmaxes agree, both perplexities and their
// ratio ppl_A / ppl_B. A model compared with itself gives KL exactly 0 and agreement 1.
//
// Both take already-constructed models (any LinearFactory), run several windows per forward
// (batch_windows) with the block API and compute the lm_head in row chunks so memory stays
// bounded for large vocabularies. Results do not depend on the thread count beyond fp32
// summation order inside GEMMs. Errors (ctx < 2, fewer tokens than one window, token ids outside
// the vocabulary, models with different vocabularies) throw llmc::Error.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"

namespace llmc {

struct EvalOptions {
  int batch_windows = 0;  // windows per forward pass; 0: about 4096 tokens per pass
  bool progress = true;   // core/progress.h bar (tokens/s) on stderr
  std::string label = "eval";
};

struct PplResult {
  int64_t tokens = 0;     // tokens in the stream
  int ctx = 0;
  int windows = 0;
  int64_t predicted = 0;  // windows * (ctx - 1)
  double mean_nll = 0, ppl = 0;
  double seconds = 0;     // wall time of the evaluation
};

struct CompareResult {
  PplResult model, reference;
  double ppl_ratio = 0;   // model.ppl / reference.ppl
  double kl_mean = 0, kl_median = 0, kl_p99 = 0, kl_max = 0;
  double top1_agreement = 0;  // fraction of positions, 0..1
  int64_t positions = 0;
  double seconds = 0;
};

// Windows the protocol uses for n tokens; throws when ctx < 2 or n < ctx.
int count_windows(size_t n_tokens, int ctx, int max_windows);

PplResult evaluate_ppl(Model& model, const std::vector<int32_t>& tokens, int ctx,
                       int max_windows = 0, const EvalOptions& opts = {});

CompareResult compare_models(Model& model, Model& reference, const std::vector<int32_t>& tokens,
                             int ctx, int max_windows = 0, const EvalOptions& opts = {});

nlohmann::json to_json(const PplResult& r);
nlohmann::json to_json(const CompareResult& r);

// Throws "<what>: perplexity is nan/inf ..." unless ppl is finite (a broken model must not
// end a command with exit 0).
void check_finite_ppl(double ppl, const std::string& what);

}  // namespace llmc
