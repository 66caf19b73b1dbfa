// quant/gguf_quant.h — the GGUF presets (llama.cpp's Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K):
// per-tensor type mixes, and the quantize run that writes a GGUF file with them.
//
// Contracts:
//  * find_gguf_preset(name) returns the preset of that exact name (e.g. "Q4_K_M"), or nullptr.
//    A preset's choose() gives the ggml type of each 2-D tensor (mixes in docs/methods.md, after
//    llama.cpp's llama_tensor_get_type): a K-quant is replaced by its llama.cpp fallback
//    (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0) when the tensor's rows are not
//    a multiple of 256 values.
//  * quantize_gguf(opt, ck, method, spec): writes opt.output (a .gguf; temp + rename, the output
//    path already checked by the caller) from checkpoint ck with method.gguf_preset's mix, rounding
//    with the ggml encoders (formats/ggml_types.h). --method-opt rounding=rtn: uniform weights;
//    rounding=hdiag (default): the scale/min search of each linear is weighted by the diagonal of
//    its input Hessian (quant/hessian.h) over the calibration windows of the unquantized model,
//    output.weight (or tied token_embd) by the final hidden states'; rounding=imatrix: that
//    diagonal times sqrt(sigma2 + x^2) of each weight, as llama.cpp combines its imatrix. Fills the
//    QuantizeResult like quantize_model (sizes are whole-file bytes vs the bf16 tensors), with the
//    per-tensor types in report["gguf"]["types"].
#pragma once
#include <string>
#include <vector>

#include "formats/gguf_model.h"
#include "quant/method.h"
#include "quant/pipeline.h"

namespace llmc {

struct GgufPreset {
  const char* name;  // "Q4_K_M"
  GgufFileType file_type;
  GgmlType (*choose)(const GgufTensorSite&);
};

const GgufPreset* find_gguf_preset(const std::string& name);
// The llama.cpp fallback of `t` for rows of `row` values (t itself when it fits).
GgmlType gguf_row_fallback(GgmlType t, int64_t row);

// Size budgets (QuantizeOptions::target_size / target_bpw): every 2-D tensor gets the type of
// its candidates (gguf_budget_candidates of its row length) that minimises the summed relative
// output errors (measured per candidate from the calibration Hessians; docs/methods.md) under
// the byte cap.
std::vector<GgmlType> gguf_budget_candidates(int64_t row);
struct MixTensor {
  std::string name;
  std::vector<GgmlType> types;
  std::vector<uint64_t> bytes;  // the tensor's padded file bytes per candidate
  std::vector<double> err;      // its error per candidate
};
// Index of the chosen candidate per tensor: start from each tensor's smallest candidate, then
// repeatedly take the upgrade with the most error saved per extra byte that still fits (upgrades
// along each tensor's lower convex hull of (bytes, error)). Σ chosen bytes <= cap; throws
// llmc::Error when even the smallest candidates exceed cap.
std::vector<int> choose_gguf_mix(const std::vector<MixTensor>& tensors, uint64_t cap);

QuantizeResult quantize_gguf(const QuantizeOptions& opt, const Checkpoint& ck, const MethodInfo& method,
                             const QuantSpec& spec);

}  // namespace llmc
