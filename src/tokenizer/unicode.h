// tokenizer/unicode.h — UTF-8 and Unicode helpers of the tokenizer (internal).
//
// Contracts:
//  * utf8_valid(s): s is well-formed UTF-8 (no surrogates, no overlongs, <= U+10FFFF).
//  * utf8_lossy_append(s, out): appends s with every maximal invalid subsequence replaced by
//    U+FFFD ("substitution of maximal subparts", as Rust's from_utf8_lossy and Python's
//    decode(errors="replace") do). Valid input is appended unchanged.
//  * nfc_*: Unicode Normalization Form C through utf8proc; the input must be valid UTF-8.
//  * is_white_space / is_word_char: Unicode properties from utf8proc's general categories.
//  * byte-level alphabet (GPT-2 bytes_to_unicode): bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF map
//    to the same code point, the other 68 bytes to U+0100.. in increasing byte order.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace llmc::tok {

bool utf8_valid(std::string_view s);
void utf8_lossy_append(std::string_view s, std::string& out);

// Decodes the code point at s[i] (valid UTF-8 required); sets *len to its byte length.
inline uint32_t utf8_decode(std::string_view s, size_t i, size_t* len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (p[0] < 0x80) { *len = 1; return p[0]; }
  if (p[0] < 0xE0) { *len = 2; return (uint32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F); }
  if (p[0] < 0xF0) {
    *len = 3;
    return (uint32_t(p[0] & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  *len = 4;
  return (uint32_t(p[0] & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) |
         (uint32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}
// Start of the code point that ends just before s[i] (i > 0, valid UTF-8).
inline size_t utf8_prev(std::string_view s, size_t i) {
  do { --i; } while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80);
  return i;
}
void utf8_append(uint32_t cp, std::string& out);

bool nfc_is_normalized(std::string_view s);
void nfc_append(std::string_view s, std::string& out);

// Unicode White_Space (Rust char::is_whitespace, regex \s).
bool is_white_space(uint32_t cp);
// Rust regex \w: Alphabetic, M, Nd, Pc or Join_Control.
bool is_word_char(uint32_t cp);

const std::array<uint32_t, 256>& byte_to_unicode();
// Byte whose byte-level character is `cp`, or -1.
int unicode_to_byte(uint32_t cp);

}  // namespace llmc::tok
