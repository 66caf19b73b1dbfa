// formats/convert.h — whole-checkpoint conversion (HF <-> Parquet, optional float dtype change).
//
// Contracts:
//  * convert_checkpoint() streams tensors one at a time from `in` to a CheckpointWriter at
//    `out` (temp path + rename: a failure leaves nothing under `out`), then writes the config
//    and every aux file byte for byte. With target_dtype unset, tensor bytes are copied
//    unchanged (lossless). With a target dtype, only F64/F32/F16/BF16 tensors that are not
//    quantization metadata (formats/inspect.h is_quant_metadata_tensor) are converted
//    (round to nearest even); the config's "dtype" / "torch_dtype" (whichever are present,
//    "torch_dtype" when neither is) is set to the torch name of the target.
//  * Memory stays bounded by one converted tensor.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>

#include "formats/checkpoint.h"

namespace llmc {

struct ConvertOptions {
  CheckpointFormat format = CheckpointFormat::HF;
  std::optional<DType> target_dtype;  // nullopt: keep
  WriterOptions writer;
  bool progress = true;
};

struct ConvertStats {
  uint64_t tensors = 0, bytes_in = 0, bytes_out = 0, converted = 0;
  double seconds = 0;
};

// "bfloat16" / "float16" / "float32" / "float64" for float dtypes, the llmc name otherwise.
const char* torch_dtype_name(DType t);
// Sets a config.json's dtype to torch_dtype_name(t): every "dtype"/"torch_dtype" key present,
// or "torch_dtype" when neither is.
void set_config_dtype(nlohmann::json& config, DType t);
// Parses the --dtype values keep|bf16|fp16|fp32 (nullopt for keep); throws otherwise.
std::optional<DType> parse_target_dtype(const std::string& s);

ConvertStats convert_checkpoint(const Checkpoint& in, const std::filesystem::path& out,
                                const ConvertOptions& opts);

}  // namespace llmc
