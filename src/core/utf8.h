// UTF-8 sequence decoding shared by the text-input check (core/fs.h first_invalid_utf8) and the
// tokenizer (tokenizer/unicode.h): one definition of "valid UTF-8" (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF).
#pragma once

#include <cstddef>

namespace llmc {

// Length (1..4) of the valid UTF-8 sequence at p (n >= 1 bytes available), or 0 when it is not
// valid; then *bad is the length of the maximal subpart to replace with U+FFFD (>= 1).
inline size_t utf8_seq_len(const unsigned char* p, size_t n, size_t* bad) {
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

}  // namespace llmc
