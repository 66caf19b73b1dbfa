#include "model/arch.h"

#include <iterator>

#include "core/error.h"

namespace llmc {
namespace {

#define LLMC_LLAMA_NAMES                                                              \
  "model.layers.", "model.embed_tokens.weight", "model.norm.weight", "lm_head",       \
      "input_layernorm.weight", "post_attention_layernorm.weight",                     \
      "self_attn.q_norm.weight", "self_attn.k_norm.weight"

// name, model_type, qkv_bias, qk_norm, tie_default, tensor names
constexpr ArchSpec kArchs[] = {
    {"LlamaForCausalLM", "llama", false, false, false, LLMC_LLAMA_NAMES},
    {"Qwen2ForCausalLM", "qwen2", true, false, false, LLMC_LLAMA_NAMES},
    {"Qwen3ForCausalLM", "qwen3", false, true, false, LLMC_LLAMA_NAMES},
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
