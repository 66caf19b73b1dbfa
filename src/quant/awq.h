// quant/awq.h — Activation-aware Weight Quantization (Lin et al., 2023): per-input-channel scale
// search, function-preserving folding of the scales, and the per-group clipping search.
//
// Scales
//  * x̄ = mean |x| per input channel over calibration rows (AbsMeanAccumulator).
//  * w̄ = mean over the rows of all linears that share the input of |W| / (abs-max of its group)
//    (awq_weight_mean).
//  * awq_scales(α): s = x̄^α / (w̄^(1-α) + 1e-4) with duo scaling, else x̄^α; clamped to >= 1e-4
//    and divided by sqrt(max(s) · min(s)). A non-finite or all-zero result gives s = 1.
//  * awq_grid_search evaluates the caller's loss for s = 1 (identity) and for α = k / grid,
//    k = 0 .. grid-1, and keeps the smallest loss (ties: the earlier candidate), so the result
//    is never worse than no scaling on that loss.
//
// Folding (the model's function is unchanged; quantization then sees W·diag(s))
//  * norm -> linears: norm[j] /= s[j]; every consumer's W[:, j] *= s[j].
//  * linear A -> linear B (A's outputs feed B's inputs): A's rows (and bias) /= s; B's columns
//    *= s. Only valid when nothing nonlinear sits between the two in a way that does not commute
//    with per-channel scaling: v -> o (attention is linear in v per channel, only when v's
//    output width equals o's input width, i.e. no GQA) and up -> down (silu(gate)·up is linear in
//    up per channel). Qwen3's q_norm/k_norm sit after q/k: input scaling of q/k/v is fine, but
//    nothing is ever folded across q/k outputs.
//  * AwqFold holds the optional scale vectors of one decoder block; apply_awq_fold applies
//    them to a BlockWeights whose linears are DenseLinear (throws llmc::Error otherwise).
//  * Mixture of experts: post_attention_layernorm feeds the router and every expert, so ONE
//    scale vector s is folded into it (norm /= s) and into the columns of every module reading
//    it: the router (W_r·diag(s) on x/s computes the same logits, so routing is unchanged; the
//    router stays unquantized), every expert's gate/up and the shared expert's. The search
//    scores s by the MoE output error on a subsample with all experts' gate/up fake-quantized
//    (routing fixed by the unquantized router), weights w̄ averaged over all of them. Each
//    expert's up -> down scale is its own (expert_down), from the tokens routed to it.
//
// Clipping (awq_clip_quantize)
//  * For each row and group, shrink ∈ {1, 1 - δ, ..., 1 - max_shrink} (δ = max_shrink / steps)
//    of the group's range is chosen minimizing the group's output error Δw_g H_gg Δw_gᵀ, where
//    H_gg is the group's diagonal block of the layer's input Hessian (quant/gptq.h), i.e. the
//    squared error of that group's contribution to the layer output over all calibration rows.
//    H == nullptr: plain squared weight error. steps == 0: no clipping (min/max range).
//    With backend::device() == CUDA (H given, group dividing in) the losses of all candidates
//    are evaluated on the GPU (backend.h shrink_residuals, one batched GEMM per chunk of
//    candidates): the same residuals, the products in another fp32 summation order, so a
//    choice can differ from the CPU's only between candidates whose losses are that close.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "quant/gptq.h"
#include "quant/qweight.h"

namespace llmc {

class AbsMeanAccumulator {
 public:
  explicit AbsMeanAccumulator(int64_t cols = 0) : sum_(size_t(cols), 0.0) {}
  void add(const float* x, int64_t rows);
  void add(const backend::MatView& x);  // device rows are reduced on the GPU
  int64_t count() const { return count_; }
  std::vector<float> mean() const;

 private:
  std::vector<double> sum_;
  int64_t count_ = 0;
};

// ws: weights [out_k, in] of linears sharing one input (e.g. q, k, v).
std::vector<float> awq_weight_mean(const std::vector<const std::vector<float>*>& ws, int64_t in,
                                   int64_t group);
std::vector<float> awq_scales(const std::vector<float>& x_mean, const std::vector<float>& w_mean,
                              double alpha, bool duo = true);

struct AwqSearchResult {
  std::vector<float> scales;
  double alpha = -1;          // -1: identity won
  double loss = 0, loss_identity = 0;
  std::vector<double> losses; // per α (k = 0 .. grid-1)
};
AwqSearchResult awq_grid_search(const std::vector<float>& x_mean,
                                const std::vector<float>& w_mean, int grid, bool duo,
                                const std::function<double(const std::vector<float>&)>& loss);

// The same choice from losses of all candidates at once (identity first, then α = k / grid):
// lets a device evaluate them in batches.
using AwqBatchLoss =
    std::function<std::vector<double>(const std::vector<std::vector<float>>& candidates)>;
AwqSearchResult awq_grid_search_batched(const std::vector<float>& x_mean,
                                        const std::vector<float>& w_mean, int grid, bool duo,
                                        const AwqBatchLoss& loss);

// Q(W·diag(s))·diag(1/s): the weight a scaled-and-quantized layer effectively applies to its
// original inputs (RTN on the grid, no clipping). Used inside loss functions.
std::vector<float> awq_fake_quant_scaled(const float* w, int64_t out, int64_t in,
                                         const std::vector<float>& s, int64_t group,
                                         const QuantGrid& g);

// In-place folding helpers (see above).
void scale_columns(std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& s);
void divide_rows(std::vector<float>& w, std::vector<float>& bias, int64_t out, int64_t in,
                 const std::vector<float>& s);
void divide_norm(std::vector<float>& norm, const std::vector<float>& s);
// H'_ij = H_ij / (s_i s_j): the Hessian of inputs x / s.
std::vector<double> scale_hessian(const std::vector<double>& H, const std::vector<float>& s);

struct AwqFold {
  std::vector<float> qkv;   // input_layernorm -> q/k/v      [hidden]
  std::vector<float> vo;    // v -> o (no GQA only)          [num_heads * head_dim]
  std::vector<float> mlp;   // post_attention_layernorm -> every module reading it [hidden]
                            // (dense gate/up; MoE: the router, every expert's gate/up, the
                            // shared expert's gate/up and its gate: one scale vector for all)
  std::vector<float> down;  // up -> down of the dense MLP   [intermediate]
  std::map<int, std::vector<float>> expert_down;  // expert e's up -> down (MoE; e may be
                                                  // kSharedExpert)   [moe_intermediate]
};
// layout: the block's description (nullptr: a dense Llama-style block, LinearSlot order).
void apply_awq_fold(BlockWeights& w, const AwqFold& f, const ModelConfig& cfg,
                    const BlockLayout* layout = nullptr);
// True when v -> o scaling is possible (v's output width == o's input width).
bool awq_can_fold_vo(const ModelConfig& cfg);

// w: [out, in] already scaled (W·diag(s)); H: Hessian of the scaled inputs (may be null).
QuantizedWeight awq_clip_quantize(const float* w, int64_t out, int64_t in, int64_t group,
                                  const QuantGrid& g, const double* H, int steps,
                                  double max_shrink);

}  // namespace llmc
