#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/utf8.h"

namespace llmc::tok {

namespace {

// NFC of valid UTF-8 `s` through utf8proc (STABLE | COMPOSE = NFC), appended to out.
void nfc_segment(std::string_view s, std::string& out) {
  if (s.empty()) return;
  utf8proc_uint8_t* r = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()),
                   &r, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) fail("NFC normalization failed: ", utf8proc_errmsg(n));
  out.append(reinterpret_cast<const char*>(r), size_t(n));
  std::free(r);
}

struct ByteTables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};  // byte-level code points are < 0x144
  ByteTables() {
    from_cp.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_cp[b] = printable ? uint32_t(b) : next++;
      from_cp[to_cp[b]] = int16_t(b);
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

bool utf8_valid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t bad;
    const size_t len = utf8_seq_len(p + i, n - i, &bad);
    if (!len) return false;
    i += len;
  }
  return true;
}

void utf8_lossy_append(std::string_view s, std::string& out) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0, run = 0;  // [run, i): valid bytes not yet copied
  while (i < n) {
    size_t bad = 0;
    const size_t len = utf8_seq_len(p + i, n - i, &bad);
    if (len) {
      i += len;
      continue;
    }
    out.append(s.data() + run, i - run);
    out.append("\xEF\xBF\xBD");
    i += bad;
    run = i;
  }
  out.append(s.data() + run, n - run);
}

void utf8_append(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

bool nfc_is_normalized(std::string_view s) {
  // Code points below U+0300 are NFC-inert starters: pure ASCII/Latin text needs no utf8proc call.
  bool simple = true;
  for (unsigned char c : s) {
    if (c >= 0xCC) {
      simple = false;
      break;
    }
  }
  if (simple) return true;
  std::string n;
  nfc_append(s, n);
  return n == s;
}

void nfc_append(std::string_view s, std::string& out) {
  // utf8proc 2.8 composes an LV syllable with a following U+11A7 (which is not a trailing
  // consonant, TBase itself) and drops the U+11A7. U+11A7 is a starter that composes with
  // nothing, so normalizing the pieces between them separately is exact.
  static constexpr std::string_view kU11A7 = "\xE1\x86\xA7";
  size_t start = 0;
  for (size_t p; (p = s.find(kU11A7, start)) != std::string_view::npos; start = p + kU11A7.size()) {
    nfc_segment(s.substr(start, p - start), out);
    out += kU11A7;
  }
  nfc_segment(s.substr(start), out);
}

// Unicode White_Space (PropList.txt; unchanged since Unicode 6.3).
bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Alphabetic = L* + Nl + Other_Alphabetic; Other_Alphabetic is marks (M, counted anyway) except
// the circled / squared Latin letters (So) listed here. Checked against ICU's Alphabetic for every
// code point of Unicode 15 when the tokenizer moved from ICU to utf8proc.
bool is_word_char(uint32_t cp) {
  if (cp == 0x200C || cp == 0x200D) return true;  // Join_Control
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      break;
  }
  return (cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
         (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189);
}

const std::array<uint32_t, 256>& byte_to_unicode() { return byte_tables().to_cp; }

int unicode_to_byte(uint32_t cp) {
  const auto& t = byte_tables();
  return cp < t.from_cp.size() ? t.from_cp[cp] : -1;
}

}  // namespace llmc::tok
