// model/config.h — the parts of a HF config.json the engine needs, from v4 style
// (torch_dtype, rope_theta, rope_scaling) or v5 style (dtype, rope_parameters).
// from_json throws llmc::Error naming `origin` and the missing/invalid field; an unsupported
// architecture lists the supported ones (the table in model/arch.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/cpu/kernels.h"  // RopeConfig

namespace llmc {

struct ModelConfig {
  std::string architecture;  // e.g. "Qwen3ForCausalLM"
  std::string model_type;    // e.g. "qwen3"
  int vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 (and attention_bias: true)
  bool qk_norm = false;   // Qwen3
  std::string dtype;      // "bfloat16" ... as stored
  // Mixture of experts (arch rows with `moe`; 0 experts = dense). A layer l is sparse when
  // num_experts > 0, l is not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0.
  int num_experts = 0;               // num_local_experts (transformers 5) or num_experts (4)
  int num_experts_per_tok = 0;       // top-k
  bool norm_topk_prob = false;       // renormalise the top-k router probabilities to sum 1
  int moe_intermediate_size = 0;     // each routed expert's width
  int shared_expert_intermediate_size = 0;  // Qwen2-MoE shared expert (0: none)
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;  // layers with a dense MLP
  bool is_moe_layer(int layer) const;

  static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
};

}  // namespace llmc
