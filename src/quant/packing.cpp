// quant/packing.cpp — see packing.h.
#include "quant/packing.h"

#include <cstring>

#include "core/error.h"

namespace llmc {

namespace {

void check_bits(int bits, PackScheme scheme) {
  if (bits < 1 || bits > 8) fail("cannot pack ", bits, "-bit codes (1..8 bits supported)");
  if (scheme == PackScheme::Awq && bits != 4) fail("the AWQ packing holds 4-bit codes, not ", bits);
}

// Word index and bit offset of code k.
inline void locate(int64_t k, int bits, PackScheme scheme, int64_t* w, int* off) {
  switch (scheme) {
    case PackScheme::Stream: {
      const int64_t bit = k * bits;
      *w = bit >> 5;
      *off = int(bit & 31);
      return;
    }
    case PackScheme::Fixed: {
      const int per = 32 / bits;
      *w = k / per;
      *off = int(k % per) * bits;
      return;
    }
    case PackScheme::Awq:
      *w = k >> 3;
      *off = kAwqSlot[k & 7] * 4;
      return;
  }
}

}  // namespace

int64_t packed_words(int64_t n, int bits, PackScheme scheme) {
  check_bits(bits, scheme);
  // Far beyond any tensor (2^48 codes), and n · bits cannot overflow.
  if (n < 0 || n > (int64_t(1) << 48)) fail("packed tensor: ", n, " codes per row is out of range");
  switch (scheme) {
    case PackScheme::Stream: return (n * bits + 31) / 32;
    case PackScheme::Fixed: {
      const int per = 32 / bits;
      return (n + per - 1) / per;
    }
    case PackScheme::Awq: return (n + 7) / 8;
  }
  return 0;
}

void pack_codes(const int32_t* codes, int64_t stride, int64_t n, int bits, PackScheme scheme,
                uint32_t* words, int64_t wstride) {
  const int64_t nw = packed_words(n, bits, scheme);
  for (int64_t j = 0; j < nw; ++j) words[j * wstride] = 0;
  const int32_t maxv = (1 << bits) - 1;
  for (int64_t k = 0; k < n; ++k) {
    const int32_t c = codes[k * stride];
    if (c < 0 || c > maxv) fail("code ", c, " does not fit in ", bits, " bits (index ", k, ")");
    int64_t w = 0;
    int off = 0;
    locate(k, bits, scheme, &w, &off);
    const uint64_t v = uint64_t(uint32_t(c)) << off;
    words[w * wstride] |= uint32_t(v);
    if (v >> 32) words[(w + 1) * wstride] |= uint32_t(v >> 32);
  }
}

namespace {

// Fast paths for contiguous words and codes; false when the general loop must run.
bool unpack_contiguous(const uint32_t* words, int64_t n, int bits, PackScheme scheme,
                       int32_t* codes) {
  const uint32_t mask = (1u << bits) - 1u;
  if (scheme == PackScheme::Fixed || (scheme == PackScheme::Stream && 32 % bits == 0)) {
    const int per = 32 / bits;
    int64_t k = 0;
    for (int64_t w = 0; k < n; ++w) {
      const uint32_t v = words[w];
      if (n - k >= per) {
        for (int j = 0; j < per; ++j) codes[k + j] = int32_t((v >> (j * bits)) & mask);
        k += per;
      } else {
        for (int j = 0; k < n; ++j, ++k) codes[k] = int32_t((v >> (j * bits)) & mask);
      }
    }
    return true;
  }
  if (scheme == PackScheme::Awq) {
    const int64_t full = n / 8;
    for (int64_t w = 0; w < full; ++w) {
      const uint32_t v = words[w];
      int32_t* c = codes + w * 8;
      for (int j = 0; j < 8; ++j) c[kAwqOrder[j]] = int32_t((v >> (4 * j)) & 15u);
    }
    for (int64_t k = full * 8; k < n; ++k)
      codes[k] = int32_t((words[full] >> (4 * kAwqSlot[k & 7])) & 15u);
    return true;
  }
  if (scheme == PackScheme::Stream && bits == 3) {  // 32 codes per 3 words
    const int64_t blocks = n / 32;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint32_t* w = words + b * 3;
      const unsigned __int128 v = (unsigned __int128)w[0] | ((unsigned __int128)w[1] << 32) |
                                  ((unsigned __int128)w[2] << 64);
      int32_t* c = codes + b * 32;
      for (int j = 0; j < 32; ++j) c[j] = int32_t(uint32_t(v >> (3 * j)) & 7u);
    }
    return blocks * 32 == n;  // a partial tail takes the general loop
  }
  return false;
}

}  // namespace

void unpack_codes(const uint32_t* words, int64_t wstride, int64_t n, int bits, PackScheme scheme,
                  int32_t* codes, int64_t stride) {
  const int64_t nw = packed_words(n, bits, scheme);
  if (wstride == 1 && stride == 1 && unpack_contiguous(words, n, bits, scheme, codes)) return;
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t k = 0; k < n; ++k) {
    int64_t w = 0;
    int off = 0;
    locate(k, bits, scheme, &w, &off);
    uint64_t v = words[w * wstride];
    if (off + bits > 32 && w + 1 < nw) v |= uint64_t(words[(w + 1) * wstride]) << 32;
    codes[k * stride] = int32_t((v >> off) & mask);
  }
}

}  // namespace llmc
