#include "formats/inspect.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "formats/ggml_types.h"
#include "formats/gguf.h"
#include "formats/gguf_model.h"
#include "formats/safetensors.h"

namespace llmc {

using nlohmann::json;

namespace {

// Report field -> config keys to try, first present wins (v5 spelling before v4).
struct ArchField {
  const char* label;
  std::vector<const char*> pointers;
};
const std::vector<ArchField>& arch_fields() {
  static const std::vector<ArchField> t = {
      {"architecture", {"/architectures/0"}},
      {"model_type", {"/model_type"}},
      {"hidden_size", {"/hidden_size"}},
      {"num_hidden_layers", {"/num_hidden_layers"}},
      {"num_attention_heads", {"/num_attention_heads"}},
      {"num_key_value_heads", {"/num_key_value_heads"}},
      {"head_dim", {"/head_dim"}},
      {"intermediate_size", {"/intermediate_size"}},
      {"num_experts", {"/num_local_experts", "/num_experts"}},
      {"num_experts_per_tok", {"/num_experts_per_tok"}},
      {"moe_intermediate_size", {"/moe_intermediate_size"}},
      {"shared_expert_intermediate_size", {"/shared_expert_intermediate_size"}},
      {"vocab_size", {"/vocab_size"}},
      {"max_position_embeddings", {"/max_position_embeddings"}},
      {"rope_theta", {"/rope_parameters/rope_theta", "/rope_theta"}},
      {"rope_type", {"/rope_parameters/rope_type", "/rope_scaling/rope_type", "/rope_scaling/type"}},
      {"tie_word_embeddings", {"/tie_word_embeddings"}},
      {"dtype", {"/dtype", "/torch_dtype"}},
  };
  return t;
}

// Suffixes (after the last '.') of tensors that describe quantization, not weights.
const char* const kQuantMetaSuffixes[] = {
    "scales",       "qzeros",          "g_idx",        "weight_scale",     "weight_zero_point",
    "weight_g_idx", "weight_shape",    "input_scale",  "output_scale",     "weight_scale_inv",
    "k_scale",      "v_scale",         "input_zero_point", "weight_global_scale", "input_global_scale"};

std::string suffix_of(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}
std::string module_of(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

uint64_t logical_params(const TensorReader& r, const TensorInfo& ti, int bits) {
  const std::string suf = suffix_of(ti.name);
  if (is_quant_metadata_tensor(ti.name)) return 0;
  const uint64_t numel = uint64_t(ti.numel());
  const int qbits = bits > 0 ? bits : 4;
  if (suf == "weight_packed") {
    const std::string shape_name = module_of(ti.name) + ".weight_shape";
    if (r.has(shape_name)) {
      TensorRef s = r.get(shape_name);
      const int64_t n = s.info.numel();
      if ((s.info.dtype == DType::I64 || s.info.dtype == DType::I32) && n > 0 && n <= 8) {
        uint64_t p = 1;
        for (int64_t i = 0; i < n; ++i) p *= uint64_t(load_as_f32(s.info.dtype, s.data, size_t(i)));
        return p;
      }
    }
    return numel * (dtype_size(ti.dtype) * 8) / uint64_t(qbits);
  }
  if (suf == "qweight") return numel * 32 / uint64_t(qbits);
  return numel;
}

std::string fmt_count(uint64_t n) {
  const std::string d = std::to_string(n);
  std::string s;
  for (size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(d[i]);
  }
  return s;
}

}  // namespace

bool is_quant_metadata_tensor(const std::string& name) {
  const std::string suf = suffix_of(name);
  for (const char* s : kQuantMetaSuffixes)
    if (suf == s) return true;
  return false;
}

int quantized_bits(const json& q) {
  if (!q.is_object()) return 0;
  if (q.contains("bits") && q["bits"].is_number_integer()) return q["bits"].get<int>();
  if (q.contains("config_groups") && q["config_groups"].is_object()) {
    for (const auto& g : q["config_groups"]) {
      if (g.is_object() && g.contains("weights") && g["weights"].is_object() && g["weights"].contains("num_bits") &&
          g["weights"]["num_bits"].is_number_integer())
        return g["weights"]["num_bits"].get<int>();
    }
  }
  return 0;
}

Checkpoint open_for_inspect(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec) && path.extension() == ".safetensors") {
    Checkpoint c;
    c.path = path;
    c.format = CheckpointFormat::HF;
    c.config = json::object();
    c.tensors = std::make_unique<SafetensorsFile>(path);
    return c;
  }
  return open_checkpoint(path);
}

