// formats/checkpoint.cpp — open_checkpoint() and make_checkpoint_writer() for both containers.
//
// Parquet key-value metadata (see docs/formats.md): "llmc.format_version" = "1",
// "config.json" = config text, "quantization_config" = its JSON text when the config has one,
// "file:<name>" = bytes of each auxiliary file.
#include "formats/checkpoint.h"

#include <unistd.h>

#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "formats/gguf_model.h"
#include "formats/hf_dir.h"
#include "formats/parquet.h"

namespace llmc {

using nlohmann::json;

namespace {

constexpr const char* kFormatVersionKey = "llmc.format_version";
constexpr const char* kFormatVersion = "1";
constexpr const char* kConfigKey = "config.json";
constexpr const char* kQuantKey = "quantization_config";
constexpr const char* kFilePrefix = "file:";

struct FormatName {
  CheckpointFormat f;
  const char* name;
};
constexpr FormatName kFormatNames[] = {{CheckpointFormat::HF, "hf"}, {CheckpointFormat::Parquet, "parquet"},
                                       {CheckpointFormat::GGUF, "gguf"}};

json parse_config_text(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(origin, ": config is not valid JSON: ", e.what());
  }
  if (!j.is_object()) fail(origin, ": config is not a JSON object");
  return j;
}

std::string config_text(const json& config) { return config.dump(2) + "\n"; }

Checkpoint open_hf(const std::filesystem::path& dir) {
  Checkpoint c;
  c.path = dir;
  c.format = CheckpointFormat::HF;
  c.config = parse_config_text(read_text_file(dir / "config.json"), (dir / "config.json").string());
  c.tensors = open_hf_tensors(dir);
  c.aux_files = read_aux_files(dir);
  return c;
}

Checkpoint open_parquet(const std::filesystem::path& file) {
  ParquetCheckpointFile pf = open_parquet_checkpoint(file);
  Checkpoint c;
  c.path = file;
  c.format = CheckpointFormat::Parquet;
  auto ver = pf.kv.find(kFormatVersionKey);
  if (ver != pf.kv.end() && ver->second != kFormatVersion)
    fail(file.string(), ": unsupported llmc Parquet format version '", ver->second, "' (this llmc reads ",
         kFormatVersion, ")");
  auto cfg = pf.kv.find(kConfigKey);
  if (cfg != pf.kv.end()) {
    c.config = parse_config_text(cfg->second, file.string() + " [config.json]");
  } else {
    log_warn(file.string() + ": no config.json in the Parquet metadata (not written by llmc?)");
    c.config = json::object();
  }
  auto q = pf.kv.find(kQuantKey);
  if (q != pf.kv.end() && !c.config.contains(kQuantKey))
    c.config[kQuantKey] = parse_config_text(q->second, file.string() + " [quantization_config]");
  const std::string prefix = kFilePrefix;
  for (const auto& [k, v] : pf.kv) {
    if (k.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string name = k.substr(prefix.size());
    check_plain_file_name(name, file.string() + ": metadata key '" + k + "'");
    c.aux_files[name] = v;
  }
  c.tensors = std::move(pf.tensors);
  return c;
}

void write_aux(const std::filesystem::path& dir, const std::map<std::string, std::string>& aux) {
  for (const auto& [name, bytes] : aux) {
    check_plain_file_name(name, dir.string() + ": auxiliary file");
    if (name == "config.json" || is_weight_file_name(name))
      fail(dir.string(), ": auxiliary file '", name, "' would overwrite a checkpoint file");
    write_text_file(dir / name, bytes);
  }
}

// One writer for both containers: tensors stream into a format-specific TensorWriter that
// writes under an AtomicPath; commit() hands config + aux files to the format's finalizer and
// renames the result into place.
class AtomicCheckpointWriter : public CheckpointWriter {
 public:
  using Finalize = void (*)(TensorWriter&, const std::filesystem::path& temp, const json& config,
                            const std::map<std::string, std::string>& aux);
  AtomicCheckpointWriter(std::unique_ptr<AtomicPath> ap, std::unique_ptr<TensorWriter> w, Finalize fin)
      : ap_(std::move(ap)), w_(std::move(w)), fin_(fin) {}
  ~AtomicCheckpointWriter() override {
    w_.reset();  // close files before the AtomicPath removes the temporary
  }
  void add_tensor(const std::string& name, DType dtype, const Shape& shape, const void* data,
                  uint64_t nbytes) override {
    if (committed_) fail(ap_->final_path().string(), ": add_tensor after commit");
    w_->add(name, dtype, shape, data, nbytes);
  }
  void commit(const json& config, const std::map<std::string, std::string>& aux_files) override {
    if (committed_) fail(ap_->final_path().string(), ": commit called twice");
    fin_(*w_, ap_->temp(), config, aux_files);
    w_.reset();
    ap_->commit();
    committed_ = true;
  }

 private:
  std::unique_ptr<AtomicPath> ap_;
  std::unique_ptr<TensorWriter> w_;
  Finalize fin_;
  bool committed_ = false;
};

void finalize_hf(TensorWriter& w, const std::filesystem::path& temp, const json& config,
                 const std::map<std::string, std::string>& aux) {
  w.finish();
  write_text_file(temp / "config.json", config_text(config));
  write_aux(temp, aux);
}

void finalize_parquet(TensorWriter& w, const std::filesystem::path& temp, const json& config,
                      const std::map<std::string, std::string>& aux) {
  std::map<std::string, std::string> kv;
  kv[kFormatVersionKey] = kFormatVersion;
  kv[kConfigKey] = config_text(config);
  if (config.is_object() && config.contains(kQuantKey)) kv[kQuantKey] = config[kQuantKey].dump();
  for (const auto& [name, bytes] : aux) {
    check_plain_file_name(name, temp.string() + ": auxiliary file");
    kv[kFilePrefix + name] = bytes;
  }
  auto& pw = static_cast<ParquetTensorWriter&>(w);
  pw.set_kv(kv);
  pw.finish();
}

}  // namespace

CheckpointFormat parse_checkpoint_format(const std::string& s) {
  for (const auto& f : kFormatNames)
    if (s == f.name) return f.f;
  fail("unknown checkpoint format '", s, "' (expected hf, parquet or gguf)");
}

const char* checkpoint_format_name(CheckpointFormat f) {
  for (const auto& n : kFormatNames)
    if (n.f == f) return n.name;
  return "?";
}

Checkpoint open_checkpoint(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(path.string(), ": no such file or directory");
  if (std::filesystem::is_directory(path, ec)) {
    if (!std::filesystem::exists(path / "config.json", ec))
      fail(path.string(), ": not a HuggingFace checkpoint directory (no config.json)");
    return open_hf(path);
  }
  if (path.extension() == ".parquet") return open_parquet(path);
  if (path.extension() == ".gguf") return open_gguf_checkpoint(path);
  fail(path.string(), ": not a checkpoint (expected a HuggingFace model directory, a .parquet or a .gguf file)");
}

std::unique_ptr<CheckpointWriter> make_checkpoint_writer(const std::filesystem::path& out, CheckpointFormat format,
                                                         const WriterOptions& opts) {
  std::error_code ec;
  if (format == CheckpointFormat::GGUF)
    fail(out.string(), ": GGUF files are written by llmc convert / llmc quantize with a GGUF method "
         "(q8_0, q4_k_m, ...), not tensor by tensor");
  OutputRules rules;
  rules.overwrite = opts.overwrite;
  check_output_path(out, format == CheckpointFormat::HF ? OutputKind::Directory : OutputKind::File, rules);
  if (format == CheckpointFormat::HF) {
    if (opts.max_shard_bytes == 0) fail(out.string(), ": shard size must be positive");
    auto ap = std::make_unique<AtomicPath>(out);
    std::filesystem::create_directory(ap->temp(), ec);
    if (ec) fail(out.string(), ": cannot create ", ap->temp().string(), ": ", ec.message());
    auto w = std::make_unique<HfTensorWriter>(ap->temp(), opts.max_shard_bytes);
    return std::make_unique<AtomicCheckpointWriter>(std::move(ap), std::move(w), &finalize_hf);
  }
  auto ap = std::make_unique<AtomicPath>(out);
  auto w = std::make_unique<ParquetTensorWriter>(ap->temp(), opts.parquet_chunk_bytes, opts.parquet_zstd);
  return std::make_unique<AtomicCheckpointWriter>(std::move(ap), std::move(w), &finalize_parquet);
}

}  // namespace llmc
