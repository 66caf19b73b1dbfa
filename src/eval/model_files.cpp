#include "eval/model_files.h"

#include <algorithm>

#include "core/error.h"

namespace llmc {

Tokenizer model_tokenizer(const Checkpoint& ckpt, const std::string& override_path) {
  if (!override_path.empty()) return Tokenizer::load(override_path);
  auto it = ckpt.aux_files.find("tokenizer.json");
  if (it == ckpt.aux_files.end())
    fail(ckpt.path.string(), ": the checkpoint carries no tokenizer.json (pass --tokenizer)");
  return Tokenizer::from_json_text(it->second, (ckpt.path / "tokenizer.json").string());
}

std::vector<int32_t> stop_token_ids(const Checkpoint& ckpt) {
  std::vector<int32_t> ids;
  auto add = [&](const nlohmann::json& j, const std::string& origin) {
    if (!j.is_object() || !j.contains("eos_token_id") || j.at("eos_token_id").is_null()) return;
    const auto& e = j.at("eos_token_id");
    auto one = [&](const nlohmann::json& v) {
      if (!v.is_number_integer()) fail(origin, ": field \"eos_token_id\" must be an integer or a list of integers");
      ids.push_back(v.get<int32_t>());
    };
    if (e.is_array()) for (const auto& v : e) one(v);
    else one(e);
  };
  auto gen = ckpt.aux_files.find("generation_config.json");
  if (gen != ckpt.aux_files.end()) {
    const auto origin = (ckpt.path / "generation_config.json").string();
    nlohmann::json j = nlohmann::json::parse(gen->second, nullptr, false);
    if (j.is_discarded()) fail(origin, ": not valid JSON");
    add(j, origin);
  }
  add(ckpt.config, (ckpt.path / "config.json").string());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

}  // namespace llmc
