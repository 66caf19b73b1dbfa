// formats/convert.h — whole-checkpoint conversion (HF <-> Parquet, optional float dtype change).
//
// Contracts:
//  * convert_checkpoint() streams tensors one at a time from `in` to a CheckpointWriter at
//    `out` (temp path + rename: a failure leaves nothing under `out`), then writes the config
//    and every aux file byte for byte. With target_dtype unset, tensor bytes are copied
//    unchanged (lossless). With a target dtype, only F64/F32/F16/BF16 tensors that are not
//    quantization metadata (formats/inspect.h is_quant_metadata_tensor) are converted
//    (round to nearest even); the config's "dtype" and "torch_dtype" are set to the torch name
//    of the target, and the config gets both transformers spellings (set_config_spellings).
//    Without a target dtype the config is copied unchanged (lossless round trips).
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
// Sets a config.json's dtype to torch_dtype_name(t), in both spellings ("dtype", "torch_dtype").
void set_config_dtype(nlohmann::json& config, DType t);
// Every config.json llmc writes goes through this: the transformers-4 and -5 spellings of the
// same values, so that vLLM releases pinned to either read the same model (a v4 Qwen3Config
// given only "rope_parameters" falls back to rope_theta 10000, and vLLM writes that back).
//  * dtype: "dtype" and "torch_dtype" both set (to "dtype" when both are present; as
//    model/config.h reads it), when either is present.
//  * RoPE, when "rope_theta", "rope_parameters" or "rope_scaling" is present: the effective
//    values as model/config.h reads them (rope_parameters before rope_theta/rope_scaling)
//    written as v5 "rope_parameters" {rope_type, rope_theta, factor, ...} and as v4
//    "rope_theta" + "rope_scaling" (null for the default RoPE, else the parameters without
//    rope_theta).
// Other keys are left as they are. A non-object config is left as it is.
void set_config_spellings(nlohmann::json& config);
// Parses the --dtype values keep|bf16|fp16|fp32 (nullopt for keep); throws otherwise.
std::optional<DType> parse_target_dtype(const std::string& s);

ConvertStats convert_checkpoint(const Checkpoint& in, const std::filesystem::path& out,
                                const ConvertOptions& opts);

}  // namespace llmc
