// model/arch.h — the table of supported decoder architectures, keyed by the HF
// "architectures" name in config.json. Everything that differs between Llama-style models is
// data here (biases, per-head q/k norms, tensor names); adding a Llama-like architecture
// (Mistral, Hunyuan-dense, ...) is one more row in arch.cpp.
#pragma once
#include <span>
#include <string>
#include <vector>

#include "model/linear.h"

namespace llmc {

// Linears that vLLM loads as one fused module (QKVParallelLinear, MergedColumnParallelLinear):
// their quantization must be all or none. `fused` is vLLM's module name inside a layer.
struct FusedGroup {
  const char* fused;      // "self_attn.qkv_proj"
  LinearSlot slots[3];
  int n_slots;
};

struct ArchSpec {
  const char* name;            // "Qwen3ForCausalLM"
  const char* model_type;      // "qwen3" (informational)
  bool qkv_bias;               // q/k/v projections always carry a bias (Qwen2)
  bool qk_norm;                // per-head RMSNorm of q and k before RoPE (Qwen3)
  bool tie_default;            // tie_word_embeddings when config.json does not say
  // Tensor names: "<layer_prefix><i>." + module, e.g. "model.layers.3.self_attn.q_proj".
  const char* layer_prefix;    // "model.layers."
  const char* embed;           // "model.embed_tokens.weight"
  const char* final_norm;      // "model.norm.weight"
  const char* lm_head;         // "lm_head" (module prefix; ".weight" appended)
  const char* input_norm;      // "input_layernorm.weight"
  const char* post_norm;       // "post_attention_layernorm.weight"
  const char* q_norm;          // "self_attn.q_norm.weight"
  const char* k_norm;          // "self_attn.k_norm.weight"
  std::span<const FusedGroup> fused;  // groups vLLM fuses (Llama-style: qkv_proj, gate_up_proj)
};

// nullptr when unknown.
const ArchSpec* find_arch(const std::string& name);
// Throws llmc::Error "<origin>: unsupported architecture X (supported: A, B, C)".
const ArchSpec& arch_for(const std::string& name, const std::string& origin);
std::vector<std::string> supported_architectures();

}  // namespace llmc
