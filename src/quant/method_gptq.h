// quant/method_gptq.h — the GPTQ method of the table (quant/method.cpp: int4_gptq, --bits
// 2|3|4|8) as a BlockQuantizer, and the block-level routine AWQ+GPTQ reuses.
//
// Per block (gptq_quantize_block):
//  * Stages: true-sequential (default) q/k/v -> o -> gate/up -> down; each stage's Hessians are
//    accumulated from the block run with the previous stages already quantized (BlockJob::
//    for_each_input stops right after the needed input). --no-true-sequential: one run of the
//    block collects every input, then all linears are solved. One Hessian per distinct input
//    (q/k/v share one, gate/up share one).
//  * Each linear: quant/gptq.h gptq_quantize on the slot's dense weight; its report (relative
//    output error from H, RTN's error, damping, dead columns, fallback) goes into the job
//    report and the run summary (finish(): JSON summary + one log line).
//  * act-order (spec.act_order: on by default for int4_gptq, --no-act-order turns it off) has
//    three modes, spec.extra["act_order"]:
//      "static"  natural contiguous groups, columns processed by decreasing diag(H);
//                no g_idx is needed (the checkpoint says static_groups: true, desc_act: false);
//      "dynamic" groups formed in processing order, stored with g_idx (desc_act: true);
//      "permute" (default) the permutation trick: down_proj's input channels are reordered by
//                decreasing diag(H) and the permutation is folded into gate/up's output rows
//                (exact: the MLP computes the same function), so down's groups stay contiguous
//                with no g_idx; the other linears use "static".
//  * spec.extra also accepts: "mse" (int, default 20: per-group range shrink search over
//    {1, 0.975, ..., 0.5} minimizing the diag(H)-weighted rounding error when the solver reaches
//    the group; 0 = plain min/max range),
//    "block_size" (int, lazy batch size, default 128), "sym_full_range" (bool), "solver"
//    ("gptq" | "rtn": plain round-to-nearest on the same grid, the baseline GPTQ is measured
//    against; reports and layouts unchanged).
//  * Scales are rounded to the output layout's scale dtype (fp16 for gptq/awq) before codes are
//    chosen, so the written checkpoint decodes to exactly the weights the solver produced.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/gptq.h"
#include "quant/method.h"

namespace llmc {

enum class ActOrderMode { Off, Static, Dynamic, Permute };

struct GptqBlockOptions {
  GptqOptions linear;
  bool true_sequential = true;
  ActOrderMode act_order = ActOrderMode::Off;
  bool rtn = false;  // spec.extra["solver"] == "rtn": round to nearest on the same grid
};
// From the resolved spec (bits, group, symmetry, damp, act_order, true_sequential, layout's
// scale dtype, extras). Throws llmc::Error for bad extras.
GptqBlockOptions gptq_block_options(const QuantSpec& spec);

// Accumulates per-linear reports over the run.
struct GptqRunStats {
  int linears = 0;
  double sum_rel = 0, sum_rel_rtn = 0, max_rel = 0;
  std::string worst;
  std::vector<std::string> fallbacks;
  double seconds_inputs = 0;  // block runs + Hessian accumulation
  double seconds_solve = 0;   // GPTQ solves (incl. error reports)
  // Of seconds_solve, inside gptq_quantize: layout/permutation, factor + columns, reports.
  double seconds_prepare = 0, seconds_columns = 0, seconds_report = 0;
  void add(const std::string& module, const GptqReport& r);
  nlohmann::json to_json() const;
  std::string line() const;  // one-line human summary
};

void gptq_quantize_block(BlockJob& job, const GptqBlockOptions& o, GptqRunStats* stats);

std::unique_ptr<BlockQuantizer> make_gptq_quantizer(const QuantSpec& spec);
// The first of `layouts` that can hold the spec's scheme (bits, symmetry, group; shape-free).
std::string first_layout_holding(const std::vector<std::string>& layouts, const QuantSpec& spec);
// Default layout for the table row: gptq when it can hold the scheme (symmetric), else
// compressed-tensors.
std::string gptq_default_layout(const QuantSpec& spec);

}  // namespace llmc
