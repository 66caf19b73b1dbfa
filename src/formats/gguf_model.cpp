// formats/gguf_model.cpp — HF model <-> GGUF (contracts in gguf_model.h).
#include "formats/gguf_model.h"

#include <chrono>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/progress.h"
#include "core/threads.h"
#include "formats/gguf.h"

namespace llmc {

using nlohmann::json;

namespace {

// ---- the tables ----

// "{L}" stands for the block index.
struct NameRow {
  const char* hf;
  const char* gguf;
  GgufRole role;
};
constexpr NameRow kNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight", GgufRole::Embedding},
    {"model.norm.weight", "output_norm.weight", GgufRole::Norm},
    {"lm_head.weight", "output.weight", GgufRole::Output},
    {"model.layers.{L}.input_layernorm.weight", "blk.{L}.attn_norm.weight", GgufRole::Norm},
    {"model.layers.{L}.post_attention_layernorm.weight", "blk.{L}.ffn_norm.weight", GgufRole::Norm},
    {"model.layers.{L}.self_attn.q_proj.weight", "blk.{L}.attn_q.weight", GgufRole::AttnQ},
    {"model.layers.{L}.self_attn.k_proj.weight", "blk.{L}.attn_k.weight", GgufRole::AttnK},
    {"model.layers.{L}.self_attn.v_proj.weight", "blk.{L}.attn_v.weight", GgufRole::AttnV},
    {"model.layers.{L}.self_attn.o_proj.weight", "blk.{L}.attn_output.weight", GgufRole::AttnOutput},
    {"model.layers.{L}.self_attn.q_proj.bias", "blk.{L}.attn_q.bias", GgufRole::AttnQ},
    {"model.layers.{L}.self_attn.k_proj.bias", "blk.{L}.attn_k.bias", GgufRole::AttnK},
    {"model.layers.{L}.self_attn.v_proj.bias", "blk.{L}.attn_v.bias", GgufRole::AttnV},
    {"model.layers.{L}.self_attn.q_norm.weight", "blk.{L}.attn_q_norm.weight", GgufRole::Norm},
    {"model.layers.{L}.self_attn.k_norm.weight", "blk.{L}.attn_k_norm.weight", GgufRole::Norm},
    {"model.layers.{L}.mlp.gate_proj.weight", "blk.{L}.ffn_gate.weight", GgufRole::FfnGate},
    {"model.layers.{L}.mlp.up_proj.weight", "blk.{L}.ffn_up.weight", GgufRole::FfnUp},
    {"model.layers.{L}.mlp.down_proj.weight", "blk.{L}.ffn_down.weight", GgufRole::FfnDown},
};

struct ArchRow {
  const char* model_type;   // config.json model_type
  const char* gguf;         // general.architecture
  const char* hf_arch;      // config.json architectures[0]
  bool permute_qk;          // llama.cpp's interleaved RoPE for this arch
};
constexpr ArchRow kArchs[] = {
    {"qwen3", "qwen3", "Qwen3ForCausalLM", false},
    {"qwen2", "qwen2", "Qwen2ForCausalLM", false},
    {"llama", "llama", "LlamaForCausalLM", true},
};

// tokenizer.ggml.pre <-> the pre-tokenizer Split regex (llama.cpp's names).
struct PreRow {
  const char* pre;
  const char* regex;
  bool nfc;  // HF tokenizer.json of this family normalizes NFC
};
constexpr PreRow kPres[] = {
    {"qwen2",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
     "\\s+(?!\\S)|\\s+",
     true},
    {"llama-bpe",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     false},
};

enum TokenType : int32_t { kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5 };

// Splits "<prefix>N.<rest>" into N and "<prefix>{L}.<rest>"; returns -1 when it is not one.
int split_layer(const std::string& name, const std::string& prefix, std::string* templ) {
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  size_t i = prefix.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j - i > 6 || j >= name.size() || name[j] != '.') return -1;
  *templ = prefix + "{L}" + name.substr(j);
  return std::stoi(name.substr(i, j - i));
}

