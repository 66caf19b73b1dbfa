// tokenizer/tokenizer.h — byte-level BPE tokenizer loaded from a HuggingFace tokenizer.json.
//
// Reproduces HF `tokenizers` (encode with add_special_tokens=False, decode with
// skip_special_tokens as given) for byte-level BPE models (GPT-2, Llama-3, Qwen2/Qwen3):
//  * normalizer: null, NFC, or a Sequence of those (NFC through ICU);
//  * pre_tokenizer: ByteLevel, or a Sequence of Split(Regex|String, behavior Isolated or
//    Removed, invert false) steps ending in ByteLevel (add_prefix_space, use_regex = GPT-2
//    regex). Regexes use Oniguruma semantics (what HF uses) executed by PCRE2;
//  * model: BPE (merges by rank, "a b" or ["a","b"] merges, ignore_merges, unk_token/fuse_unk;
//    no dropout, no subword prefix/suffix; byte_fallback only with a complete byte alphabet,
//    where it never applies);
//  * added_tokens: matched in the raw text (normalized=false) or in the normalized text
//    (normalized=true), leftmost-longest, honouring lstrip/rstrip/single_word; never split;
//  * decoder: ByteLevel (or null: tokens joined by spaces).
// Anything else in tokenizer.json is rejected with llmc::Error naming the file.
// "truncation"/"padding" are never applied (a warning is logged when present); the
// post_processor is ignored (encode never adds special tokens).
//
// Input text that is not valid UTF-8 is first decoded with replacement: every maximal invalid
// subsequence becomes U+FFFD (like Python's bytes.decode("utf-8", "replace")), then tokenized.
//
// Thread safety: all const methods may be called concurrently. Copies share the loaded state
// (cheap). A default-constructed Tokenizer is empty: every method except empty() throws.
// Speed: each thread keeps a bounded word -> ids cache per tokenizer (at most ~6 MiB each, for
// the last 4 tokenizers that thread used). Unicode tables: NFC comes from ICU, \p{..} classes from PCRE2; a
// character newer than their Unicode versions may differ from HF's tables.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llmc {

class Tokenizer {
 public:
  Tokenizer() = default;

  // `dir_or_file`: a tokenizer.json (plain or gzip-compressed, detected by content) or a
  // directory holding tokenizer.json (or tokenizer.json.gz). Throws llmc::Error naming the
  // file when it is missing, corrupt or uses an unsupported component.
  static Tokenizer load(const std::filesystem::path& dir_or_file);
  // Same, from the JSON text; `origin` names the source in error messages.
  static Tokenizer from_json_text(const std::string& text, const std::string& origin);

  // Token ids of `text`; no special tokens are added (special tokens written in the text are
  // matched as added tokens, like HF with add_special_tokens=False).
  std::vector<int32_t> encode(std::string_view text) const;
  // Identical result to encode(), computed on all threads (core/threads.h). Added tokens and
  // normalization are found serially; each normalized segment is cut into chunks of about
  // `chunk_bytes` (0: automatic), preferably after a '\n' followed by a non-space. A chunk's
  // thread pre-tokenizes from its start with the regex seeing the whole text (but never more
  // than one chunk past its end: PCRE2 partial-hard matching says when that would matter) and
  // records where each piece starts; the stitching pass keeps a chunk's tokens from the first
  // piece start that the serial pass also reaches and runs the serial pass itself where they
  // disagree (a cut inside a piece, a piece longer than the window). So the result never
  // depends on where the cuts fall.
  std::vector<int32_t> encode_parallel(std::string_view text, size_t chunk_bytes = 0) const;

  // Text of `ids`. Unknown ids are skipped (as HF does); bytes that do not form valid UTF-8
  // become U+FFFD (maximal subparts, like Rust's String::from_utf8_lossy).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t token_to_id(std::string_view tok) const;  // -1 if absent (added tokens first)
  std::string id_to_token(int32_t id) const;        // "" if absent
  // One past the largest id of the vocabulary and the added tokens (= HF len(tokenizer) when
  // ids are dense).
  size_t vocab_size() const;
  bool has_token(std::string_view tok) const;
  bool is_special(int32_t id) const;  // an added token with "special": true
  bool empty() const { return !impl_; }
  const std::string& origin() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  const Impl& impl() const;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace llmc
