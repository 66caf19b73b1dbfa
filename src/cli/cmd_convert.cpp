// llmc convert — HF directory <-> AI-OS Parquet, losslessly (or with a float dtype change); HF or
// Parquet -> GGUF (formats/gguf_model.h) with float tensors kept (or cast by --dtype).
#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "formats/convert.h"
#include "formats/gguf_model.h"

namespace {

using namespace llmc;

// Float tensors as GGUF F32 / F16 / BF16: the stored type (F64 -> F32), or --dtype.
int convert_to_gguf(const std::string& input, const std::filesystem::path& out, std::optional<DType> dtype,
                    bool overwrite) {
  check_output_path(out, OutputKind::File, {overwrite, {input}});
  Checkpoint in = open_checkpoint(input);
  GgufWriteOptions go;
  go.choose = [dtype](const GgufTensorSite& s) {
    const DType d = dtype.value_or(s.dtype);
    return d == DType::BF16 ? GgmlType::BF16 : d == DType::F16 ? GgmlType::F16 : GgmlType::F32;
  };
  const DType main = dtype.value_or(in.tensors->list().empty() ? DType::BF16 : in.tensors->list().front().dtype);
  go.file_type = main == DType::BF16  ? GgufFileType::MOSTLY_BF16
                 : main == DType::F16 ? GgufFileType::MOSTLY_F16
                                      : GgufFileType::ALL_F32;
  go.progress = !quiet();
  AtomicPath ap(out);
  const GgufWriteStats st = write_gguf_model(in, ap.temp(), go);
  ap.commit();
  std::string types;
  for (const auto& [t, n] : st.type_counts) types += cat(types.empty() ? "" : ", ", n, " ", t);
  std::printf("converted %s (%s) -> %s (gguf): %llu tensors (%s), %s in %.2f s\n", input.c_str(),
              checkpoint_format_name(in.format), out.string().c_str(), (unsigned long long)st.tensors, types.c_str(),
              human_bytes(double(st.bytes)).c_str(), st.seconds);
  return 0;
}

cli::RunFn setup(CLI::App& app) {
  struct Opts {
    std::string input, output, format, dtype = "keep", shard = "5GB", chunk = "64MiB";
    bool zstd = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--input,-i", o->input, "input checkpoint: HF model directory, .parquet or .gguf file")->required();
  app.add_option("--output,-o", o->output, "output path (directory for hf, file for parquet and gguf)")->required();
  app.add_option("--format,-f", o->format, "output format: hf, parquet or gguf (default: from the --output "
                                           "extension .parquet / .gguf, else hf)")
      ->check(CLI::IsMember({"hf", "parquet", "gguf"}));
  app.add_option("--dtype", o->dtype, "float tensors: keep (lossless), bf16, fp16 or fp32")
      ->check(CLI::IsMember({"keep", "bf16", "fp16", "fp32"}))
      ->capture_default_str();
  app.add_option("--shard-size", o->shard, "hf: maximum tensor bytes per safetensors shard")->capture_default_str();
  app.add_option("--chunk-size", o->chunk, "parquet: maximum tensor bytes per row")->capture_default_str();
  app.add_flag("--zstd", o->zstd, "parquet: ZSTD-compress data pages");
  cli::add_overwrite_flag(app, o->overwrite);
  return [o]() -> int {
    ConvertOptions co;
    const std::filesystem::path out(o->output);
    if (!o->format.empty()) co.format = parse_checkpoint_format(o->format);
    else if (out.extension() == ".gguf") co.format = CheckpointFormat::GGUF;
    else co.format = out.extension() == ".parquet" ? CheckpointFormat::Parquet : CheckpointFormat::HF;
    if (co.format == CheckpointFormat::Parquet && out.extension() != ".parquet")
      fail(o->output, ": a Parquet checkpoint must be named *.parquet");
    if (co.format == CheckpointFormat::GGUF && out.extension() != ".gguf")
      fail(o->output, ": a GGUF file must be named *.gguf");
    co.target_dtype = parse_target_dtype(o->dtype);
    if (co.format == CheckpointFormat::GGUF) return convert_to_gguf(o->input, out, co.target_dtype, o->overwrite);
    co.writer.max_shard_bytes = parse_size(o->shard);
    co.writer.parquet_chunk_bytes = parse_size(o->chunk);
    co.writer.parquet_zstd = o->zstd;
    co.progress = !quiet();
    co.writer.overwrite = o->overwrite;
    check_output_path(out, co.format == CheckpointFormat::HF ? OutputKind::Directory : OutputKind::File,
                      {o->overwrite, {o->input}});
    Checkpoint in = open_checkpoint(o->input);
    const ConvertStats st = convert_checkpoint(in, out, co);
    std::printf("converted %s (%s) -> %s (%s): %llu tensors, %s -> %s in %.2f s (%.1f MB/s)%s\n",
                o->input.c_str(), checkpoint_format_name(in.format), o->output.c_str(),
                checkpoint_format_name(co.format), (unsigned long long)st.tensors,
                human_bytes(double(st.bytes_in)).c_str(), human_bytes(double(st.bytes_out)).c_str(), st.seconds,
                st.seconds > 0 ? double(st.bytes_in) / 1e6 / st.seconds : 0.0,
                st.converted ? cat(", ", st.converted, " tensors converted to ", o->dtype).c_str() : "");
    return 0;
  };
}

}  // namespace

LLMC_REGISTER_COMMAND("convert", "convert a checkpoint between HF safetensors and Parquet (lossless), or to GGUF", 30, setup);