std::string map_name(const std::string& name, bool to_gguf, int* layer_out = nullptr, GgufRole* role = nullptr) {
  std::string templ = name;
  const int layer = split_layer(name, to_gguf ? "model.layers." : "blk.", &templ);
  if (layer_out) *layer_out = layer;
  for (const NameRow& r : kNames) {
    const std::string from = to_gguf ? r.hf : r.gguf, to = to_gguf ? r.gguf : r.hf;
    if ((layer < 0 ? name : templ) != from) continue;
    if (role) *role = r.role;
    const size_t p = to.find("{L}");
    return p == std::string::npos ? to : to.substr(0, p) + std::to_string(layer) + to.substr(p + 3);
  }
  return "";
}

const ArchRow* arch_by_gguf(const std::string& a) {
  for (const ArchRow& r : kArchs)
    if (a == r.gguf) return &r;
  return nullptr;
}

std::string arch_list() {
  std::string s;
  for (const ArchRow& r : kArchs) s += (s.empty() ? "" : ", ") + std::string(r.model_type);
  return s;
}

// ---- Q/K row permutation (llama): HF row (h, j, i) <-> GGUF row (h, i, j), j in {0,1}, i < hd/2.
void permute_rows(const uint8_t* src, uint8_t* dst, int64_t rows, size_t row_bytes, int64_t n_head, bool to_gguf) {
  const int64_t hd = rows / n_head, half = hd / 2;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t g = h * hd + 2 * i + j, f = h * hd + j * half + i;
        std::memcpy(dst + (to_gguf ? g : f) * row_bytes, src + (to_gguf ? f : g) * row_bytes, row_bytes);
      }
}

// ---- config helpers ----
int64_t cfg_int(const json& c, const char* key, int64_t dflt, const std::string& origin, bool required = false) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) {
    if (required) fail(origin, ": config.json has no '", key, "'");
    return dflt;
  }
  if (!it->is_number_integer()) fail(origin, ": config.json '", key, "' must be an integer");
  return it->get<int64_t>();
}

double rope_theta(const json& c, const std::string& origin) {
  if (auto rp = c.find("rope_parameters"); rp != c.end() && rp->is_object()) {
    const std::string type = rp->value("rope_type", "default");
    if (type != "default") fail(origin, ": rope_type '", type, "' cannot be written to GGUF by llmc (only default RoPE)");
    if (rp->contains("rope_theta")) return (*rp)["rope_theta"].get<double>();
  }
  if (auto rs = c.find("rope_scaling"); rs != c.end() && !rs->is_null())
    fail(origin, ": rope_scaling cannot be written to GGUF by llmc (only default RoPE)");
  return c.value("rope_theta", 10000.0);
}

std::string token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return "";
}

