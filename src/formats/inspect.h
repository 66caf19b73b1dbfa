// formats/inspect.h — what `llmc inspect` reports about a checkpoint.
//
// Contracts:
//  * open_for_inspect(path): open_checkpoint(path), plus a bare *.safetensors file (empty
//    config, no aux files).
//  * inspect_checkpoint(c) returns a JSON report (schema in docs/formats.md):
//      path, format, architecture {architecture, model_type, hidden_size, ... (fields present
//      in the config, v4 or v5 spelling)}, tensors [{name, dtype, shape, bytes}] in file order,
//      totals {tensors, bytes, parameters (stored elements), logical_parameters, by_dtype},
//      quantization_config (or null), footprint {bytes, bf16_bytes, ratio}, aux_files {name: bytes}.
//  * Logical parameters (what the model would hold unquantized), kept simple:
//      - quantization metadata tensors (is_quant_metadata_tensor: scales, zeros, g_idx,
//        weight_shape, activation scales, ...) count 0;
//      - a packed "<m>.weight_packed" counts the product of "<m>.weight_shape" when present,
//        otherwise numel x (element bits / quantized bits);
//      - a packed "<m>.qweight" (GPTQ / AWQ, int32 words) counts numel x (32 / bits);
//      - every other tensor counts its numel.
//    quantized bits: quantization_config.bits, else the first config_groups.*.weights.num_bits,
//    else 4. bf16_bytes = 2 x logical_parameters; ratio = bytes / bf16_bytes.
//  * format_inspect_text(report) renders the report for people, including a "vllm" entry
//    {loadable, reason} when the caller added one (llmc inspect adds quant/layouts.h
//    vllm_loadability(); formats/ cannot judge quantized layouts itself).
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "formats/checkpoint.h"

namespace llmc {

Checkpoint open_for_inspect(const std::filesystem::path& path);
// True for tensors that only describe how another tensor is quantized ("<m>.scales",
// "<m>.qzeros", "<m>.g_idx", "<m>.weight_scale", "<m>.weight_zero_point", "<m>.weight_shape",
// "<m>.input_scale", "<m>.weight_scale_inv", ...). `llmc convert --dtype` leaves them as they are.
bool is_quant_metadata_tensor(const std::string& name);
// Bits per quantized value from a quantization_config (see above); 0 when none is given.
int quantized_bits(const nlohmann::json& qconfig);
nlohmann::json inspect_checkpoint(const Checkpoint& c);
std::string format_inspect_text(const nlohmann::json& report);

}  // namespace llmc
