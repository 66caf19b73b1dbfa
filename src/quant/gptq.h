// quant/gptq.h — GPTQ (Frantar et al., 2022) on one linear layer, the Hessian it needs, and the
// per-group parameter rule shared with AWQ (quant/awq.h).
//
// Hessian: quant/hessian.h HessianAccumulator (H = 2/n · Σ x xᵀ), the one accumulator.
//
// Group parameters (QuantGrid, group_params)
//  * INT asymmetric: range [min(v, 0), max(v, 0)] · shrink, s = (hi - lo) / (2^b - 1),
//    z = clamp(round(-lo / s), 0, 2^b - 1).
//  * INT symmetric: s = amax · shrink / d with d = 2^(b-1) - 0.5 when `sym_full_range` (GPTQ's
//    grid: the code -2^(b-1) is used, +amax rounds to 2^(b-1) - 1) or d = 2^(b-1) - 1 (llmc's
//    RTN convention, quant/rtn.h).
//  * search_steps > 0: shrink ∈ {1, 1 - δ, ..., min_shrink} (δ = (1 - min_shrink) / steps) is
//    chosen per group minimizing Σ imp_i (v_i - deq_i)² (imp = 1 when not given); ties keep
//    the least shrink. search_steps == 0: shrink = 1.
//  * Scales are rounded to fp16 when `fp16_scales` (the gptq/awq layouts store fp16), BEFORE
//    the codes are chosen, so stored scales reproduce the quantizer's weights bit for bit.
//    A zero range gives s = 1; an fp16 underflow gives the smallest fp16 subnormal.
//  * Codes: quant/rtn.h int_quantize_value (round half to even, clamp); dequantized value
//    float(q - z) · s (z = 0 when symmetric), exactly as QuantizedWeight::dequantize.
//
// GPTQ (gptq_quantize)
//  * Dead input columns (H[i,i] == 0) get H[i,i] = 1 and W[:, i] = 0.
//  * Damping λ = damp · mean(diag H) added to the diagonal; the upper Cholesky factor U of
//    (H + λI)⁻¹ drives the column-by-column error feedback, with lazy batch updates of
//    `block_size` columns (rounded up to a multiple of the group size). Rows are independent
//    and are processed in parallel.
//  * If a Cholesky factorization fails, damping is raised ×10 up to `damp_retries` times; if it
//    still fails (or H is not finite) the layer is quantized by RTN with the same grid, a
//    warning is logged and the report says so (fallback = true, reason).
//  * Groups (group > 0) are contiguous runs of `group` columns in processing order, their
//    parameters computed from the partially updated weights when the solver reaches them;
//    group == -1: one set of parameters per row from the original row.
//  * act_order: None — columns in natural order. Static — columns processed in decreasing
//    diag(H) order but groups are the natural contiguous column groups with parameters computed
//    up front (AutoGPTQ static_groups); g_idx = col / group is stored. Dynamic — groups formed
//    in processing order (AutoGPTQ desc_act); g_idx maps each column to its group.
//    (The permutation trick for down_proj, which needs no g_idx, is done at block level in
//    method_gptq.cpp by permuting gate/up rows and down columns; see permute_rows below.)
//  * Report: relative output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with the undamped H, the same for
//    plain RTN on the same grid (when `report_rtn`), damping used, dead columns, fallback.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/hessian.h"
#include "quant/qweight.h"

namespace llmc {

struct QuantGrid {
  int bits = 4;
  bool symmetric = true;
  bool sym_full_range = true;
  bool fp16_scales = true;
  int search_steps = 0;
  double min_shrink = 0.5;
};

// Scale and zero (0 for symmetric) of one group of n values; imp may be null.
void group_params(const QuantGrid& g, const float* v, int64_t n, const float* imp, float* scale,
                  int32_t* zero);
// Parameters of one group with its range scaled by `shrink` (no search).
void group_params_shrink(const QuantGrid& g, const float* v, int64_t n, double shrink,
                         float* scale, int32_t* zero);
// Squared (importance-weighted) rounding error of one group with (scale, zero).
double group_error(const QuantGrid& g, const float* v, int64_t n, const float* imp, float scale,
                   int32_t zero);

// Plain round-to-nearest of w [out, in] on the grid (the GPTQ fallback and the AWQ quantizer).
// imp (size in, may be null) weights the per-group search. Per-group shrink search as above.
QuantizedWeight quantize_grid_rtn(const float* w, int64_t out, int64_t in, int64_t group,
                                  const QuantGrid& g, const float* imp = nullptr);

enum class ActOrder { None, Static, Dynamic };
// "none" | "static" | "dynamic"; throws llmc::Error listing the choices.
ActOrder parse_act_order(const std::string& s);
const char* act_order_name(ActOrder a);

struct GptqOptions {
  QuantGrid grid;
  int64_t group = 128;      // >0 group size; -1 per channel
  double damp = 0.01;       // fraction of mean(diag H)
  int block_size = 128;
  ActOrder act_order = ActOrder::None;
  int damp_retries = 4;     // each ×10
  bool report_rtn = true;   // also measure RTN's error on the same grid
  bool weighted_search = true;  // weight the per-group shrink search by diag(H)
};

struct GptqReport {
  double rel_error = 0, rel_error_rtn = -1;  // -1: not measured
  double damp = 0;                           // fraction actually used
  int64_t dead_columns = 0;
  bool fallback = false;
  std::string reason;                        // why the fallback happened
  nlohmann::json to_json() const;
};

struct GptqResult {
  QuantizedWeight qw;
  GptqReport report;
};

// w: [out, in]; H: [in, in] (as returned by HessianAccumulator::hessian). `name` only labels
// the fallback warning.
GptqResult gptq_quantize(const float* w, int64_t out, int64_t in, const double* H,
                         const GptqOptions& opt, const std::string& name = "linear");

// Σ_r x_r H x_rᵀ over the rows of x [rows, n] (fp64 result; products in fp32 BLAS).
double hessian_quad_trace(const float* x, int64_t rows, int64_t n, const double* H);
// tr((Wq - W) H (Wq - W)ᵀ) / tr(W H Wᵀ); 0 when the denominator is 0.
double relative_output_error(const float* w, const float* wq, int64_t out, int64_t in,
                             const double* H);

// Diagonal of H sorted decreasingly: the permutation perm (position -> column), stable.
std::vector<int32_t> diag_order(const double* H, int64_t n);
// Reorders the rows of a quantized weight: row i of the result is row perm[i] of qw (codes,
// scales, zeros, bias). Exact: rows are quantized independently.
QuantizedWeight permute_rows(const QuantizedWeight& qw, const std::vector<int32_t>& perm);

}  // namespace llmc
