#include "model/arch.h"

#include <iterator>

#include "core/error.h"

namespace llmc {
namespace {

// vLLM's packed_modules_mapping of its Llama / Qwen2 / Qwen3 models.
constexpr FusedGroup kLlamaFused[] = {
    {"self_attn.qkv_proj", {LinearSlot::Q, LinearSlot::K, LinearSlot::V}, 3},
    {"mlp.gate_up_proj", {LinearSlot::Gate, LinearSlot::Up}, 2},
};

#define LLMC_LLAMA_NAMES                                                              \
  "model.layers.", "model.embed_tokens.weight", "model.norm.weight", "lm_head",       \
      "input_layernorm.weight", "post_attention_layernorm.weight",                     \
      "self_attn.q_norm.weight", "self_attn.k_norm.weight"

// name, model_type, qkv_bias, qk_norm, tie_default, tensor names, fused groups
constexpr ArchSpec kArchs[] = {
    {"LlamaForCausalLM", "llama", false, false, false, LLMC_LLAMA_NAMES, kLlamaFused},
    {"Qwen2ForCausalLM", "qwen2", true, false, false, LLMC_LLAMA_NAMES, kLlamaFused},
    {"Qwen3ForCausalLM", "qwen3", false, true, false, LLMC_LLAMA_NAMES, kLlamaFused},
};

#undef LLMC_LLAMA_NAMES

}  // namespace

const ArchSpec* find_arch(const std::string& name) {
  for (const ArchSpec& a : kArchs)
    if (name == a.name) return &a;
  return nullptr;
}

std::vector<std::string> supported_architectures() {
  std::vector<std::string> v;
  for (const ArchSpec& a : kArchs) v.emplace_back(a.name);
  return v;
}

const ArchSpec& arch_for(const std::string& name, const std::string& origin) {
  if (const ArchSpec* a = find_arch(name)) return *a;
  std::string list;
  for (const ArchSpec& a : kArchs) list += (list.empty() ? "" : ", ") + std::string(a.name);
  fail(origin, ": unsupported architecture \"", name, "\" (supported: ", list, ")");
}

}  // namespace llmc
