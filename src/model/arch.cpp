#include "model/arch.h"

#include <iterator>

#include "core/error.h"

namespace llmc {
namespace {

constexpr ModuleName kLlamaAttention[] = {{ModuleRole::Q, "self_attn.q_proj"},
                                          {ModuleRole::K, "self_attn.k_proj"},
                                          {ModuleRole::V, "self_attn.v_proj"},
                                          {ModuleRole::O, "self_attn.o_proj"}};
constexpr ModuleName kLlamaMlp[] = {{ModuleRole::Gate, "gate_proj"},
                                    {ModuleRole::Up, "up_proj"},
                                    {ModuleRole::Down, "down_proj"}};

#define LLMC_LLAMA_NAMES                                                              \
  "model.layers.", "model.embed_tokens.weight", "model.norm.weight", "lm_head",       \
      "input_layernorm.weight", "post_attention_layernorm.weight",                     \
      "self_attn.q_norm.weight", "self_attn.k_norm.weight", kLlamaAttention, kLlamaMlp

// name, model_type, qkv_bias, qk_norm, tie_default, tensor names, modules, MoE names
constexpr ArchSpec kArchs[] = {
    {"LlamaForCausalLM", "llama", false, false, false, LLMC_LLAMA_NAMES},
    {"Qwen2ForCausalLM", "qwen2", true, false, false, LLMC_LLAMA_NAMES},
    {"Qwen3ForCausalLM", "qwen3", false, true, false, LLMC_LLAMA_NAMES},
    {"Qwen3MoeForCausalLM", "qwen3_moe", false, true, false, LLMC_LLAMA_NAMES, true, "mlp.gate",
     "mlp.experts.", "mlp.shared_expert.", "mlp.shared_expert_gate"},
    {"Qwen2MoeForCausalLM", "qwen2_moe", true, false, false, LLMC_LLAMA_NAMES, true, "mlp.gate",
     "mlp.experts.", "mlp.shared_expert.", "mlp.shared_expert_gate"},
};

#undef LLMC_LLAMA_NAMES

}  // namespace

const char* module_role_name(ModuleRole r) {
  static constexpr const char* kNames[] = {"q", "k", "v", "o", "gate", "up", "down", "router",
                                           "shared_gate"};
  return kNames[int(r)];
}

int BlockLayout::find(ModuleRole r, int expert) const {
  for (size_t i = 0; i < modules.size(); ++i)
    if (modules[i].role == r && modules[i].expert == expert) return int(i);
  return -1;
}

BlockLayout block_layout(const ArchSpec& arch, const ModelConfig& c, int layer) {
  BlockLayout L;
  const int64_t H = c.hidden_size;
  const int64_t QD = int64_t(c.num_heads) * c.head_dim, KD = int64_t(c.num_kv_heads) * c.head_dim;
  using Src = InputGroup::Source;
  auto group = [&](int stage, int expert, Src src) {
    L.groups.push_back({{}, stage, expert, src});
    return int(L.groups.size()) - 1;
  };
  auto add = [&](ModuleRole role, std::string name, int expert, int64_t out, int64_t in, int g,
                 const char* fused, bool quantize = true, bool bias = false) {
    L.groups[size_t(g)].members.push_back(int(L.modules.size()));
    L.modules.push_back({std::move(name), role, expert, out, in, g, fused, quantize, bias});
  };
  const int g_qkv = group(0, -1, Src::InputNorm), g_o = group(1, -1, Src::Attention);
  for (const ModuleName& m : arch.attention) {
    const bool qkv = m.role != ModuleRole::O;
    add(m.role, m.name, -1, m.role == ModuleRole::Q ? QD : qkv ? KD : H, qkv ? H : QD,
        qkv ? g_qkv : g_o, qkv ? "self_attn.qkv_proj" : "", true, qkv && c.qkv_bias);
  }
  // A gate/up/down MLP of width F: names "<prefix><gate_proj>", group `g_in` for gate/up.
  auto mlp = [&](const std::string& prefix, int expert, int64_t F, int g_in,
                 const std::string& fused_in, const std::string& fused_down) {
    const int g_down = group(3, expert >= 0 ? expert : -1, Src::Intermediate);
    for (const ModuleName& m : arch.mlp) {
      const bool down = m.role == ModuleRole::Down;
      add(m.role, prefix + m.name, expert, down ? H : F, down ? F : H, down ? g_down : g_in,
          (down ? fused_down : fused_in).c_str());
    }
  };
  if (!c.is_moe_layer(layer)) {
    mlp("mlp.", -1, c.intermediate_size, group(2, -1, Src::PostNorm), "mlp.gate_up_proj", "");
    return L;
  }
  L.num_experts = c.num_experts;
  L.top_k = c.num_experts_per_tok;
  L.norm_topk = c.norm_topk_prob;
  const int g_all = group(2, -1, Src::PostNorm);  // every token: router (+ shared expert)
  add(ModuleRole::Router, arch.router, -1, c.num_experts, H, g_all, "", false);
  for (int e = 0; e < c.num_experts; ++e)
    mlp(cat(arch.experts, e, "."), e, c.moe_intermediate_size, group(2, e, Src::PostNorm),
        "mlp.experts", "mlp.experts");
  if (c.shared_expert_intermediate_size > 0) {
    mlp(arch.shared_expert, kSharedExpert, c.shared_expert_intermediate_size, g_all,
        std::string(arch.shared_expert) + "gate_up_proj", "");
    add(ModuleRole::SharedGate, arch.shared_gate, kSharedExpert, 1, H, g_all, "", false);
  }
  return L;
}

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
