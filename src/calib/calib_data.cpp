// calib/calib_data.cpp — calibration records, chat rendering and window cutting.
#include "calib/calib_data.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/fs.h"
#include "formats/parquet.h"
#include "tokenizer/tokenizer.h"

namespace llmc {

using nlohmann::json;

namespace {

constexpr const char* kShapes =
    "accepted record shapes: {\"text\"}, {\"messages\":[{\"role\",\"content\"}]} (+ optional "
    "\"system_prompt\"), {\"input\",\"output\"}, {\"conversations\":[{\"from\",\"value\"}]}, "
    "{\"applied_message\"}";

const std::string& str_field(const json& j, const char* key, const std::string& where) {
  const auto it = j.find(key);
  if (it == j.end()) fail(where, ": missing \"", key, "\"");
  if (!it->is_string()) fail(where, ": \"", key, "\" must be a string");
  return it->get_ref<const std::string&>();
}

// ShareGPT speaker names -> chat roles (a table, not a chain of ifs).
struct RoleAlias {
  const char* from;
  const char* role;
};
constexpr RoleAlias kRoleAliases[] = {{"human", "user"},  {"user", "user"},
                                      {"gpt", "assistant"}, {"assistant", "assistant"},
                                      {"model", "assistant"}, {"chatgpt", "assistant"},
                                      {"bing", "assistant"},  {"bard", "assistant"},
                                      {"system", "system"}};

std::string role_of(const std::string& from, const std::string& where) {
  for (const auto& a : kRoleAliases)
    if (from == a.from) return a.role;
  std::string known;
  for (const auto& a : kRoleAliases) known += (known.empty() ? "" : ", ") + std::string(a.from);
  fail(where, ": unknown speaker \"", from, "\" in \"conversations\" (known: ", known, ")");
}

std::vector<ChatMessage> parse_messages(const json& arr, const char* key, const char* role_key,
                                        const char* content_key, bool map_roles,
                                        const std::string& where) {
  if (!arr.is_array()) fail(where, ": \"", key, "\" must be a list");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string w = cat(where, ": ", key, "[", i, "]");
    if (!arr[i].is_object()) fail(w, " must be an object with \"", role_key, "\" and \"",
                                  content_key, "\"");
    const std::string& r = str_field(arr[i], role_key, w);
    out.push_back({map_roles ? role_of(r, w) : r, str_field(arr[i], content_key, w)});
  }
  if (out.empty()) fail(where, ": \"", key, "\" is empty");
  return out;
}

CalibRecord parse_record(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, ": a record must be a JSON object; ", kShapes);
  CalibRecord r;
  if (j.contains("messages")) {
    if (j.contains("system_prompt")) {
      const std::string& sp = str_field(j, "system_prompt", where);
      if (!sp.empty()) r.messages.push_back({"system", sp});
    }
    auto msgs = parse_messages(j["messages"], "messages", "role", "content", false, where);
    r.messages.insert(r.messages.end(), msgs.begin(), msgs.end());
  } else if (j.contains("conversations")) {
    r.messages = parse_messages(j["conversations"], "conversations", "from", "value", true, where);
  } else if (j.contains("input") || j.contains("output")) {
    r.messages.push_back({"user", str_field(j, "input", where)});
    r.messages.push_back({"assistant", str_field(j, "output", where)});
  } else if (j.contains("applied_message")) {
    r.text = str_field(j, "applied_message", where);
  } else if (j.contains("text")) {
    r.text = str_field(j, "text", where);
  } else {
    fail(where, ": unrecognized calibration record; ", kShapes);
  }
  return r;
}

// Whether a document holds any text at all (blank documents are skipped).
bool has_text(std::string_view s) { return s.find_first_not_of(" \t\r\n") != std::string_view::npos; }

bool has_suffix(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && std::equal(suf.rbegin(), suf.rend(), s.rbegin(),
                                              [](char a, char b) { return std::tolower(a) == b; });
}

}  // namespace

std::vector<CalibRecord> parse_jsonl_records(std::string_view bytes, const std::string& origin) {
  std::vector<CalibRecord> out;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < bytes.size()) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string_view::npos) end = bytes.size();
    std::string_view l = bytes.substr(pos, end - pos);
    pos = end + 1;
    ++line;
    if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = cat(origin, ":", line);
    json j;
    try {
      j = json::parse(l);
    } catch (const json::exception& e) {
      fail(where, ": not valid JSON (", e.what(), ")");
    }
    out.push_back(parse_record(j, where));
  }
  return out;
}