// tokenizer.json + tokenizer_config.json -> tokenizer.ggml.* keys.
void tokenizer_kv(const Checkpoint& in, int64_t vocab_size, std::vector<std::pair<std::string, GgufValue>>& kv) {
  const std::string origin = (in.path / "tokenizer.json").string();
  auto it = in.aux_files.find("tokenizer.json");
  if (it == in.aux_files.end()) fail(in.path.string(), ": no tokenizer.json (a GGUF file carries the tokenizer)");
  json t;
  try {
    t = json::parse(it->second);
  } catch (const json::exception& e) {
    fail(origin, ": not valid JSON: ", e.what());
  }
  const json& model = t.value("model", json::object());
  if (model.value("type", "") != "BPE" || !model.contains("vocab") || !model.contains("merges"))
    fail(origin, ": only byte-level BPE tokenizers can be written to GGUF (model.type BPE with vocab and merges)");
  // The pre-tokenizer regex names the llama.cpp pre-tokenizer.
  std::string regex;
  const json& pt = t.value("pre_tokenizer", json::object());
  if (pt.is_object())
    for (const json& p : pt.value("pretokenizers", json::array()))
      if (p.value("type", "") == "Split" && p.contains("pattern")) regex = p["pattern"].value("Regex", "");
  const PreRow* pre = nullptr;
  for (const PreRow& r : kPres)
    if (regex == r.regex) pre = &r;
  if (!pre) fail(origin, ": the pre-tokenizer regex is not one llama.cpp knows by name (qwen2, llama-bpe)");
  int64_t n = vocab_size;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  auto grow = [&](int64_t id) {
    if (id < 0 || id > (int64_t(1) << 24)) fail(origin, ": token id ", id, " out of range");
    if (id >= n) n = id + 1;
    if (int64_t(tokens.size()) < n) {
      for (int64_t k = int64_t(tokens.size()); k < n; ++k) tokens.push_back(cat("[PAD", k, "]"));
      types.resize(size_t(n), kUnused);
    }
  };
  grow(n - 1);
  std::map<std::string, int64_t> ids;
  for (const auto& [tok, id] : model["vocab"].items()) {
    const int64_t i = id.get<int64_t>();
    grow(i);
    tokens[size_t(i)] = tok;
    types[size_t(i)] = kNormal;
    ids[tok] = i;
  }
  for (const json& a : t.value("added_tokens", json::array())) {
    const int64_t i = a.at("id").get<int64_t>();
    grow(i);
    tokens[size_t(i)] = a.at("content").get<std::string>();
    types[size_t(i)] = a.value("special", false) ? kControl : kUserDefined;
    ids[tokens[size_t(i)]] = i;
  }
  std::vector<std::string> merges;
  for (const json& m : model["merges"]) {
    if (m.is_string()) merges.push_back(m.get<std::string>());
    else if (m.is_array() && m.size() == 2) merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    else fail(origin, ": model.merges entries must be \"a b\" or [a, b]");
  }
  kv.emplace_back("tokenizer.ggml.model", GgufValue::str("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", GgufValue::str(pre->pre));
  kv.emplace_back("tokenizer.ggml.tokens", GgufValue::str_array(tokens));
  kv.emplace_back("tokenizer.ggml.token_type", GgufValue::i32_array(types));
  kv.emplace_back("tokenizer.ggml.merges", GgufValue::str_array(merges));
  json tc = json::object();
  if (auto c = in.aux_files.find("tokenizer_config.json"); c != in.aux_files.end()) {
    try {
      tc = json::parse(c->second);
    } catch (const json::exception& e) {
      fail((in.path / "tokenizer_config.json").string(), ": not valid JSON: ", e.what());
    }
  }
  auto special = [&](const char* tc_key, const char* cfg_key, const char* gguf_key) {
    int64_t id = -1;
    if (tc.contains(tc_key)) {
      auto f = ids.find(token_text(tc[tc_key]));
      if (f != ids.end()) id = f->second;
    }
    if (id < 0 && in.config.contains(cfg_key) && in.config[cfg_key].is_number_integer())
      id = in.config[cfg_key].get<int64_t>();
    if (id >= 0) kv.emplace_back(gguf_key, GgufValue::u32(uint32_t(id)));
  };
  special("bos_token", "bos_token_id", "tokenizer.ggml.bos_token_id");
  special("eos_token", "eos_token_id", "tokenizer.ggml.eos_token_id");
  special("pad_token", "pad_token_id", "tokenizer.ggml.padding_token_id");
  kv.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(tc.value("add_bos_token", false)));
  std::string tmpl;
  if (tc.contains("chat_template") && tc["chat_template"].is_string()) tmpl = tc["chat_template"].get<std::string>();
  if (auto c = in.aux_files.find("chat_template.jinja"); tmpl.empty() && c != in.aux_files.end()) tmpl = c->second;
  if (!tmpl.empty()) kv.emplace_back("tokenizer.chat_template", GgufValue::str(tmpl));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

GgufTensorSite gguf_tensor_site(const json& config, const TensorInfo& t) {
  const bool tied = config.value("tie_word_embeddings", false);
  GgufTensorSite s;
  s.hf_name = t.name;
  s.gguf_name = map_name(t.name, true, &s.layer, &s.role);
  s.n_layers = int(config.value("num_hidden_layers", 0));
  s.shape = t.shape;
  s.dtype = t.dtype;
  s.output_role = s.gguf_name == "output.weight" || (tied && s.gguf_name == "token_embd.weight");
  s.skipped = tied && t.name == "lm_head.weight";
  return s;
}

std::string gguf_tensor_name(const std::string& hf_name, GgufRole* role) { return map_name(hf_name, true, nullptr, role); }
std::string hf_tensor_name_from_gguf(const std::string& gguf_name) { return map_name(gguf_name, false); }

const char* gguf_arch_for_config(const json& config, const std::string& origin) {
  const std::string mt = config.value("model_type", "");
  for (const ArchRow& r : kArchs)
    if (mt == r.model_type) return r.gguf;
  fail(origin, ": model_type '", mt, "' cannot be written to GGUF (supported: ", arch_list(), ")");
}

// ---------------------------------------------------------------- writer

GgufWriteStats write_gguf_model(const Checkpoint& in, const std::filesystem::path& out, const GgufWriteOptions& o) {
  const double t0 = now_s();
  const std::string origin = in.path.string();
  const json& c = in.config;
  const std::string arch = gguf_arch_for_config(c, origin);
  const ArchRow& ar = *arch_by_gguf(arch);
  const int64_t hidden = cfg_int(c, "hidden_size", 0, origin, true);
  const int64_t n_layers = cfg_int(c, "num_hidden_layers", 0, origin, true);
  const int64_t n_head = cfg_int(c, "num_attention_heads", 0, origin, true);
  const int64_t n_kv = cfg_int(c, "num_key_value_heads", n_head, origin);
  if (n_head <= 0 || n_kv <= 0 || hidden <= 0) fail(origin, ": config.json head counts / hidden_size must be positive");
  const int64_t head_dim = cfg_int(c, "head_dim", hidden / n_head, origin);

  std::vector<std::pair<std::string, GgufValue>> kv;
  kv.emplace_back("general.architecture", GgufValue::str(arch));
  kv.emplace_back("general.name", GgufValue::str(in.path.filename().string()));
  kv.emplace_back("general.file_type", GgufValue::u32(uint32_t(o.file_type)));
  auto key = [&](const std::string& k) { return arch + "." + k; };
  kv.emplace_back(key("context_length"), GgufValue::u32(uint32_t(cfg_int(c, "max_position_embeddings", 4096, origin))));
  kv.emplace_back(key("embedding_length"), GgufValue::u32(uint32_t(hidden)));
  kv.emplace_back(key("block_count"), GgufValue::u32(uint32_t(n_layers)));
  kv.emplace_back(key("feed_forward_length"), GgufValue::u32(uint32_t(cfg_int(c, "intermediate_size", 0, origin, true))));
  kv.emplace_back(key("attention.head_count"), GgufValue::u32(uint32_t(n_head)));
  kv.emplace_back(key("attention.head_count_kv"), GgufValue::u32(uint32_t(n_kv)));
  kv.emplace_back(key("attention.key_length"), GgufValue::u32(uint32_t(head_dim)));
  kv.emplace_back(key("attention.value_length"), GgufValue::u32(uint32_t(head_dim)));
  kv.emplace_back(key("rope.dimension_count"), GgufValue::u32(uint32_t(head_dim)));
  kv.emplace_back(key("rope.freq_base"), GgufValue::f32(float(rope_theta(c, origin))));
  kv.emplace_back(key("attention.layer_norm_rms_epsilon"), GgufValue::f32(float(c.value("rms_norm_eps", 1e-6))));
  const int64_t vocab = cfg_int(c, "vocab_size", 0, origin, true);
  kv.emplace_back(key("vocab_size"), GgufValue::u32(uint32_t(vocab)));
  tokenizer_kv(in, vocab, kv);

  // Plan every tensor (names and types checked before any data is written).
  struct Plan {
    TensorInfo info;
    GgufTensorSite site;
    const GgmlTypeTraits* type;
    int64_t permute_heads = 0;
  };
  std::vector<Plan> plans;
  bool quantized = false;
  for (const TensorInfo& t : in.tensors->list()) {
    Plan p;
    p.info = t;
    p.site = gguf_tensor_site(c, t);
    if (p.site.skipped) continue;
    if (p.site.gguf_name.empty())
      fail(origin, ": tensor '", t.name, "' has no GGUF name (llmc maps the ", arch, " tensors of docs/formats.md)");
    if (t.shape.empty() || t.shape.size() > 2)
      fail(origin, ": tensor '", t.name, "': shape ", shape_str(t.shape), " is not 1-D or 2-D");
    if (!dtype_traits(t.dtype).is_float) fail(origin, ": tensor '", t.name, "' is not a float tensor");
    const GgmlType gt = t.shape.size() == 1 ? GgmlType::F32 : o.choose(p.site);
    p.type = &ggml_traits(gt);
    if (t.shape.back() % p.type->block_size != 0)
      fail(origin, ": tensor '", t.name, "': rows of ", t.shape.back(), " values are not a multiple of the ",
           p.type->name, " block size ", p.type->block_size);
    quantized |= p.type->block_size > 1;
    if (ar.permute_qk) {
      if (p.site.role == GgufRole::AttnQ) p.permute_heads = n_head;
      if (p.site.role == GgufRole::AttnK) p.permute_heads = n_kv;
      if (p.permute_heads && t.shape[0] % (2 * p.permute_heads) != 0)
        fail(origin, ": tensor '", t.name, "': ", t.shape[0], " rows do not split into ", p.permute_heads, " heads");
    }
    plans.push_back(std::move(p));
  }
  if (quantized) kv.emplace_back("general.quantization_version", GgufValue::u32(2));
  std::vector<GgufTensorDecl> decls;
  for (const Plan& p : plans) {
    GgufTensorDecl d{p.site.gguf_name, uint32_t(p.type->type), {}};
    for (auto it = p.info.shape.rbegin(); it != p.info.shape.rend(); ++it) d.ne.push_back(uint64_t(*it));
    decls.push_back(std::move(d));
  }
  GgufWriteStats st;
  if (o.dry_run) {  // the size only: nothing is read or written
    st.bytes = gguf_file_bytes(kv, decls);
    for (const Plan& p : plans) {
      st.type_counts[p.type->name]++;
      st.types[p.site.gguf_name] = p.type->name;
    }
    st.tensors = plans.size();
    st.seconds = now_s() - t0;
    return st;
  }
  GgufWriter w(out, kv, decls);
  Progress prog("gguf", plans.size(), "tensors");
  for (const Plan& p : plans) {
    const int64_t rows = p.info.shape.size() == 1 ? 1 : p.info.shape[0];
    const int64_t cols = p.info.shape.back();
    const std::vector<uint8_t>* pre = o.encoded && p.type->block_size > 1 ? o.encoded(p.site, p.type->type) : nullptr;
    if (pre) {
      const uint64_t row_bytes = ggml_row_bytes(p.type->type, uint64_t(cols));
      LLMC_CHECK(pre->size() == row_bytes * uint64_t(rows), p.site.gguf_name, ": ", pre->size(),
                 " pre-encoded bytes, expected ", row_bytes * uint64_t(rows));
      std::vector<uint8_t> y;
      if (p.permute_heads) {
        y.resize(pre->size());
        permute_rows(pre->data(), y.data(), rows, row_bytes, p.permute_heads, true);
      }
      w.data(p.site.gguf_name, y.empty() ? pre->data() : y.data(), pre->size());
      st.type_counts[p.type->name]++;
      st.types[p.site.gguf_name] = p.type->name;
      ++st.tensors;
      if (o.progress) prog.step();
      continue;
    }
    const TensorRef ref = in.tensors->get(p.info.name);
    std::vector<float> x = ref.to_f32();
    if (p.permute_heads) {
      std::vector<float> y(x.size());
      permute_rows(reinterpret_cast<const uint8_t*>(x.data()), reinterpret_cast<uint8_t*>(y.data()), rows,
                   size_t(cols) * 4, p.permute_heads, true);
      x.swap(y);
    }
    const float* imp = o.importance ? o.importance(p.site) : nullptr;
    const uint64_t row_bytes = ggml_row_bytes(p.type->type, uint64_t(cols));
    std::vector<uint8_t> q(row_bytes * uint64_t(rows));
    const GgmlTypeTraits* tt = p.type;
    if (tt->block_size == 1) {
      tt->encode(x.data(), nullptr, int64_t(x.size()), q.data());
    } else {
      parallel_for(0, size_t(rows), 1, [&](size_t lo, size_t hi) {
        std::vector<float> wrow(o.importance_times_magnitude && imp ? size_t(cols) : 0);
        for (size_t r = lo; r < hi; ++r) {
          const float* xr = x.data() + r * size_t(cols);
          const float* wr = imp;
          if (!wrow.empty()) {  // imp_j * sqrt(sigma2 + x_j^2), sigma2 = 2 mean(x^2) of the row
            double s2 = 0;
            for (int64_t j = 0; j < cols; ++j) s2 += double(xr[j]) * xr[j];
            const float sigma2 = float(2 * s2 / double(cols));
            for (int64_t j = 0; j < cols; ++j) wrow[size_t(j)] = imp[j] * std::sqrt(sigma2 + xr[j] * xr[j]);
            wr = wrow.data();
          }
          tt->encode(xr, wr, cols, q.data() + r * row_bytes);
        }
      });
    }
    w.data(p.site.gguf_name, q.data(), q.size());
    st.type_counts[tt->name]++;
    st.types[p.site.gguf_name] = tt->name;
    ++st.tensors;
    if (o.progress) prog.step();
  }
  w.finish();
  prog.finish();
  st.bytes = w.bytes_written();
  st.seconds = now_s() - t0;
  return st;
}

// ---------------------------------------------------------------- reader

namespace {

class GgufTensors : public TensorReader {
 public:
  GgufTensors(std::shared_ptr<GgufFile> f, bool permute, int64_t n_head, int64_t n_kv)
      : f_(std::move(f)), n_head_(n_head), n_kv_(n_kv) {
    for (const GgufTensorInfo& t : f_->header().tensors) {
      Entry e;
      e.gguf = &t;
      GgufRole role = GgufRole::Norm;
      const std::string hf = map_name(t.name, false, nullptr, &role);
      if (hf.empty()) fail(f_->origin(), ": tensor '", t.name, "' is not one llmc reads (see docs/formats.md)");
      if (t.ne.size() > 2) fail(f_->origin(), ": tensor '", t.name, "' has ", t.ne.size(), " dimensions");
      e.info.name = hf;
      const GgmlType gt = GgmlType(t.type);
      e.info.dtype = gt == GgmlType::F16 ? DType::F16 : gt == GgmlType::BF16 ? DType::BF16 : DType::F32;
      for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it) e.info.shape.push_back(int64_t(*it));
      e.info.nbytes = t.numel() * dtype_size(e.info.dtype);
      if (permute && t.ne.size() == 2) {
        if (role == GgufRole::AttnQ) e.permute_heads = n_head_;
        if (role == GgufRole::AttnK) e.permute_heads = n_kv_;
        if (e.permute_heads && (e.info.shape[0] % (2 * e.permute_heads)) != 0)
          fail(f_->origin(), ": tensor '", t.name, "' rows do not split into ", e.permute_heads, " heads");
      }
      index_[hf] = entries_.size();
      infos_.push_back(e.info);
      entries_.push_back(e);
    }
  }
  const std::vector<TensorInfo>& list() const override { return infos_; }
  bool has(const std::string& name) const override { return index_.count(name) != 0; }
  std::string origin() const override { return f_->origin(); }
  TensorRef get(const std::string& name) const override {
    auto it = index_.find(name);
    if (it == index_.end()) fail(origin(), ": no tensor named '", name, "'");
    const Entry& e = entries_[it->second];
    TensorRef r;
    r.info = e.info;
    const GgmlTypeTraits& tt = *ggml_type_by_id(e.gguf->type);
    const uint8_t* src = f_->data(*e.gguf);
    if (tt.block_size == 1) {  // F32 / F16 / BF16: the stored bytes
      if (!e.permute_heads) {
        r.data = src;
        r.keepalive = f_;
        return r;
      }
      auto buf = std::make_shared<std::vector<uint8_t>>(e.info.nbytes);
      permute_rows(src, buf->data(), e.info.shape[0], size_t(e.info.shape[1]) * dtype_size(e.info.dtype), e.permute_heads,
                   false);
      r.data = buf->data();
      r.keepalive = buf;
      return r;
    }
    const int64_t cols = int64_t(e.gguf->ne[0]), rows = int64_t(e.gguf->numel() / e.gguf->ne[0]);
    auto y = std::make_shared<std::vector<float>>(size_t(rows * cols));
    ggml_decode_rows(tt, src, rows, cols, y->data());
    if (e.permute_heads) {
      auto z = std::make_shared<std::vector<float>>(y->size());
      permute_rows(reinterpret_cast<const uint8_t*>(y->data()), reinterpret_cast<uint8_t*>(z->data()), rows,
                   size_t(cols) * 4, e.permute_heads, false);
      y = z;
    }
    r.data = reinterpret_cast<const uint8_t*>(y->data());
    r.keepalive = y;
    return r;
  }

 private:
  struct Entry {
    const GgufTensorInfo* gguf = nullptr;
    TensorInfo info;
    int64_t permute_heads = 0;
  };
  std::shared_ptr<GgufFile> f_;
  int64_t n_head_, n_kv_;
  std::vector<Entry> entries_;
  std::vector<TensorInfo> infos_;
  std::map<std::string, size_t> index_;
};

const std::vector<GgufValue>& array_of(const GgufFile& f, const std::string& key, GgufType elem) {
  const GgufValue* v = f.header().find(key);
  if (!v) fail(f.origin(), ": missing metadata key '", key, "'");
  if (v->type != GgufType::ARRAY || v->elem != elem)
    fail(f.origin(), ": metadata key '", key, "' must be an array of ", gguf_type_name(elem));
  return v->items;
}

// tokenizer.ggml.* -> tokenizer.json + tokenizer_config.json texts.
void rebuild_tokenizer(const GgufFile& f, Checkpoint& c) {
  const std::string model = f.get_str("tokenizer.ggml.model");
  if (model != "gpt2") fail(f.origin(), ": tokenizer.ggml.model '", model, "' is not supported (llmc reads gpt2 BPE)");
  const std::string pre = f.header().find("tokenizer.ggml.pre") ? f.get_str("tokenizer.ggml.pre") : "default";
  const PreRow* row = nullptr;
  for (const PreRow& r : kPres)
    if (pre == r.pre) row = &r;
  if (!row) fail(f.origin(), ": tokenizer.ggml.pre '", pre, "' is not supported (llmc reads qwen2, llama-bpe)");
  const auto& tokens = array_of(f, "tokenizer.ggml.tokens", GgufType::STRING);
  const GgufValue* tt = f.header().find("tokenizer.ggml.token_type");
  if (tt && (tt->type != GgufType::ARRAY || tt->elem != GgufType::I32 || tt->items.size() != tokens.size()))
    fail(f.origin(), ": tokenizer.ggml.token_type must be an int32 array as long as tokenizer.ggml.tokens");
  const auto& merges = array_of(f, "tokenizer.ggml.merges", GgufType::STRING);
  json vocab = json::object(), added = json::array(), jm = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t type = tt ? tt->items[i].i : int64_t(kNormal);
    if (type == kUnused) continue;
    vocab[tokens[i].s] = i;
    if (type == kControl || type == kUserDefined)
      added.push_back({{"id", i}, {"content", tokens[i].s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", type != kControl}, {"special", type == kControl}});
  }
  for (const GgufValue& m : merges) {
    const size_t sp = m.s.find(' ');
    if (sp == std::string::npos) fail(f.origin(), ": tokenizer.ggml.merges entry '", m.s, "' has no space");
    jm.push_back({m.s.substr(0, sp), m.s.substr(sp + 1)});
  }
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  json t = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
            {"normalizer", row->nfc ? json{{"type", "NFC"}} : json(nullptr)},
            {"pre_tokenizer", {{"type", "Sequence"},
                               {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", row->regex}}},
                                                   {"behavior", "Isolated"}, {"invert", false}},
                                                  byte_level}}}},
            {"post_processor", byte_level},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                       {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false},
                       {"ignore_merges", false}, {"vocab", vocab}, {"merges", jm}}}};
  c.aux_files["tokenizer.json"] = t.dump();
  json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
             {"add_bos_token", f.header().find("tokenizer.ggml.add_bos_token") ? f.get_int("tokenizer.ggml.add_bos_token") != 0 : false}};
  auto special = [&](const char* gkey, const char* tkey, const char* ckey) {
    const int64_t id = f.get_int(gkey, -1);
    if (id < 0) return;
    if (uint64_t(id) >= tokens.size()) fail(f.origin(), ": ", gkey, " ", id, " is not a token id");
    tc[tkey] = tokens[size_t(id)].s;
    c.config[ckey] = id;
  };
  special("tokenizer.ggml.bos_token_id", "bos_token", "bos_token_id");
  special("tokenizer.ggml.eos_token_id", "eos_token", "eos_token_id");
  special("tokenizer.ggml.padding_token_id", "pad_token", "pad_token_id");
  if (f.header().find("tokenizer.chat_template")) tc["chat_template"] = f.get_str("tokenizer.chat_template");
  c.aux_files["tokenizer_config.json"] = tc.dump(2);
}

}  // namespace

