// tokenizer/pretok.h — regex splitting and the pre-tokenizer chain (internal).
//
// Contracts:
//  * Regex compiles an Oniguruma-syntax pattern (what HF tokenizers uses) with PCRE2 (UTF, UCP,
//    JIT when available), rewriting the escapes whose meaning differs: \s/\S become Unicode
//    White_Space (PCRE2 also counts U+180E), \w/\W become L|M|N|Pc, \h/\H hex digits; ^/$ are
//    line anchors as in Ruby syntax. Subjects must be valid UTF-8.
//  * Piece iteration (PreTokenizer::run_first) has a state that is a byte position only: at
//    position p the next piece is the gap before the leftmost match starting at >= p, or that
//    match; an empty match at p is skipped and the search restarts one character later (the
//    iteration of HF's find_iter over Oniguruma). Matches see the whole subject, so iterating
//    from any position the serial pass reaches gives the serial pass's pieces.
//  * The chain is zero or more Split steps (Isolated keeps gaps and matches as pieces; Removed
//    drops matches) followed by one ByteLevel step (optional " " prefix, optional GPT-2 regex
//    split); each step splits every piece of the previous one; empty pieces vanish.
#pragma once
#include <cstddef>
#include <cstdint>
#include <climits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace llmc::tok {

class Regex {
 public:
  // `literal`: match `pattern` as a plain string (Split with {"String": ...}).
  Regex(const std::string& pattern, bool literal, const std::string& origin);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  enum Result { kMatch, kNone, kUndecided };
  // Leftmost match starting at >= pos in `subject`; false when there is none.
  bool find(std::string_view subject, size_t pos, size_t* begin, size_t* end) const {
    return find_in(subject, pos, subject.size(), begin, end) == kMatch;
  }
  // Same, looking only at subject[0, window_end) (a character boundary): kMatch is the match
  // find() gives, found without reading at or past window_end; kUndecided when that is not
  // certain (a match attempt reached the window end, or there is no match in the window).
  Result find_in(std::string_view subject, size_t pos, size_t window_end, size_t* begin,
                 size_t* end) const;
  const std::string& pattern() const { return pattern_; }
  // The PCRE2 pattern the Oniguruma pattern was rewritten to.
  static std::string translate_onig(const std::string& pattern);

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code*
  bool jit_ = false;
};

// GPT-2 / ByteLevel(use_regex) pattern.
extern const char* const kGpt2Pattern;

struct PreTokStep {
  enum Kind { kSplit, kByteLevel } kind = kSplit;
  std::shared_ptr<const Regex> re;  // Split pattern, or GPT-2 regex when use_regex
  bool remove_matches = false;      // Split behavior Removed (else Isolated)
  bool add_prefix_space = false;    // ByteLevel
};

class PreTokenizer {
 public:
  PreTokenizer() = default;
  explicit PreTokenizer(std::vector<PreTokStep> steps) : steps_(std::move(steps)) {}

  // Does the first step prepend " " to each segment (applied by the caller on whole segments)?
  bool first_step_prefixes() const {
    return !steps_.empty() && steps_[0].kind == PreTokStep::kByteLevel &&
           steps_[0].add_prefix_space;
  }
  // Does the first step split a segment into several pieces (so chunks can start mid-segment)?
  bool first_step_splits() const { return !steps_.empty() && steps_[0].re != nullptr; }

  // Iterates the first-step pieces of `segment` from state `pos` (the segment is already
  // prefixed when first_step_prefixes()). For each piece: on_state(piece_begin) -> bool (false:
  // stop before this piece and return its begin), then on_word(word) for every final word of
  // the chain. Stops after the piece whose end reaches `stop_at` (or the segment end) and
  // returns the final state.
  // `window_end`: the first-step regex may only look at segment[0, window_end); where that
  // does not decide the next piece, the iteration stops before it (returns its start).
  template <class OnState, class OnWord>
  size_t run_first(std::string_view segment, size_t pos, size_t stop_at, OnState&& on_state,
                   OnWord&& on_word, size_t window_end = SIZE_MAX) const;

