// llmc convert — HF directory <-> AI-OS Parquet, losslessly (or with a float dtype change).
#include "cli/command.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/progress.h"
#include "formats/convert.h"

namespace {

using namespace llmc;

cli::RunFn setup(CLI::App& app) {
  struct Opts {
    std::string input, output, format, dtype = "keep", shard = "5GB", chunk = "64MiB";
    bool zstd = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--input,-i", o->input, "input checkpoint: HF model directory or .parquet file")->required();
  app.add_option("--output,-o", o->output, "output path (directory for hf, file for parquet)")->required();
  app.add_option("--format,-f", o->format, "output format: hf or parquet (default: parquet when --output ends in "
                                           ".parquet, else hf)")
      ->check(CLI::IsMember({"hf", "parquet"}));
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
    else co.format = out.extension() == ".parquet" ? CheckpointFormat::Parquet : CheckpointFormat::HF;
    if (co.format == CheckpointFormat::Parquet && out.extension() != ".parquet")
      fail(o->output, ": a Parquet checkpoint must be named *.parquet");
    co.target_dtype = parse_target_dtype(o->dtype);
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

LLMC_REGISTER_COMMAND("convert", "convert a checkpoint between HF safetensors and Parquet (lossless)", 30, setup);
