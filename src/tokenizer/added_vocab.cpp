#include "tokenizer/added_vocab.h"

#include <algorithm>
#include <cstring>

#include "tokenizer/unicode.h"

namespace llmc::tok {

AddedMatcher::AddedMatcher(std::vector<AddedToken> tokens, std::vector<std::string> patterns)
    : tokens_(std::move(tokens)) {
  by_first_.resize(256);
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (patterns[i].empty()) continue;
    const unsigned char f = static_cast<unsigned char>(patterns[i][0]);
    by_first_[f].push_back(uint32_t(pats_.size()));
    pats_.push_back(Pat{std::move(patterns[i]), i});
    first_[f] = true;
  }
  int nfirst = 0;
  for (int b = 0; b < 256; ++b) {
    auto& v = by_first_[size_t(b)];
    // Longest first; among equal lengths the earlier token (aho-corasick pattern order).
    std::stable_sort(v.begin(), v.end(), [&](uint32_t a, uint32_t c) {
      return pats_[a].text.size() > pats_[c].text.size();
    });
    if (first_[b]) {
      ++nfirst;
      single_first_ = b;
    }
  }
  if (nfirst != 1) single_first_ = -1;
}

void AddedMatcher::split(std::string_view s, std::vector<Segment>& out) const {
  const size_t n = s.size();
  if (n == 0) return;
  size_t start_offset = 0;  // end of the previous split
  size_t i = 0;             // scan position (aho-corasick resumes at the raw match end)
  auto ends_with_word = [&](size_t pos) {
    if (pos == 0) return false;
    size_t len;
    return is_word_char(utf8_decode(s, utf8_prev(s, pos), &len));
  };
  auto starts_with_word = [&](size_t pos) {
    if (pos >= n) return false;
    size_t len;
    return is_word_char(utf8_decode(s, pos, &len));
  };
  while (i < n) {
    // Leftmost position with a match, longest pattern there.
    const Pat* hit = nullptr;
    size_t at = i;
    for (; at < n; ++at) {
      if (single_first_ >= 0) {
        const void* p = std::memchr(s.data() + at, single_first_, n - at);
        if (!p) {
          at = n;
          break;
        }
        at = size_t(static_cast<const char*>(p) - s.data());
      } else if (!first_[static_cast<unsigned char>(s[at])]) {
        continue;
      }
      for (uint32_t pi : by_first_[static_cast<unsigned char>(s[at])]) {
        const Pat& p = pats_[pi];
        if (p.text.size() <= n - at && std::memcmp(s.data() + at, p.text.data(), p.text.size()) == 0) {
          hit = &p;
          break;
        }
      }
      if (hit) break;
    }
    if (!hit) break;
    size_t start = at, stop = at + hit->text.size();
    i = stop;
    const AddedToken& tok = tokens_[hit->token];
    if (tok.single_word && (ends_with_word(start) || starts_with_word(stop))) continue;
    if (tok.lstrip) {
      size_t ns = start;
      while (ns > start_offset) {
        const size_t prev = utf8_prev(s, ns);
        size_t len;
        if (!is_white_space(utf8_decode(s, prev, &len))) break;
        ns = prev;
      }
      start = ns;
    }
    if (tok.rstrip) {
      while (stop < n) {
        size_t len;
        if (!is_white_space(utf8_decode(s, stop, &len))) break;
        stop += len;
      }
      i = stop;
    }
    if (start_offset < start) out.push_back(Segment{-1, start_offset, start});
    out.push_back(Segment{tok.id, start, stop});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back(Segment{-1, start_offset, n});
}

}  // namespace llmc::tok