json inspect_checkpoint(const Checkpoint& c) {
  json rep;
  rep["path"] = c.path.string();
  rep["format"] = checkpoint_format_name(c.format);
  json arch = json::object();
  for (const auto& f : arch_fields()) {
    for (const char* p : f.pointers) {
      const json::json_pointer ptr(p);
      bool present = false;
      try {
        present = c.config.contains(ptr) && !c.config.at(ptr).is_null();
      } catch (const json::exception&) {
        present = false;
      }
      if (present) {
        arch[f.label] = c.config.at(ptr);
        break;
      }
    }
  }
  rep["architecture"] = arch;
  const json qc = c.config.is_object() && c.config.contains("quantization_config") ? c.config["quantization_config"]
                                                                                    : json(nullptr);
  const int bits = quantized_bits(qc);
  json tensors = json::array();
  uint64_t bytes = 0, params = 0, logical = 0;
  std::map<std::string, uint64_t> by_dtype;
  // GGUF: each tensor as stored (ggml type and bytes), not as the decoded view.
  std::map<std::string, std::pair<std::string, uint64_t>> stored;
  if (c.format == CheckpointFormat::GGUF) {
    const GgufFile f(c.path);
    for (const GgufTensorInfo& t : f.header().tensors)
      stored[hf_tensor_name_from_gguf(t.name)] = {ggml_type_by_id(t.type)->name, t.nbytes};
  }
  for (const auto& ti : c.tensors->list()) {
    auto st = stored.find(ti.name);
    const std::string dt = st != stored.end() ? st->second.first : std::string(dtype_name(ti.dtype));
    const uint64_t nb = st != stored.end() ? st->second.second : ti.nbytes;
    tensors.push_back({{"name", ti.name}, {"dtype", dt}, {"shape", ti.shape}, {"bytes", nb}});
    bytes += nb;
    params += uint64_t(ti.numel());
    logical += logical_params(*c.tensors, ti, bits);
    by_dtype[dt] += nb;
  }
  rep["tensors"] = std::move(tensors);
  rep["totals"] = {{"tensors", c.tensors->list().size()},
                   {"bytes", bytes},
                   {"parameters", params},
                   {"logical_parameters", logical},
                   {"by_dtype", by_dtype}};
  rep["quantization_config"] = qc;
  const uint64_t bf16 = 2 * logical;
  rep["footprint"] = {{"bytes", bytes}, {"bf16_bytes", bf16}, {"ratio", bf16 ? double(bytes) / double(bf16) : 0.0}};
  json aux = json::object();
  for (const auto& [name, data] : c.aux_files) aux[name] = data.size();
  rep["aux_files"] = aux;
  return rep;
}

std::string format_inspect_text(const json& r) {
  std::ostringstream os;
  os << "checkpoint: " << r["path"].get<std::string>() << " (" << r["format"].get<std::string>() << ")\n";
  const json& a = r["architecture"];
  if (a.empty()) {
    os << "architecture: (no config.json)\n";
  } else {
    os << "architecture:\n";
    for (auto it = a.begin(); it != a.end(); ++it)
      os << "  " << it.key() << ": " << (it.value().is_string() ? it.value().get<std::string>() : it.value().dump())
         << "\n";
  }
  const json& t = r["tensors"];
  size_t wn = 4, wd = 5, ws = 5;
  for (const auto& e : t) {
    wn = std::max(wn, e["name"].get<std::string>().size());
    wd = std::max(wd, e["dtype"].get<std::string>().size());
    ws = std::max(ws, shape_str(e["shape"].get<Shape>()).size());
  }
  char line[1024];
  os << "tensors:\n";
  std::snprintf(line, sizeof line, "  %-*s  %-*s  %-*s  %12s\n", int(wn), "name", int(wd), "dtype", int(ws), "shape",
                "bytes");
  os << line;
  for (const auto& e : t) {
    std::snprintf(line, sizeof line, "  %-*s  %-*s  %-*s  %12llu\n", int(wn), e["name"].get<std::string>().c_str(),
                  int(wd), e["dtype"].get<std::string>().c_str(), int(ws), shape_str(e["shape"].get<Shape>()).c_str(),
                  (unsigned long long)e["bytes"].get<uint64_t>());
    os << line;
  }
  const json& tot = r["totals"];
  os << "totals: " << tot["tensors"].get<uint64_t>() << " tensors, " << fmt_count(tot["parameters"].get<uint64_t>())
     << " stored elements, " << fmt_count(tot["logical_parameters"].get<uint64_t>()) << " logical parameters, "
     << human_bytes(double(tot["bytes"].get<uint64_t>())) << "\n";
  os << "by dtype:";
  for (auto it = tot["by_dtype"].begin(); it != tot["by_dtype"].end(); ++it)
    os << " " << it.key() << " " << human_bytes(double(it.value().get<uint64_t>()));
  os << "\n";
  if (!r["quantization_config"].is_null()) os << "quantization_config: " << r["quantization_config"].dump() << "\n";
  else os << "quantization_config: none\n";
  if (r.contains("vllm") && r["vllm"].is_object()) {
    const json& v = r["vllm"];
    if (v.value("loadable", false)) os << "vLLM: loadable\n";
    else os << "vLLM: not loadable by vLLM: " << v.value("reason", std::string()) << "\n";
  }
  const json& f = r["footprint"];
  char buf[256];
  std::snprintf(buf, sizeof buf, "memory footprint: %s vs %s in bf16 (%.3fx)\n",
                human_bytes(double(f["bytes"].get<uint64_t>())).c_str(),
                human_bytes(double(f["bf16_bytes"].get<uint64_t>())).c_str(), f["ratio"].get<double>());
  os << buf;
  if (!r["aux_files"].empty()) {
    os << "files:";
    for (auto it = r["aux_files"].begin(); it != r["aux_files"].end(); ++it) os << " " << it.key();
    os << "\n";
  }
  return os.str();
}

}  // namespace llmc
