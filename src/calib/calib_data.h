// calib/calib_data.h — calibration data: reading records, rendering chats, cutting windows.
//
// Record shapes (one JSON object per line of a .jsonl file; the shapes AngelSlim accepts):
//   {"text": "..."}                                        plain document
//   {"messages": [{"role", "content"}, ...], "system_prompt"?: "..."}   chat (system_prompt
//                                                          becomes a leading system message)
//   {"input": "...", "output": "..."}                      chat: user = input, assistant = output
//   {"conversations": [{"from", "value"}, ...]}            ShareGPT chat; from human/user ->
//                                                          user, gpt/assistant/model ->
//                                                          assistant, system -> system
//   {"applied_message": "..."}                             text already rendered by a template
// Blank lines are skipped. Any other shape, invalid JSON, or a field of the wrong type throws
// llmc::Error naming "<file>:<line>" and listing the accepted shapes.
// A .txt file is ONE document (its bytes, as UTF-8). .txt and .jsonl files (and any other text)
// may be gzip-compressed (read transparently; "x.jsonl.gz" is a .jsonl); bytes that are not
// UTF-8 are refused naming the file and byte offset (core/fs.h read_text_input). A .parquet file (any writer, e.g. a
// HuggingFace datasets shard) must have a top-level string column "text": each non-null,
// non-blank row is one plain document (formats/parquet.h read_parquet_string_column).
//
// Rendering: chats become ChatML ("<|im_start|>role\ncontent<|im_end|>\n" per message) when
// `chatml` is true (the caller checks that the tokenizer has both tokens), else the contents
// joined by "\n\n". Plain documents are rendered as is. Every rendered document is tokenized on
// its own (no special tokens added) and the token lists are concatenated with nothing between.
//
// Windows: cut_windows() takes the concatenated tokens (N of them) and returns num_samples
// windows of seq_len consecutive tokens: the N tokens are split into floor(N / seq_len)
// non-overlapping slots after a random start offset in [0, N mod seq_len], and num_samples
// distinct slots are drawn with a seeded generator (std::mt19937_64; same inputs + seed ->
// same windows on every platform). Windows are returned in slot order. No padding token ever
// appears: every window is real text. Too few tokens (N < num_samples * seq_len) throws
// llmc::Error "calibration data <origin> has N tokens, need num_samples x seq_len = M ...".
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace llmc {

struct ChatMessage {
  std::string role, content;
};

struct CalibRecord {
  std::string text;                   // plain or pre-rendered document (when messages is empty)
  std::vector<ChatMessage> messages;  // chat record when non-empty
  bool is_chat() const { return !messages.empty(); }
};

// Parses the records of a .jsonl document; `origin` names the file in errors.
std::vector<CalibRecord> parse_jsonl_records(std::string_view bytes, const std::string& origin);
// .jsonl -> records; .txt (or any other non-JSON text) -> one plain record.
// .parquet -> one record per non-null, non-blank row of its "text" column. Throws naming the file when it is
// missing, empty, or holds no text at all.
std::vector<CalibRecord> read_calibration_records(const std::filesystem::path& path);

std::string render_chat(const std::vector<ChatMessage>& messages, bool chatml);
std::string render_record(const CalibRecord& r, bool chatml);

struct CalibWindows {
  int num_samples = 0, seq_len = 0;
  std::vector<int32_t> ids;         // [num_samples * seq_len]
  int64_t tokens_available = 0;     // N, the concatenated token count
};

CalibWindows cut_windows(const std::vector<int32_t>& tokens, int num_samples, int seq_len,
                         uint64_t seed, const std::string& origin);

class Tokenizer;

// True when the tokenizer has both "<|im_start|>" and "<|im_end|>".
bool tokenizer_has_chatml(const Tokenizer& tok);
// Renders every record (ChatML when the tokenizer has it), tokenizes each on its own and
// concatenates the ids.
std::vector<int32_t> tokenize_records(const std::vector<CalibRecord>& recs, const Tokenizer& tok);

// The one window-length rule (calibration, eval, the quantize quality check): throws
// "<option> L exceeds the model's max_position_embeddings P ..." when max_positions > 0 and
// len > max_positions.
void check_window_length(const std::string& option, int64_t len, int64_t max_positions);

// The whole path from a file (empty path: the bundled default text) to windows. Checks
// seq_len <= max_positions (when > 0) first: "--seq-len L exceeds the model's
// max_position_embeddings P". `origin_out` (optional) receives the data's name for messages.
CalibWindows load_calibration_windows(const std::filesystem::path& path, const Tokenizer& tok,
                                      int num_samples, int seq_len, uint64_t seed,
                                      int max_positions, std::string* origin_out = nullptr);

// The calibration text bundled with llmc (data/calibration.txt, embedded at build time).
std::string_view default_calibration_text();
// A held-out evaluation text bundled with llmc (data/heldout-sample.txt, embedded): used by
// `llmc quantize`'s quality check when no --eval-data is given.
std::string_view default_eval_text();

}  // namespace llmc
