#include "formats/convert.h"

#include <chrono>
#include <vector>

#include "core/error.h"
#include "core/progress.h"
#include "formats/inspect.h"

namespace llmc {

namespace {

struct TargetName {
  const char* cli;
  std::optional<DType> dtype;
};
const TargetName kTargets[] = {
    {"keep", std::nullopt}, {"bf16", DType::BF16}, {"fp16", DType::F16}, {"fp32", DType::F32}};

bool convertible(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

}  // namespace

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    default: return dtype_name(t);
  }
}

void set_config_dtype(nlohmann::json& config, DType t) {
  const char* name = torch_dtype_name(t);
  config["dtype"] = name;
  config["torch_dtype"] = name;
}

void set_config_spellings(nlohmann::json& c) {
  using nlohmann::json;
  if (!c.is_object()) return;
  auto present = [&](const json& o, const char* k) {
    return o.is_object() && o.contains(k) && !o.at(k).is_null();
  };
  if (present(c, "dtype")) c["torch_dtype"] = c["dtype"];
  else if (present(c, "torch_dtype")) c["dtype"] = c["torch_dtype"];
  if (!present(c, "rope_theta") && !present(c, "rope_parameters") && !present(c, "rope_scaling"))
    return;
  // The parameters as model/config.h reads them: rope_parameters when present, else
  // rope_scaling; theta from rope_parameters, else rope_theta.
  json p = present(c, "rope_parameters") ? c["rope_parameters"]
           : present(c, "rope_scaling")  ? c["rope_scaling"]
                                         : json::object();
  if (!p.is_object()) return;  // malformed: the reader names it
  if (!present(p, "rope_theta") && present(c, "rope_theta")) p["rope_theta"] = c["rope_theta"];
  if (!present(p, "rope_type")) p["rope_type"] = present(p, "type") ? p["type"] : json("default");
  p.erase("type");
  c["rope_parameters"] = p;
  if (present(p, "rope_theta")) c["rope_theta"] = p["rope_theta"];
  json v4 = p;
  v4.erase("rope_theta");
  const bool dflt = v4["rope_type"].is_string() && v4["rope_type"].get<std::string>() == "default";
  c["rope_scaling"] = dflt ? json(nullptr) : v4;
}

std::optional<DType> parse_target_dtype(const std::string& s) {
  for (const auto& t : kTargets)
    if (s == t.cli) return t.dtype;
  fail("unknown --dtype '", s, "' (expected keep, bf16, fp16 or fp32)");
}

ConvertStats convert_checkpoint(const Checkpoint& in, const std::filesystem::path& out, const ConvertOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  ConvertStats st;
  uint64_t total = 0;
  for (const auto& ti : in.tensors->list()) total += ti.nbytes;
  auto w = make_checkpoint_writer(out, opts.format, opts.writer);
  std::unique_ptr<Progress> prog;
  if (opts.progress) prog = std::make_unique<Progress>("convert", (total + (1 << 20) - 1) >> 20, "MiB");
  std::vector<uint8_t> buf;
  uint64_t done = 0, shown = 0;
  for (const auto& ti : in.tensors->list()) {
    TensorRef r = in.tensors->get(ti.name);
    const DType src = r.info.dtype;
    if (opts.target_dtype && *opts.target_dtype != src && convertible(src) && !is_quant_metadata_tensor(ti.name)) {
      const DType dst = *opts.target_dtype;
      const uint64_t n = uint64_t(r.info.numel());
      buf.resize(size_t(n * dtype_size(dst)));
      convert(src, r.data, dst, buf.data(), size_t(n));
      w->add_tensor(ti.name, dst, r.info.shape, buf.data(), buf.size());
      st.bytes_out += buf.size();
      ++st.converted;
    } else {
      w->add_tensor(ti.name, src, r.info.shape, r.data, r.info.nbytes);
      st.bytes_out += r.info.nbytes;
    }
    st.bytes_in += r.info.nbytes;
    ++st.tensors;
    done += r.info.nbytes;
    if (prog && (done >> 20) > shown) {
      prog->step((done >> 20) - shown);
      shown = done >> 20;
    }
  }
  if (buf.capacity()) std::vector<uint8_t>().swap(buf);
  nlohmann::json config = in.config;
  if (opts.target_dtype && config.is_object()) {
    set_config_dtype(config, *opts.target_dtype);
    set_config_spellings(config);
  }
  w->commit(config, in.aux_files);
  if (prog) prog->finish();
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace llmc