 private:
  template <class OnWord>
  void run_step(size_t k, std::string_view piece, OnWord& on_word) const;
  template <class OnWord>
  void run_split(size_t k, std::string_view piece, OnWord& on_word) const;
  // Calls f(begin, end, is_match) -> bool for each piece from state pos; a false return stops
  // before that piece (its begin is returned).
  template <class OnPiece>
  static size_t iterate(const Regex& re, std::string_view s, size_t pos, size_t stop_at,
                        OnPiece&& f, size_t window_end = SIZE_MAX);

  std::vector<PreTokStep> steps_;
};

// ---- template implementations ----

template <class OnPiece>
size_t PreTokenizer::iterate(const Regex& re, std::string_view s, size_t pos, size_t stop_at,
                             OnPiece&& f, size_t window_end) {
  const size_t n = s.size();
  if (window_end > n) window_end = n;
  size_t mb = 0, me = 0;
  bool have = false;  // [mb, me) is the leftmost match starting at or after pos
  auto search = [&](size_t from) {
    const Regex::Result r = re.find_in(s, from, window_end, &mb, &me);
    if (r == Regex::kNone) mb = me = n + 1;  // no match: the rest is one gap
    return r != Regex::kUndecided;
  };
  while (pos < n && pos < stop_at) {
    if (!have) {
      if (!search(pos)) return pos;
      have = true;
    }
    if (mb == pos && me == pos) {  // empty match here: search again one character later
      size_t next = pos + 1;
      while (next < n && (static_cast<unsigned char>(s[next]) & 0xC0) == 0x80) ++next;
      if (!search(next)) return pos;
    }
    if (mb > pos) {  // gap before the next match
      const size_t e = mb > n ? n : mb;
      if (!f(pos, e, false)) return pos;
      pos = e;
      continue;
    }
    if (!f(mb, me, true)) return pos;
    pos = me;
    have = false;
  }
  return pos;
}

template <class OnWord>
void PreTokenizer::run_step(size_t k, std::string_view piece, OnWord& on_word) const {
  if (piece.empty()) return;
  if (k == steps_.size()) {
    on_word(piece);
    return;
  }
  const PreTokStep& st = steps_[k];
  if (st.kind == PreTokStep::kByteLevel && st.add_prefix_space && piece[0] != ' ') {
    std::string tmp;
    tmp.reserve(piece.size() + 1);
    tmp += ' ';
    tmp.append(piece);
    run_split(k, tmp, on_word);
    return;
  }
  run_split(k, piece, on_word);
}

template <class OnWord>
void PreTokenizer::run_split(size_t k, std::string_view piece, OnWord& on_word) const {
  const PreTokStep& st = steps_[k];
  if (!st.re) {
    run_step(k + 1, piece, on_word);
    return;
  }
  const bool removed = st.remove_matches;
  iterate(*st.re, piece, 0, piece.size(), [&](size_t b, size_t e, bool is_match) {
    if (!(removed && is_match)) run_step(k + 1, piece.substr(b, e - b), on_word);
    return true;
  });
}

template <class OnState, class OnWord>
size_t PreTokenizer::run_first(std::string_view segment, size_t pos, size_t stop_at,
                               OnState&& on_state, OnWord&& on_word, size_t window_end) const {
  if (steps_.empty() || !steps_[0].re) {  // the whole segment is one first-step piece
    if (pos == 0 && !segment.empty()) {
      if (!on_state(size_t(0))) return 0;
      if (steps_.empty()) on_word(segment);
      else run_step(1, segment, on_word);
    }
    return segment.size();
  }
  const bool removed = steps_[0].remove_matches;
  return iterate(
      *steps_[0].re, segment, pos, stop_at,
      [&](size_t b, size_t e, bool is_match) {
        if (!on_state(b)) return false;
        if (!(removed && is_match)) run_step(1, segment.substr(b, e - b), on_word);
        return true;
      },
      window_end);
}

}  // namespace llmc::tok
