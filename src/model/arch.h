// model/arch.h — the table of supported decoder architectures, keyed by the HF
// "architectures" name in config.json, and the description of a decoder block as data.
//
// Everything that differs between the supported models is data here: biases, per-head q/k norms,
// tensor names, and the linear modules of a block (BlockLayout): their names and shapes, which of
// them read the same input (an InputGroup: one Hessian / one set of statistics per group; for a
// routed expert, the tokens routed to it), the true-sequential stage of each group, which modules
// vLLM loads as one fused module, and which stay dense by default (MoE routers). The engine
// (model.cpp), the quantization methods and the writer all iterate a block's modules from this
// description; nothing hard-wires a fixed list of linears. A module is addressed by its index in
// BlockLayout::modules (a LinearSlot value); in every layout the attention modules come first
// (LinearSlot::Q..O) and a dense MLP follows as Gate, Up, Down (so the named LinearSlot constants
// address a dense Llama-style block).
//
// Adding a Llama-like architecture (Mistral, ...) is one more row in arch.cpp; a MoE architecture
// sets `moe` and its expert / router / shared-expert names.
#pragma once
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/linear.h"

namespace llmc {

enum class ModuleRole : uint8_t { Q, K, V, O, Gate, Up, Down, Router, SharedGate };
const char* module_role_name(ModuleRole r);

// expert value of a module of the shared expert (Qwen2-MoE), which sees every token.
inline constexpr int kSharedExpert = -2;

// One linear module of a decoder block.
struct BlockModule {
  std::string name;        // HF module name inside the layer: "self_attn.q_proj",
                           // "mlp.experts.3.up_proj", "mlp.gate" (router)
  ModuleRole role = ModuleRole::Q;
  int expert = -1;         // routed expert index; -1 attention / dense MLP / router;
                           // kSharedExpert: the shared expert
  int64_t out = 0, in = 0;
  int group = 0;           // index into BlockLayout::groups
  std::string fused;       // vLLM module loading it together with others ("self_attn.qkv_proj",
                           // "mlp.gate_up_proj", "mlp.experts"): quantized all or none; "" none
  bool quantize = true;    // false: left dense unless asked (routers, the shared expert's gate)
  bool bias = false;       // always carries a bias (Qwen2 q/k/v)
};

// Modules that read the same input rows.
struct InputGroup {
  enum class Source : uint8_t {
    InputNorm,     // input_layernorm output (q/k/v)
    Attention,     // attention output (o)
    PostNorm,      // post_attention_layernorm output (MLP inputs; router, experts, shared expert)
    Intermediate,  // silu(gate) * up of the same (expert's) MLP (down)
  };
  std::vector<int> members;  // module indices
  int stage = 0;             // true-sequential stage: 0 q/k/v, 1 o, 2 MLP inputs, 3 down
  int expert = -1;           // >= 0: the rows are the tokens routed to this expert
  Source source = Source::InputNorm;
};

struct BlockLayout {
  std::vector<BlockModule> modules;
  std::vector<InputGroup> groups;
  int num_experts = 0, top_k = 0;  // 0 experts: a dense MLP
  bool norm_topk = false;
  bool moe() const { return num_experts > 0; }
  int size() const { return int(modules.size()); }
  const BlockModule& at(LinearSlot s) const { return modules.at(size_t(s)); }
  // Index of the module with this role (and expert), -1 when the block has none.
  int find(ModuleRole r, int expert = -1) const;
  static constexpr int kStages = 4;
};

struct ModuleName {
  ModuleRole role;
  const char* name;  // for experts: the name after "<experts><e>."
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
  std::span<const ModuleName> attention;  // q, k, v, o
  std::span<const ModuleName> mlp;        // gate, up, down of a dense MLP (and of each expert)
  // Mixture of experts (moe == false: the rest is unused).
  bool moe = false;
  const char* router = "";          // "mlp.gate"
  const char* experts = "";         // "mlp.experts." (+ "<e>." + mlp names)
  const char* shared_expert = "";   // "mlp.shared_expert." (+ mlp names), when configured
  const char* shared_gate = "";     // "mlp.shared_expert_gate"
};

// nullptr when unknown.
const ArchSpec* find_arch(const std::string& name);
// Throws llmc::Error "<origin>: unsupported architecture X (supported: A, B, C)".
const ArchSpec& arch_for(const std::string& name, const std::string& origin);
std::vector<std::string> supported_architectures();

// The linear modules of decoder layer `layer` (dense or sparse per cfg.is_moe_layer).
BlockLayout block_layout(const ArchSpec& arch, const ModelConfig& cfg, int layer);

}  // namespace llmc
