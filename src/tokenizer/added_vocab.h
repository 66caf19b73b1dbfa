// tokenizer/added_vocab.h — matching added tokens in text (internal).
//
// Contract (HF AddedVocabulary::find_matches): matches are found left to right, non-
// overlapping, leftmost-longest. A single_word token only counts when the characters around it
// are not word characters (Rust regex \w); the scan then resumes after it anyway. lstrip widens
// the match over the white space before it (not before the previous match's end), rstrip over
// the white space after it. The text between matches comes back as plain segments.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmc::tok {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

struct Segment {
  int32_t id;  // added-token id, or -1 for plain text
  size_t begin, end;
};

class AddedMatcher {
 public:
  AddedMatcher() = default;
  // `patterns[i]` is the text matched for `tokens[i]` (its content, normalized when the token
  // is). Empty patterns are ignored.
  AddedMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns);
  bool empty() const { return pats_.empty(); }
  // Appends the segments of `text` (covering it; empty text gives none) to `out`.
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Pat {
    std::string text;
    size_t token;  // index into tokens_
  };
  std::vector<AddedToken> tokens_;
  std::vector<Pat> pats_;
  std::vector<std::vector<uint32_t>> by_first_;  // first byte -> pattern indices, longest first
  bool first_[256] = {};
  int single_first_ = -1;  // the only first byte, when all patterns share one
};

}  // namespace llmc::tok
