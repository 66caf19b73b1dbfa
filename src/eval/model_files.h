// eval/model_files.h — what the run-a-model commands need from a checkpoint besides weights.
//
//  * model_tokenizer(): `override_path` (a tokenizer.json or a directory holding one) when
//    given, else the checkpoint's own tokenizer.json from aux_files (HF directory or Parquet
//    file alike). Throws llmc::Error naming the checkpoint when it carries none.
//  * stop_token_ids(): eos_token_id of generation_config.json (aux file) and of config.json,
//    each an integer or a list of integers, deduplicated; empty when neither has one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace llmc {

Tokenizer model_tokenizer(const Checkpoint& ckpt, const std::string& override_path = "");
std::vector<int32_t> stop_token_ids(const Checkpoint& ckpt);

}  // namespace llmc
