// quant/gptq.h — GPTQ (Frantar et al., 2022) on one linear layer and the Hessian it needs: the
// one solver of llmc, used by int*_gptq, AWQ's optional gptq solver and fp8's GPTQ rounding, on
// any grid of quant/grid.h (INT groups, or fp8 e4m3 with scales fixed by the caller).
//
// Hessian: quant/hessian.h HessianAccumulator (H = 2/n · Σ x xᵀ), the one accumulator.
//
// Grids and group parameters: quant/grid.h (QuantGrid, group_params, quantize_grid_rtn).
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
//  * fp8 grid: group 0 (one scale) or -1 (one per row), the scales given in fixed_scales; the
//    fallback rounds with those scales.
//  * ggml grid (`ggml` set: a quantized type of formats/ggml_types.h): natural column order, the
//    type's blocks (32 or 256 columns) as the groups. When the solver reaches a block of a row,
//    the type's encoder runs on the row's running (error-updated) weights of that block, weighted
//    by diag(H) when `weighted_search` (what llama.cpp's imatrix weights), which fixes the block's
//    scales and so its affine grid (ggml_types.h grid); each column is then rounded onto it
//    (nearest code, clamped) with GPTQ's error feedback, and the codes are packed into the block
//    (set_codes). The result is the rows' bytes in GptqResult::ggml; `grid`, `group`,
//    `fixed_scales`, act order, h_add and error_ref do not apply; always the CPU solver; the
//    fallback and the report's RTN baseline are the encoder alone with the same weights.
//  * Report (when `report_errors`): relative output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) with the
//    undamped H, the same for plain RTN on the same grid (when `report_rtn`); always damping
//    used, dead columns, fallback.
//  * Where: the CPU solver (LAPACK fp64 factorization, fp32 column loop over the core/threads.h
//    pool) or, when backend::device() == CUDA and out · in >= 2^20 (solver Auto; the
//    environment variable LLMC_GPTQ_SOLVER=cpu|cuda|auto overrides the size rule), the CUDA one
//    (backend/backend.h cuda_gptq_solve: the same steps; codes may differ from the CPU's only
//    where fp32 summation order moves a value across a rounding boundary).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/hessian.h"
#include "quant/grid.h"
#include "quant/qweight.h"

namespace llmc {

enum class ActOrder { None, Static, Dynamic };
// "none" | "static" | "dynamic"; throws llmc::Error listing the choices.
ActOrder parse_act_order(const std::string& s);
const char* act_order_name(ActOrder a);

// Auto: CUDA for large layers when backend::device() == CUDA, else CPU. Cuda without the CUDA
// device -> llmc::Error.
enum class GptqSolver { Auto, Cpu, Cuda };

struct GgmlTypeTraits;

struct GptqOptions {
  QuantGrid grid;
  const GgmlTypeTraits* ggml = nullptr;  // GPTQ on this ggml type's grid (see above)
  int64_t group = 128;      // >0 group size; -1 per channel; 0 per tensor (fp8 grid only)
  double damp = 0.01;       // fraction of mean(diag H)
  int block_size = 128;
  ActOrder act_order = ActOrder::None;
  int damp_retries = 4;     // each ×10
  bool report_rtn = true;   // also measure RTN's error on the same grid
  bool weighted_search = true;  // weight the per-group shrink search by diag(H)
  bool report_errors = true;    // measure rel_error (and rel_error_rtn) in the report
  std::vector<float> fixed_scales;  // fp8 grid: 1 (group 0) or `out` (group -1) scales
  // With act_order != None: the processing order (position -> column) instead of diag(H)
  // descending; empty: diag order.
  std::vector<int32_t> order;
  GptqSolver solver = GptqSolver::Auto;
  std::vector<double> h_add;             // empty or [in] (see the header comment)
  const float* error_ref = nullptr;      // [out, in] or null (fp8 grid only)
  std::vector<float> error_ref_scales;   // with error_ref: as fixed_scales
  // Row boundaries 0 = b_0 < ... < b_k = out: rel_errors[_rtn] per [b_i, b_i+1) in the report.
  std::vector<int64_t> report_rows;
};

struct GptqReport {
  double rel_error = 0, rel_error_rtn = -1;  // -1: not measured
  std::vector<double> rel_errors, rel_errors_rtn;  // per report_rows range (when asked)
  double damp = 0;                           // fraction actually used
  int64_t dead_columns = 0;
  bool fallback = false;
  std::string reason;                        // why the fallback happened
  // Wall time of the steps: layout + permutation, factor + column loop (or RTN fallback),
  // error report (incl. the RTN baseline).
  double seconds_prepare = 0, seconds_solve = 0, seconds_report = 0;
  nlohmann::json to_json() const;
};

struct GptqResult {
  QuantizedWeight qw;
  std::vector<uint8_t> ggml;  // with GptqOptions::ggml: [out, row bytes of the type], qw empty
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
// relative_output_error of each of `wqs` against the same w and H, in one pass (on the host:
// H converted once, the rows stacked); with
// backend::device() == CUDA on the GPU (H in fp32 and the differences resident there, one
// GEMM for all of them, the dot products in fp64: equal to the CPU's up to summation order).
std::vector<double> relative_output_errors(const float* w, const std::vector<const float*>& wqs,
                                           int64_t out, int64_t in, const double* H);

// Diagonal of H sorted decreasingly: the permutation perm (position -> column), stable.
std::vector<int32_t> diag_order(const double* H, int64_t n);
// Reorders the rows of a quantized weight: row i of the result is row perm[i] of qw (codes,
// scales, zeros, bias). Exact: rows are quantized independently.
QuantizedWeight permute_rows(const QuantizedWeight& qw, const std::vector<int32_t>& perm);
// Input channels reordered: column j of the result is column perm[j] of qw (codes and g_idx;
// a g_idx that becomes j / group is dropped).
QuantizedWeight permute_cols(const QuantizedWeight& qw, const std::vector<int32_t>& perm);
// Rows [r0, r1) of qw (codes, per-row parameters, bias; a per-tensor scale is kept).
QuantizedWeight slice_rows(const QuantizedWeight& qw, int64_t r0, int64_t r1);

}  // namespace llmc