Checkpoint open_gguf_checkpoint(const std::filesystem::path& path) {
  auto f = std::make_shared<GgufFile>(path);
  const std::string arch = f->get_str("general.architecture");
  const ArchRow* ar = arch_by_gguf(arch);
  if (!ar) fail(path.string(), ": general.architecture '", arch, "' is not supported (llmc reads ", arch_list(), ")");
  auto k = [&](const std::string& s) { return arch + "." + s; };
  const int64_t hidden = f->get_int(k("embedding_length"));
  const int64_t n_head = f->get_int(k("attention.head_count"));
  const int64_t n_kv = f->get_int(k("attention.head_count_kv"), n_head);
  if (hidden <= 0 || n_head <= 0 || n_kv <= 0) fail(path.string(), ": head counts and embedding_length must be positive");
  const GgufTensorInfo* emb = f->tensor("token_embd.weight");
  if (!emb || emb->ne.size() != 2) fail(path.string(), ": no 2-D token_embd.weight tensor");
  Checkpoint c;
  c.path = path;
  c.format = CheckpointFormat::GGUF;
  const GgmlType et = GgmlType(emb->type);
  c.config = {{"architectures", {ar->hf_arch}},
              {"model_type", ar->model_type},
              {"hidden_size", hidden},
              {"intermediate_size", f->get_int(k("feed_forward_length"))},
              {"num_hidden_layers", f->get_int(k("block_count"))},
              {"num_attention_heads", n_head},
              {"num_key_value_heads", n_kv},
              {"head_dim", f->get_int(k("attention.key_length"), hidden / n_head)},
              {"max_position_embeddings", f->get_int(k("context_length"), 4096)},
              {"rms_norm_eps", f->get_float(k("attention.layer_norm_rms_epsilon"), 1e-6)},
              {"rope_theta", f->get_float(k("rope.freq_base"), 10000.0)},
              {"vocab_size", int64_t(emb->ne[1])},
              {"tie_word_embeddings", f->tensor("output.weight") == nullptr},
              {"attention_bias", f->tensor("blk.0.attn_q.bias") != nullptr},
              {"hidden_act", "silu"},
              {"dtype", et == GgmlType::F16 ? "float16" : et == GgmlType::F32 ? "float32" : "bfloat16"}};
  rebuild_tokenizer(*f, c);
  c.tensors = std::make_unique<GgufTensors>(f, ar->permute_qk, n_head, n_kv);
  return c;
}

}  // namespace llmc
