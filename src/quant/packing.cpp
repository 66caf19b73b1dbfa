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
    int64_t w;
    int off;
    locate(k, bits, scheme, &w, &off);
    const uint64_t v = uint64_t(uint32_t(c)) << off;
    words[w * wstride] |= uint32_t(v);
    if (v >> 32) words[(w + 1) * wstride] |= uint32_t(v >> 32);
  }
}

void unpack_codes(const uint32_t* words, int64_t wstride, int64_t n, int bits, PackScheme scheme,
                  int32_t* codes, int64_t stride) {
  const int64_t nw = packed_words(n, bits, scheme);
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t k = 0; k < n; ++k) {
    int64_t w;
    int off;
    locate(k, bits, scheme, &w, &off);
    uint64_t v = words[w * wstride];
    if (off + bits > 32 && w + 1 < nw) v |= uint64_t(words[(w + 1) * wstride]) << 32;
    codes[k * stride] = int32_t((v >> off) & mask);
  }
}

}  // namespace llmc
