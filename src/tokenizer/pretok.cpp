#include "tokenizer/pretok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace llmc::tok {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

// Oniguruma's Unicode \s: U+0009..U+000D, U+0085, Zl, Zp, Zs (= White_Space).
constexpr const char* kSpaceItems = R"(\x{9}-\x{d}\x{85}\p{Z})";
constexpr const char* kWordItems = R"(\p{L}\p{M}\p{N}\p{Pc})";
constexpr const char* kHexItems = "0-9a-fA-F";

// Per-thread PCRE2 match state (match data with one pair, JIT stack).
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    if (!md || !mc || !js) fail("PCRE2: out of memory");
    pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchState() {
    pcre2_jit_stack_free(js);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
};
MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

}  // namespace

std::string Regex::translate_onig(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 32);
  int depth = 0;  // character-class nesting
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      const bool in = depth > 0;
      auto cls = [&](const char* items, bool neg) {
        if (in) out += items;
        else out += std::string(neg ? "[^" : "[") + items + "]";
      };
      switch (e) {
        case 's': cls(kSpaceItems, false); break;
        case 'S': if (in) out += "\\S"; else cls(kSpaceItems, true); break;
        case 'w': cls(kWordItems, false); break;
        case 'W': if (in) out += "\\W"; else cls(kWordItems, true); break;
        case 'h': cls(kHexItems, false); break;
        case 'H': if (in) out += "\\H"; else cls(kHexItems, true); break;
        default: out += '\\'; out += e; break;
      }
      continue;
    }
    if (c == '[') {
      out += c;
      ++depth;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && depth > 0) --depth;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, bool literal, const std::string& origin)
    : pattern_(pattern) {
  const std::string src = literal ? pattern : translate_onig(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  const uint32_t opts = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(src.data()), src.size(), opts,
                                   &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(origin, ": cannot compile regex '", pattern, "': ", reinterpret_cast<char*>(msg),
         " (at offset ", off, ")");
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

Regex::Result Regex::find_in(std::string_view s, size_t pos, size_t window_end, size_t* begin,
                             size_t* end) const {
  MatchState& ms = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(s.data());
  const bool windowed = window_end < s.size();
  // Windowed: the subject ends at window_end and PCRE2_PARTIAL_HARD reports any attempt that
  // reached that end, so a complete match is one that never looked past the window.
  const size_t len = windowed ? window_end : s.size();
  const uint32_t opts = PCRE2_NO_UTF_CHECK | (windowed ? PCRE2_PARTIAL_HARD : 0);
  const int rc = jit_ ? pcre2_jit_match(code, subj, len, pos, opts, ms.md, ms.mc)
                      : pcre2_match(code, subj, len, pos, opts, ms.md, ms.mc);
  if (rc == PCRE2_ERROR_NOMATCH || rc == PCRE2_ERROR_PARTIAL) return windowed ? kUndecided : kNone;
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    fail("regex '", pattern_, "' failed on a ", s.size(), "-byte text: ",
         reinterpret_cast<char*>(msg));
  }
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ms.md);
  *begin = ov[0];
  *end = ov[1];
  return kMatch;
}

}  // namespace llmc::tok