std::vector<CalibRecord> read_calibration_records(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail("calibration data ", path.string(), ": not found (or not a regular file)");
  const std::string name = path.filename().string();
  std::vector<CalibRecord> recs;
  if (has_suffix(name, ".parquet")) {
    // A dataset file (e.g. a HuggingFace datasets shard): one plain document per non-empty row
    // of its "text" column; null rows are skipped.
    read_parquet_string_column(path, "text", [&](uint64_t row, std::string_view v) {
      const size_t bad = first_invalid_utf8(v);
      if (bad != std::string_view::npos)
        fail("calibration data ", path.string(), ": row ", row, " of its \"text\" column is not UTF-8 (byte ",
             bad, " of the value)");
      if (has_text(v)) recs.push_back({std::string(v), {}});
    });
    if (recs.empty()) fail("calibration data ", path.string(), ": its \"text\" column holds no text");
    return recs;
  }
  const std::string bytes = read_text_input(path);  // UTF-8 checked, gzip read transparently
  const std::string plain = has_suffix(name, ".gz") ? name.substr(0, name.size() - 3) : name;
  if (has_suffix(plain, ".jsonl") || has_suffix(plain, ".json")) {
    recs = parse_jsonl_records(bytes, path.string());
  } else {
    if (has_text(bytes)) recs.push_back({bytes, {}});
  }
  if (recs.empty()) fail("calibration data ", path.string(), ": empty (no text found)");
  return recs;
}

std::string render_chat(const std::vector<ChatMessage>& messages, bool chatml) {
  std::string s;
  for (const auto& m : messages) {
    if (chatml) {
      s += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else {
      if (!s.empty()) s += "\n\n";
      s += m.content;
    }
  }
  return s;
}

std::string render_record(const CalibRecord& r, bool chatml) {
  return r.is_chat() ? render_chat(r.messages, chatml) : r.text;
}

CalibWindows cut_windows(const std::vector<int32_t>& tokens, int num_samples, int seq_len,
                         uint64_t seed, const std::string& origin) {
  if (num_samples <= 0) fail("--num-samples must be positive, got ", num_samples);
  if (seq_len <= 1) fail("--seq-len must be at least 2, got ", seq_len);
  const int64_t n = int64_t(tokens.size());
  const int64_t need = int64_t(num_samples) * seq_len;
  if (n == 0) fail("calibration data ", origin, ": no tokens (empty text)");
  if (n < need)
    fail("calibration data ", origin, " has ", n, " tokens, need --num-samples x --seq-len = ",
         num_samples, " x ", seq_len, " = ", need,
         " (give more data, or lower --num-samples / --seq-len; at most ", n / seq_len,
         " windows of ", seq_len, " tokens fit)");
  const int64_t slots = n / seq_len;
  std::mt19937_64 rng(seed);
  // Portable draws: use the raw 64-bit outputs (distributions differ between libraries).
  const int64_t slack = n - slots * seq_len;
  const int64_t offset = slack > 0 ? int64_t(rng() % uint64_t(slack + 1)) : 0;
  std::vector<int64_t> idx(static_cast<size_t>(slots));
  std::iota(idx.begin(), idx.end(), 0);
  for (int64_t i = 0; i < num_samples; ++i) {  // partial Fisher-Yates
    const int64_t j = i + int64_t(rng() % uint64_t(slots - i));
    std::swap(idx[size_t(i)], idx[size_t(j)]);
  }
  idx.resize(size_t(num_samples));
  std::sort(idx.begin(), idx.end());
  CalibWindows w;
  w.num_samples = num_samples;
  w.seq_len = seq_len;
  w.tokens_available = n;
  w.ids.reserve(size_t(need));
  for (int64_t s : idx) {
    const auto b = tokens.begin() + (offset + s * seq_len);
    w.ids.insert(w.ids.end(), b, b + seq_len);
  }
  return w;
}

bool tokenizer_has_chatml(const Tokenizer& tok) {
  return tok.has_token("<|im_start|>") && tok.has_token("<|im_end|>");
}

std::vector<int32_t> tokenize_records(const std::vector<CalibRecord>& recs, const Tokenizer& tok) {
  const bool chatml = tokenizer_has_chatml(tok);
  std::vector<int32_t> ids;
  for (const auto& r : recs) {
    const std::string text = render_record(r, chatml);
    const auto t = text.size() > (1u << 16) ? tok.encode_parallel(text) : tok.encode(text);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  return ids;
}

void check_window_length(const std::string& option, int64_t len, int64_t max_positions) {
  if (max_positions > 0 && len > max_positions)
    fail(option, " ", len, " exceeds the model's max_position_embeddings ", max_positions,
         " (windows longer than the model's context are refused)");
}

CalibWindows load_calibration_windows(const std::filesystem::path& path, const Tokenizer& tok,
                                      int num_samples, int seq_len, uint64_t seed,
                                      int max_positions, std::string* origin_out) {
  check_window_length("--seq-len", seq_len, max_positions);
  std::vector<CalibRecord> recs;
  std::string origin;
  if (path.empty()) {
    origin = "(bundled data/calibration.txt)";
    recs.push_back({std::string(default_calibration_text()), {}});
  } else {
    origin = path.string();
    recs = read_calibration_records(path);
  }
  if (origin_out) *origin_out = origin;
  return cut_windows(tokenize_records(recs, tok), num_samples, seq_len, seed, origin);
}

}  // namespace llmc
