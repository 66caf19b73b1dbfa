// formats/checkpoint.h — a whole model on disk: config, auxiliary files and tensors, in either
// of llmc's container formats (HuggingFace directory of safetensors, or one AI-OS Parquet file).
//
// Contracts:
//  * open_checkpoint(path): a directory holding config.json is an HF checkpoint (single
//    model.safetensors or sharded model.safetensors.index.json); a file ending in .parquet is a
//    Parquet checkpoint; a file ending in .gguf is a GGUF file (formats/gguf_model.h). Anything
//    else throws llmc::Error naming the path.
//  * aux_files holds, byte for byte, the small files that travel with a model (tokenizer.json,
//    tokenizer_config.json, generation_config.json, special_tokens_map.json, chat_template.jinja,
//    vocab.json, merges.txt, hf_quant_config.json, ...; never config.json or weight files).
//  * CheckpointWriter streams tensors to a temporary path; commit() writes config + aux files and
//    atomically renames the result onto the output path. Destroying it uncommitted leaves nothing.
//    make_checkpoint_writer applies check_output_path (core/fs.h): an existing output is refused
//    unless opts.overwrite, and even then only a directory llmc wrote is replaced.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "formats/tensor_store.h"

namespace llmc {

// GGUF: llama.cpp's container, read and written by formats/gguf_model.h (not by CheckpointWriter).
enum class CheckpointFormat { HF, Parquet, GGUF };
// "hf" / "parquet" / "gguf"; throws on anything else.
CheckpointFormat parse_checkpoint_format(const std::string& s);
const char* checkpoint_format_name(CheckpointFormat f);

struct Checkpoint {
  std::filesystem::path path;
  CheckpointFormat format = CheckpointFormat::HF;
  nlohmann::json config;                       // config.json
  std::map<std::string, std::string> aux_files;  // file name -> bytes
  std::unique_ptr<TensorReader> tensors;
};

Checkpoint open_checkpoint(const std::filesystem::path& path);

struct WriterOptions {
  uint64_t max_shard_bytes = 5000000000ull;  // HF only: shard size limit (--shard-size)
  uint64_t parquet_chunk_bytes = 64ull << 20;  // Parquet only: tensor bytes per row
  bool parquet_zstd = false;                 // Parquet only: ZSTD page compression
  bool overwrite = false;                    // --overwrite: replace an existing output llmc wrote
};

class CheckpointWriter {
 public:
  virtual ~CheckpointWriter() = default;
  virtual void add_tensor(const std::string& name, DType dtype, const Shape& shape,
                          const void* data, uint64_t nbytes) = 0;
  // Finishes the tensor files, writes config + aux files, renames into place.
  virtual void commit(const nlohmann::json& config,
                      const std::map<std::string, std::string>& aux_files) = 0;
};

std::unique_ptr<CheckpointWriter> make_checkpoint_writer(const std::filesystem::path& out,
                                                         CheckpointFormat format,
                                                         const WriterOptions& opts = {});

}  // namespace llmc
