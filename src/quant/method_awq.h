// quant/method_awq.h — the AWQ method of the table (quant/method.cpp: int4_awq, --bits 2|3|4|8)
// as a BlockQuantizer. Algorithm pieces live in quant/awq.h.
//
// Per block:
//  1. One calibration run of the (unquantized) block collects, for each distinct linear input,
//     mean |x| per channel and the Hessian (quant/gptq.h), plus a subsample of MLP inputs.
//  2. Scale search for each mapping, the loss being the squared error of the inspected module's
//     output against the unquantized module, with only the mapping's linears fake-quantized
//     (RTN on the grid, in the scaled domain):
//       input_layernorm -> q/k/v   inspected: self-attention (block run on the first
//                                   windows with the MLP disabled)
//       v -> o (no GQA only)       inspected: o_proj (exact, from o's input Hessian)
//       post_attention_layernorm -> gate/up   inspected: the MLP on the stored MLP inputs
//       up -> down                 inspected: down_proj (exact, from down's input Hessian)
//     Candidates: no scaling and α = 0, 1/20, ..., 19/20 (quant/awq.h awq_grid_search).
//  3. The scales are folded (apply_awq_fold): the block computes the same function.
//  4. Quantization, asymmetric groups by default: q/k by min/max RTN; every other linear with
//     the per-group clipping search (max shrink 0.5, 20 steps) on the scaled input Hessian.
//     spec.extra["solver"] = "gptq" quantizes the scaled block with GPTQ instead
//     (quant/method_gptq.h, true-sequential; the same extras as int4_gptq apply).
//  * spec.extra: "grid" (α points, default 20), "clip_steps" (20), "max_shrink" (0.5),
//    "loss_tokens" (calibration tokens the attention/MLP losses use, default 2048: the first
//    ceil(2048 / seq) windows for attention, every k-th token for the MLP), "loss"
//    ("module" | "linear": sum of the mapping's linear output errors from their input Hessian,
//    much cheaper), "solver" ("clip" | "gptq"), "duo" (duo scaling, default true).
//  * Per-linear report: α of its mapping, relative output error from H (and RTN's).
#pragma once
#include <memory>
#include <string>

#include "quant/method.h"

namespace llmc {

std::unique_ptr<BlockQuantizer> make_awq_quantizer(const QuantSpec& spec);
// Default layout for the table row: awq when it can hold the scheme (4-bit groups), else
// compressed-tensors.
std::string awq_default_layout(const QuantSpec& spec);

}  // namespace llmc
