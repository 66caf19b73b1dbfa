#include "model/config.h"

#include <cmath>

#include "core/error.h"
#include "model/arch.h"

namespace llmc {
namespace {

using nlohmann::json;

struct Fields {
  const json& j;
  const std::string& origin;

  [[noreturn]] void bad(const std::string& field, const std::string& what) const {
    fail(origin, ": field \"", field, "\" ", what);
  }
  bool has(const json& o, const char* key) const {
    return o.is_object() && o.contains(key) && !o.at(key).is_null();
  }
  int64_t integer(const json& o, const char* key, const std::string& path, int64_t min) const {
    if (!has(o, key)) bad(path, "is missing");
    const json& v = o.at(key);
    if (!v.is_number_integer()) bad(path, "must be an integer, got " + v.dump());
    const int64_t x = v.get<int64_t>();
    if (x < min || x > (int64_t(1) << 31) - 1) bad(path, "is out of range: " + v.dump());
    return x;
  }
  int64_t integer(const char* key, int64_t min) const { return integer(j, key, key, min); }
  int64_t integer_or(const char* key, int64_t def, int64_t min) const {
    return has(j, key) ? integer(key, min) : def;
  }
  double number(const json& o, const char* key, const std::string& path, double def,
                bool positive) const {
    if (!has(o, key)) return def;
    const json& v = o.at(key);
    if (!v.is_number()) bad(path, "must be a number, got " + v.dump());
    const double x = v.get<double>();
    if (!std::isfinite(x) || (positive && x <= 0)) bad(path, "is out of range: " + v.dump());
    return x;
  }
  bool boolean(const char* key, bool def) const {
    if (!has(j, key)) return def;
    if (!j.at(key).is_boolean()) bad(key, "must be true or false, got " + j.at(key).dump());
    return j.at(key).get<bool>();
  }
  std::string string_or(const json& o, const char* key, const std::string& path,
                        const std::string& def) const {
    if (!has(o, key)) return def;
    if (!o.at(key).is_string()) bad(path, "must be a string, got " + o.at(key).dump());
    return o.at(key).get<std::string>();
  }
};

void parse_rope(const Fields& f, RopeConfig* rope) {
  const json& j = f.j;
  // v5: rope_parameters {rope_theta, rope_type, factor, ...}; v4: rope_theta + rope_scaling.
  const bool v5 = f.has(j, "rope_parameters");
  const char* group = v5 ? "rope_parameters" : "rope_scaling";
  const json empty = json::object();
  const json& p = f.has(j, group) ? j.at(group) : empty;
  if (!p.is_object()) f.bad(group, "must be an object, got " + p.dump());
  const std::string g = std::string(group) + ".";
  rope->theta = f.number(j, "rope_theta", "rope_theta", 10000.0, true);
  if (v5) rope->theta = f.number(p, "rope_theta", g + "rope_theta", rope->theta, true);
  std::string type = f.string_or(p, "type", g + "type", "default");
  type = f.string_or(p, "rope_type", g + "rope_type", type);
  rope->type = type;
  if (type == "default") return;
  if (type != "linear" && type != "llama3")
    f.bad(g + "rope_type", "\"" + type + "\" is not supported (supported: default, linear, llama3)");
  if (!f.has(p, "factor")) f.bad(g + "factor", "is missing");
  rope->factor = f.number(p, "factor", g + "factor", 1.0, true);
  if (type == "llama3") {
    rope->low_freq_factor = f.number(p, "low_freq_factor", g + "low_freq_factor", 1.0, true);
    rope->high_freq_factor = f.number(p, "high_freq_factor", g + "high_freq_factor", 4.0, true);
    if (rope->high_freq_factor <= rope->low_freq_factor)
      f.bad(g + "high_freq_factor", "must be greater than low_freq_factor");
    rope->original_max_position = int(
        f.integer(p, "original_max_position_embeddings", g + "original_max_position_embeddings", 1));
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) fail(origin, ": config is not a JSON object");
  const Fields f{j, origin};
  ModelConfig c;
  if (!f.has(j, "architectures")) f.bad("architectures", "is missing");
  const json& archs = j.at("architectures");
  if (!archs.is_array() || archs.empty() || !archs[0].is_string())
    f.bad("architectures", "must be a non-empty list of names, got " + archs.dump());
  c.architecture = archs[0].get<std::string>();
  const ArchSpec& arch = arch_for(c.architecture, origin);
  c.model_type = f.string_or(j, "model_type", "model_type", arch.model_type);

  c.vocab_size = int(f.integer("vocab_size", 1));
  c.hidden_size = int(f.integer("hidden_size", 1));
  c.intermediate_size = int(f.integer("intermediate_size", 1));
  c.num_layers = int(f.integer("num_hidden_layers", 1));
  c.num_heads = int(f.integer("num_attention_heads", 1));
  c.num_kv_heads = int(f.integer_or("num_key_value_heads", c.num_heads, 1));
  if (c.num_heads % c.num_kv_heads != 0)
    f.bad("num_key_value_heads", cat("(", c.num_kv_heads, ") must divide num_attention_heads (",
                                     c.num_heads, ")"));
  if (f.has(j, "head_dim")) {
    c.head_dim = int(f.integer("head_dim", 2));
  } else {
    if (c.hidden_size % c.num_heads != 0)
      f.bad("head_dim", "is missing and hidden_size is not a multiple of num_attention_heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2) f.bad("head_dim", cat("must be even for rotary embeddings, got ", c.head_dim));
  c.max_position_embeddings = int(f.integer("max_position_embeddings", 1));
  c.rms_norm_eps = f.number(j, "rms_norm_eps", "rms_norm_eps", 1e-6, true);
  parse_rope(f, &c.rope);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", arch.tie_default);
  c.qkv_bias = arch.qkv_bias || f.boolean("attention_bias", false);
  c.qk_norm = arch.qk_norm;
  c.dtype = f.string_or(j, "torch_dtype", "torch_dtype", "");
  c.dtype = f.string_or(j, "dtype", "dtype", c.dtype);
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    const std::string act = f.string_or(j, key, key, "silu");
    if (act != "silu") f.bad(key, "\"" + act + "\" is not supported (only silu / SwiGLU)");
  }
  if (f.boolean("use_sliding_window", false))
    f.bad("use_sliding_window", "is true: sliding-window attention is not supported");
  if (arch.moe) {
    // transformers 5 writes num_local_experts, 4 wrote num_experts: either is accepted.
    const char* ek = f.has(j, "num_local_experts") ? "num_local_experts" : "num_experts";
    if (f.has(j, "num_local_experts") && f.has(j, "num_experts") &&
        j.at("num_local_experts") != j.at("num_experts"))
      f.bad("num_experts", "disagrees with num_local_experts");
    c.num_experts = int(f.integer(ek, 1));
    c.num_experts_per_tok = int(f.integer("num_experts_per_tok", 1));
    if (c.num_experts_per_tok > c.num_experts)
      f.bad("num_experts_per_tok", cat("(", c.num_experts_per_tok, ") exceeds ", ek, " (",
                                       c.num_experts, ")"));
    c.norm_topk_prob = f.boolean("norm_topk_prob", false);
    c.moe_intermediate_size = int(f.integer("moe_intermediate_size", 1));
    c.shared_expert_intermediate_size = int(f.integer_or("shared_expert_intermediate_size", 0, 0));
    c.decoder_sparse_step = int(f.integer_or("decoder_sparse_step", 1, 1));
    if (f.has(j, "mlp_only_layers")) {
      const json& m = j.at("mlp_only_layers");
      if (!m.is_array()) f.bad("mlp_only_layers", "must be a list of layer indices, got " + m.dump());
      for (const json& v : m) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= c.num_layers)
          f.bad("mlp_only_layers", "holds " + v.dump() + ", not a layer index");
        c.mlp_only_layers.push_back(v.get<int>());
      }
    }
  }
  return c;
}

bool ModelConfig::is_moe_layer(int layer) const {
  if (num_experts <= 0) return false;
  for (int l : mlp_only_layers)
    if (l == layer) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

}  // namespace llmc
