#include "tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <cstring>

#include "core/error.h"

namespace llmc::tok {

namespace {

// Length of the valid UTF-8 sequence at p (n bytes available), or 0 when it is not valid;
// in that case *bad is set to the length of the maximal subpart to replace (>= 1).
inline size_t seq_len(const unsigned char* p, size_t n, size_t* bad) {
  const unsigned c = p[0];
  size_t len;
  unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    if (k >= n) {
      *bad = k;
      return 0;
    }
    const unsigned b = p[k];
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *bad = k;
      return 0;
    }
  }
  return len;
}

const icu::Normalizer2& nfc() {
  static const icu::Normalizer2* n = [] {
    UErrorCode e = U_ZERO_ERROR;
    const icu::Normalizer2* p = icu::Normalizer2::getNFCInstance(e);
    if (U_FAILURE(e) || !p) fail("ICU: cannot load NFC normalization data: ", u_errorName(e));
    return p;
  }();
  return *n;
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
    const size_t len = seq_len(p + i, n - i, &bad);
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
    const size_t len = seq_len(p + i, n - i, &bad);
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
  // Code points below U+0300 are NFC-inert starters: pure ASCII/Latin text needs no ICU call.
  bool simple = true;
  for (unsigned char c : s) {
    if (c >= 0xCC) {
      simple = false;
      break;
    }
  }
  if (simple) return true;
  UErrorCode e = U_ZERO_ERROR;
  const bool r = nfc().isNormalizedUTF8(icu::StringPiece(s.data(), int32_t(s.size())), e);
  if (U_FAILURE(e)) fail("ICU NFC check failed: ", u_errorName(e));
  return r;
}

void nfc_append(std::string_view s, std::string& out) {
  UErrorCode e = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(&out);
  nfc().normalizeUTF8(0, icu::StringPiece(s.data(), int32_t(s.size())), sink, nullptr, e);
  if (U_FAILURE(e)) fail("ICU NFC normalization failed: ", u_errorName(e));
}

bool is_white_space(uint32_t cp) { return u_isUWhiteSpace(UChar32(cp)); }

bool is_word_char(uint32_t cp) {
  const UChar32 c = UChar32(cp);
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL))
    return true;
  const uint32_t mask = U_GET_GC_MASK(c);
  return (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

const std::array<uint32_t, 256>& byte_to_unicode() { return byte_tables().to_cp; }

int unicode_to_byte(uint32_t cp) {
  const auto& t = byte_tables();
  return cp < t.from_cp.size() ? t.from_cp[cp] : -1;
}

}  // namespace llmc::tok
