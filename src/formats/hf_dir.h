// formats/hf_dir.h — HuggingFace model directories (safetensors weights + config + aux files).
//
// Contracts:
//  * open_hf_tensors(dir): model.safetensors when present, otherwise the shards named by
//    model.safetensors.index.json ("weight_map": tensor -> shard file). The index is checked:
//    shard names must be plain file names inside dir, every mapped tensor must be in its
//    shard, and every tensor of every shard must be mapped to that shard (no duplicates across
//    shards). list() is shard by shard (shards in name order), each in file order. Errors name
//    the file and tensor.
//  * read_aux_files(dir): every regular, non-hidden file of dir that is not config.json and not
//    a weight file (*.safetensors, *.safetensors.index.json, *.bin, *.pt, *.pth, *.gguf,
//    *.parquet, *.ckpt, *.h5, *.msgpack), read byte for byte. Files over 256 MiB are skipped
//    with a warning. A symbolic link is followed only when its target resolves inside dir (or,
//    for a hub cache snapshot .../snapshots/<rev>/, inside that repository's blobs/); other
//    links and non-regular files (FIFOs, devices, sockets) are skipped with a warning, so
//    nothing from outside the model directory is ever copied (HF output or Parquet file:<name>).
//  * HfTensorWriter(dir, max_shard_bytes) streams tensors into shards of at most
//    max_shard_bytes of tensor data (a single larger tensor gets a shard of its own). finish()
//    names them model-00001-of-0000N.safetensors and writes model.safetensors.index.json
//    (metadata.total_size = sum of tensor bytes, weight_map), or, for one shard, a single
//    model.safetensors without an index. `dir` must exist; atomicity is the caller's job.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "formats/tensor_store.h"

namespace llmc {

inline constexpr const char* kHfSingleWeights = "model.safetensors";
inline constexpr const char* kHfIndex = "model.safetensors.index.json";
inline constexpr uint64_t kMaxAuxFileBytes = 256ull << 20;

std::unique_ptr<TensorReader> open_hf_tensors(const std::filesystem::path& dir);
bool is_weight_file_name(const std::string& name);
std::map<std::string, std::string> read_aux_files(const std::filesystem::path& dir);
// Throws unless `name` is a plain file name (no '/', not "." / "..", not empty).
void check_plain_file_name(const std::string& name, const std::string& origin);

class HfTensorWriter : public TensorWriter {
 public:
  HfTensorWriter(const std::filesystem::path& dir, uint64_t max_shard_bytes);
  ~HfTensorWriter() override;
  void add(const std::string& name, DType dtype, const Shape& shape, const void* data,
           uint64_t nbytes) override;
  void finish() override;
  // Valid after finish(): the weight file names written, in order.
  const std::vector<std::string>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  uint64_t max_shard_bytes_;
  std::unique_ptr<SafetensorsWriter> cur_;
  std::vector<std::filesystem::path> parts_;                  // finished shard temp files
  std::vector<std::vector<std::string>> part_names_;          // tensors in each shard
  std::map<std::string, int> seen_;
  uint64_t total_bytes_ = 0;
  std::vector<std::string> files_;
  bool finished_ = false;
  void close_current();
};

}  // namespace llmc
